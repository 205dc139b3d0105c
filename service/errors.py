"""JSON errors: database outages as 503, and request bodies checked before Eve parses them."""

from eve.endpoints import error_endpoint
from flask import Flask, Request, abort, current_app, request
from pymongo.errors import ConnectionFailure
from werkzeug.exceptions import BadRequest, ServiceUnavailable

RETRY_AFTER_SECONDS = 5


class SibylRequest(Request):
    """Flask's request, saying what is wrong with a malformed JSON body."""

    def on_json_loading_failed(self, e: ValueError | None):
        if e is None:
            return super().on_json_loading_failed(e)
        raise BadRequest(description=f"malformed JSON body: {e}")


def register(app: Flask) -> None:
    """Wire the error handlers and the request-body guard into the app."""
    app.request_class = SibylRequest
    app.register_error_handler(ConnectionFailure, database_unavailable)
    app.before_request(check_json_body)


def database_unavailable(error: ConnectionFailure):
    """Answer 503 with a Retry-After when MongoDB cannot be reached."""
    app_error = ServiceUnavailable(
        description=f"database unavailable: {type(error).__name__}; retry later"
    )
    response = error_endpoint(app_error)
    response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


def check_json_body() -> None:
    """Parse JSON bodies early: refuse too-deep nesting with a 400 before Eve sees them."""
    if request.method not in ("POST", "PUT", "PATCH"):
        return
    if request.mimetype not in current_app.config["JSON_REQUEST_CONTENT_TYPES"]:
        return
    limit = current_app.config["MAX_JSON_DEPTH"]
    try:
        # Flask caches the result, so Eve does not parse the body twice.
        body = request.get_json(force=True)
    except RecursionError:
        abort(400, description=f"JSON body is nested deeper than {limit} levels")
    if nesting_exceeds(body, limit):
        abort(400, description=f"JSON body is nested deeper than {limit} levels")


def nesting_exceeds(value, limit: int) -> bool:
    """Tell whether lists and dicts in a parsed JSON value nest deeper than limit."""
    if not isinstance(value, (list, dict)):
        return False
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node
        for child in children:
            if isinstance(child, (list, dict)):
                if depth + 1 > limit:
                    return True
                stack.append((child, depth + 1))
    return False
