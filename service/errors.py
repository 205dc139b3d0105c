"""JSON errors of Sibyl's own: database outages as 503, and Eve-shaped 422s from hooks."""

from typing import NoReturn

from eve.endpoints import error_endpoint
from flask import Flask, Response, abort, json
from pymongo.errors import ConnectionFailure
from werkzeug.exceptions import ServiceUnavailable

RETRY_AFTER_SECONDS = 5


def register(app: Flask) -> None:
    """Wire the error handlers into the app."""
    app.register_error_handler(ConnectionFailure, database_unavailable)


def database_unavailable(error: ConnectionFailure):
    """Answer 503 with a Retry-After when MongoDB cannot be reached."""
    app_error = ServiceUnavailable(
        description=f"database unavailable: {type(error).__name__}; retry later"
    )
    response = error_endpoint(app_error)
    response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


def unprocessable(issues: list[tuple[int, str, str]], bulk: bool) -> NoReturn:
    """Abort with a 422 in Eve's shape: `_issues` per field, `_items` for a bulk POST.

    issues are (position in the request, field, message).
    """
    first_message = issues[0][2]
    body: dict = {"_status": "ERR", "_error": {"code": 422, "message": first_message}}
    if bulk:
        count = max(position for position, _, _ in issues) + 1
        items: list[dict] = [{"_status": "OK"} for _ in range(count)]
        for position, field, message in issues:
            items[position] = {"_status": "ERR", "_issues": {field: message}}
        body["_items"] = items
        body["_error"]["message"] = f"job {issues[0][0]}: {first_message}"
    else:
        body["_issues"] = {field: message for _, field, message in issues}
    abort(Response(json.dumps(body), 422, mimetype="application/json"))
