"""Domain errors: what went wrong, said so a client can act on it, with the status it gets.

Raised anywhere below the HTTP layer; each family of routes renders them once in
its own shape (service/api/errors.py renders Eve's).
"""

import re


def echoed(value: str, limit: int = 60) -> str:
    """A client's value quoted in an error message, cut short: enough to recognise it,
    not a way to make the service repeat kilobytes of whatever a caller sends."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def naming(field: str, message: str) -> str:
    """A message about a field that names it: `priority: max value is 9` (as it is when
    it starts with the field already, as `inputs[3]: ...` or `tags may ...` do)."""
    if not field or re.match(rf"{re.escape(field)}(?!\w)", message):
        return message
    return f"{field}: {message}"


def issue_text(issue) -> str:
    """Cerberus' errors of one field (strings, lists, dicts of sub-fields) as one line."""
    if isinstance(issue, list):
        return "; ".join(issue_text(item) for item in issue)
    if isinstance(issue, dict):
        return "; ".join(f"{key}: {issue_text(value)}" for key, value in issue.items())
    return str(issue)


class SibylError(Exception):
    """An error a client caused or must know about; status is its HTTP status."""

    status = 400
    # HTTP headers the answer carries (Retry-After, say).
    headers: dict[str, str] = {}

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class Unprocessable(SibylError):
    """Well-formed, but not something Sibyl can do: a 422."""

    status = 422


class InvalidField(Unprocessable):
    """One field of a submitted document is wrong: a 422 naming it."""

    field = ""


class UnknownModel(InvalidField, LookupError):
    """No ready model matches the reference a job gave."""

    field = "model"


class InputError(InvalidField, ValueError):
    """A job's inputs do not fit the model; the message names the instance."""

    field = "inputs"


class Rejected(SibylError):
    """Some documents of a request are wrong: nothing of it was stored.

    issues: (position in the submission, field, message), in order.
    """

    status = 422

    def __init__(self, issues: list[tuple[int, str, str]]):
        _, field, message = issues[0]
        super().__init__(naming(field, message))
        self.issues = issues


class Conflict(SibylError):
    """The request is valid but the resource's state forbids it now (a job still
    running, a model still needed)."""

    status = 409


class TooManyActive(SibylError):
    """A client's queued and running jobs or instances would exceed its quota: a 429.

    unit: "jobs" or "instances"; setting: the variable that sets the limit.
    """

    status = 429
    # Jobs take seconds: a client told to retry then usually finds room.
    headers = {"Retry-After": "5"}

    def __init__(self, unit: str, in_flight: int, limit: int, setting: str, adding: int = 0):
        request = f" and this request adds {adding}" if adding else ""
        advice = (
            f"send fewer {unit} per request" if adding > limit else "retry once some have finished"
        )
        super().__init__(
            f"{in_flight} {unit} of yours are queued or running{request}: at most {limit} "
            f"may be at once ({setting}); {advice}"
        )
        self.unit = unit
        self.in_flight = in_flight
        self.limit = limit
        self.adding = adding


class MaybeStored(SibylError):
    """The database dropped while jobs were being written: they may be stored or not.

    A 503 that says so and names them (`_jobs`), so that a client looks them up before
    sending them again instead of running them twice. Those that were stored run."""

    status = 503
    headers = {"Retry-After": "5"}

    def __init__(self, ids: list, cause: BaseException):
        super().__init__(
            f"database unavailable ({type(cause).__name__}) while storing {len(ids)} job(s): "
            "they may have been stored, and then they will run; look them up "
            "(GET /v1/jobs/<id>, ids in `_jobs`) before sending them again"
        )
        self.ids = ids
