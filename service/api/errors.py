"""JSON errors of Sibyl's own: database outages as 503, and Eve-shaped 422s from hooks."""

from typing import NoReturn

from eve.endpoints import error_endpoint
from flask import Flask, Response, abort, current_app, json, request
from pymongo.errors import ConnectionFailure
from werkzeug.exceptions import NotFound, ServiceUnavailable

RETRY_AFTER_SECONDS = 5


def register(app: Flask) -> None:
    """Wire the error handlers into the app."""
    app.register_error_handler(ConnectionFailure, database_unavailable)
    app.register_error_handler(404, not_found)


def not_found(error: NotFound):
    """A 404 that says what was not found: the item of a resource, or the route."""
    resource, _, kind = (request.endpoint or "").partition("|")
    if kind == "item_lookup":
        title = current_app.config["DOMAIN"][resource]["item_title"]
        item_id = next(iter((request.view_args or {}).values()), "")
        description = f"no {title} with id {item_id}"
    elif request.url_rule is None:
        description = f"no such route: {request.method} {request.path}"
    else:
        description = error.description
    return error_endpoint(NotFound(description=description))


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
