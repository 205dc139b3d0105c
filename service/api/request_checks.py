"""Requests checked before Eve handles them, so that every bad one gets a precise 400.

Eve hides why it refuses a query or a body unless DEBUG is on ("The browser (or
proxy) sent a request that this server could not understand."); these checks
say what is wrong first. They also set the body limit of model uploads.
"""

import ast
import json

from eve.io.mongo.parser import ParseError, parse
from flask import Flask, Request, abort, current_app, request
from werkzeug.exceptions import BadRequest


class SibylRequest(Request):
    """Flask's request, saying what is wrong with a malformed JSON body."""

    def on_json_loading_failed(self, e: ValueError | None):
        if e is None:
            return super().on_json_loading_failed(e)
        raise BadRequest(description=f"malformed JSON body: {e}")


def register(app: Flask) -> None:
    app.request_class = SibylRequest
    app.before_request(allow_model_uploads)
    app.before_request(check_json_body)
    app.before_request(check_query_args)


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
    if request.method == "POST" and isinstance(body, list):
        if not body:
            abort(400, description="empty list: a bulk POST needs at least one document")
        if not all(isinstance(item, dict) for item in body):
            abort(400, description="a bulk POST is a list of JSON objects")
    elif not isinstance(body, dict):
        abort(400, description="the JSON body must be an object (or, to POST many, a list of them)")


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


def check_query_args() -> None:
    """Check where, sort, projection, page and max_results as Eve will read them."""
    if request.method not in ("GET", "HEAD"):
        return
    args = request.args
    if "where" in args:
        check_where(args["where"], current_app.config["MONGO_QUERY_BLACKLIST"])
    if "projection" in args:
        projection = _json_object("projection", args["projection"])
        if any(value not in (0, 1) for value in projection.values()):
            abort(400, description="projection: values must be 1 (include) or 0 (exclude)")
    if "sort" in args:
        check_sort(args["sort"])
    for name in ("page", "max_results"):
        if name in args and not (args[name].isdigit() and int(args[name]) > 0):
            abort(400, description=f"{name} must be a positive whole number, got {args[name]!r}")


def check_where(raw: str, banned: list[str]) -> None:
    """A MongoDB filter as a JSON object (or Eve's Python-like syntax), no banned operator."""
    try:
        query = json.loads(raw)
    except ValueError as error:
        try:
            query = parse(raw)
        except (ParseError, SyntaxError, ValueError, TypeError):
            abort(400, description=f"where: not a JSON object ({error})")
    if not isinstance(query, dict):
        abort(400, description='where: must be a JSON object, like {"label": "setosa"}')
    found = _operators(query) & set(banned)
    if found:
        abort(400, description=f"where: the operator {', '.join(sorted(found))} is not allowed")


def check_sort(raw: str) -> None:
    """`-score,_created` or Eve's `[("score", -1)]`."""
    if raw.lstrip().startswith("["):
        try:
            keys = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            keys = None
        if not isinstance(keys, list) or not all(
            isinstance(k, tuple) and len(k) == 2 and isinstance(k[0], str) and k[1] in (1, -1)
            for k in keys
        ):
            abort(400, description='sort: expected -field,field or [("field", -1), ...]')
    elif any(not name.strip().lstrip("-") for name in raw.split(",")):
        abort(400, description="sort: an empty field name")


def _json_object(name: str, raw: str) -> dict:
    try:
        value = json.loads(raw)
    except ValueError as error:
        abort(400, description=f"{name}: not a JSON object ({error})")
    if not isinstance(value, dict):
        abort(400, description=f"{name}: must be a JSON object")
    return value


def _operators(value) -> set[str]:
    """Every $-key anywhere in a query."""
    found: set[str] = set()
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            found |= {key for key in node if isinstance(key, str) and key.startswith("$")}
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found
