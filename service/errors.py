"""JSON errors: database outages as 503, and request bodies checked before Eve parses them."""

from typing import NoReturn

from eve.endpoints import error_endpoint
from flask import Flask, Request, Response, abort, current_app, json, request
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
    app.before_request(allow_model_uploads)
    app.before_request(check_json_body)


def database_unavailable(error: ConnectionFailure):
    """Answer 503 with a Retry-After when MongoDB cannot be reached."""
    app_error = ServiceUnavailable(
        description=f"database unavailable: {type(error).__name__}; retry later"
    )
    response = error_endpoint(app_error)
    response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


def allow_model_uploads() -> None:
    """Model files may be larger than other bodies, up to MAX_MODEL_BYTES."""
    if request.method == "POST" and request.path.rstrip("/").endswith("/models"):
        request.max_content_length = current_app.config["MAX_MODEL_BYTES"] + 1024 * 1024


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
