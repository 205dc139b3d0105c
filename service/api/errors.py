"""JSON errors in Eve's shape: domain errors (service/errors.py), database outages as 503,
404s that say what was not found."""

import functools
from collections.abc import Callable

from eve.endpoints import error_endpoint
from flask import Flask, Response, abort, current_app, json, request
from pymongo.errors import ConnectionFailure, OperationFailure
from werkzeug.exceptions import BadRequest, NotFound, RequestEntityTooLarge, ServiceUnavailable

from service.errors import InvalidField, MaybeStored, Rejected, SibylError, issue_text, naming
from service.metrics import DATABASE_ERRORS

RETRY_AFTER_SECONDS = 5
# How Eve's POST starts the message of a 422 (eve/methods/post.py), which names no field.
EVE_INSERTION_FAILURE = "Insertion failure"


def register(app: Flask) -> None:
    """Wire the error handlers into the app."""
    app.register_error_handler(ConnectionFailure, database_unavailable)
    app.register_error_handler(OperationFailure, query_refused)
    app.register_error_handler(SibylError, domain_error)
    app.register_error_handler(404, not_found)
    app.register_error_handler(RequestEntityTooLarge, too_large)
    # Run after versioning's (registered later), so that the field is named as sent.
    app.after_request(name_the_field)


def not_found(error: NotFound):
    """A 404 that says what was not found: the item of a resource, or the route."""
    resource, _, kind = (request.endpoint or "").partition("|")
    if kind == "item_lookup":
        title = current_app.config["DOMAIN"][resource]["item_title"]
        item_id = next(iter((request.view_args or {}).values()), "")
        description = f"no {title} with id {item_id}"
    elif request.url_rule is None and error.description == NotFound.description:
        description = f"no such route: {request.method} {request.path}"
    else:
        description = error.description
    return error_endpoint(NotFound(description=description))


def too_large(error: RequestEntityTooLarge):
    """A 413 that says the limit (Werkzeug's own message does not)."""
    limit = request.max_content_length
    if error.description == RequestEntityTooLarge.description and limit is not None:
        error = RequestEntityTooLarge(f"the body is larger than {limit} bytes")
    return error_endpoint(error)


def database_unavailable(error: ConnectionFailure):
    """Answer 503 with a Retry-After when MongoDB cannot be reached."""
    DATABASE_ERRORS.labels("api").inc()
    app_error = ServiceUnavailable(
        description=f"database unavailable: {type(error).__name__}; retry later"
    )
    response = error_endpoint(app_error)
    response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


# MongoDB's codes for a query it cannot run as written: BadValue, FailedToParse,
# TypeMismatch, IndexNotFound ($text without a text index), InvalidOptions,
# InvalidPipelineOperator (in $expr), NoQueryExecutionPlans ($near without a geo
# index), QueryExceededMemoryLimitNoDiskUseAllowed (a sort no index serves). Checks
# of $expr arguments answer codes named "Location<n>" (16020: "$gt takes exactly 2
# arguments").
QUERY_ERROR_CODES = {2, 9, 14, 27, 72, 168, 291, 292}


def query_refused(error: OperationFailure):
    """A read whose filter MongoDB refuses (`{"$in": 5}`) is the client's 400, saying why.

    Other database failures, and any of a write, stay server errors.
    """
    details = error.details or {}
    code_name = str(details.get("codeName", ""))
    client_error = error.code in QUERY_ERROR_CODES or code_name.startswith("Location")
    if request.method not in ("GET", "HEAD") or not client_error:
        raise error
    reason = details.get("errmsg") or str(error)
    return error_endpoint(BadRequest(description=f"the database refused the query: {reason}"))


def as_http_errors(hook: Callable) -> Callable:
    """An Eve hook whose domain errors reach the client as themselves.

    Eve turns any exception a hook raises into a 400, except HTTP exceptions:
    a domain error is rendered here and raised as one.
    """

    @functools.wraps(hook)
    def call(*args, **kwargs):
        try:
            return hook(*args, **kwargs)
        except SibylError as error:
            abort(domain_error(error))

    return call


def domain_error(error: SibylError) -> Response:
    """A domain error in Eve's error shape, with its status."""
    body: dict = {"_status": "ERR", "_error": {"code": error.status, "message": error.message}}
    if isinstance(error, InvalidField) and error.field:
        body["_error"]["message"] = naming(error.field, error.message)
        body["_issues"] = {error.field: error.message}
    if isinstance(error, Rejected):
        body.update(rejected_body(error.issues, request.get_json(silent=True)))
    if isinstance(error, MaybeStored):
        body["_jobs"] = [str(job_id) for job_id in error.ids]
    return Response(
        json.dumps(body), error.status, headers=error.headers, mimetype="application/json"
    )


def rejected_body(issues: list[tuple[int, str, str]], request_body) -> dict:
    """Eve's shape of a refused write: `_issues` per field, and `_items` for a bulk POST.

    issues are (position in the request, field, message). At most MAX_ERROR_ISSUES are
    listed, so that the answer stays small whatever the request; the message says how
    many more there were.
    """
    limit = max(1, current_app.config["MAX_ERROR_ISSUES"])
    listed, more = issues[:limit], len(issues) - limit
    note = f" (and {more} more: only the first {limit} issues are listed)" if more > 0 else ""
    if not isinstance(request_body, list):
        body: dict = {"_issues": {field: message for _, field, message in listed}}
        if note:
            body["_error"] = {"code": 422, "message": naming(*listed[0][1:]) + note}
        return body
    # As before Eve's own shape was taken over: items up to the last one at fault.
    items: list[dict] = [{"_status": "OK"} for _ in range(max(at for at, _, _ in listed) + 1)]
    for at, field, message in listed:
        items[at].setdefault("_issues", {})[field] = message
        items[at]["_status"] = "ERR"
    resource = (request.endpoint or "").partition("|")[0]
    title = current_app.config["DOMAIN"].get(resource, {}).get("item_title", "document")
    position, field, first_message = listed[0]
    message = f"{title} {position}: {naming(field, first_message)}{note}"
    return {"_items": items, "_error": {"code": 422, "message": message}}


def name_the_field(response: Response) -> Response:
    """Eve's own 422s (a POST or PATCH its validator refused) with a message that names
    the first field at fault, as Sibyl's own do: Eve says "Insertion failure: 1
    document(s) contain(s) error(s)" on POST, and nothing on PATCH."""
    if response.status_code != 422 or not response.is_json or response.direct_passthrough:
        return response
    body = response.get_json(silent=True)
    if not isinstance(body, dict):
        return response
    message = body.get("_error", {}).get("message")
    if message is not None and not message.startswith(EVE_INSERTION_FAILURE):
        return response  # Sibyl's own, which names it
    items = body.get("_items") or [body]
    position, issues = next(
        ((at, item["_issues"]) for at, item in enumerate(items) if item.get("_issues")),
        (0, None),
    )
    if not isinstance(issues, dict) or not issues:
        return response
    field, issue = next(iter(issues.items()))
    message = naming(field, issue_text(issue))
    if "_items" in body:
        resource = (request.endpoint or "").partition("|")[0]
        title = current_app.config["DOMAIN"].get(resource, {}).get("item_title", "document")
        message = f"{title} {position}: {message}"
    body["_error"] = {"code": 422, "message": message}
    response.set_data(json.dumps(body))
    return response
