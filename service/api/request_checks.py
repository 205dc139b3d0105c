"""Requests checked before Eve handles them, so that every bad one gets a precise 4xx.

Eve hides why it refuses a query or a body unless DEBUG is on ("The browser (or
proxy) sent a request that this server could not understand."); these checks
say what is wrong first. They also set the body limit of model uploads, and
enforce URL and body limits and the number of documents per POST with JSON
errors; a query may filter only on the fields its resource lists, and sort only
on those an index serves.
"""

import ast
import json
import math
import re

import numpy as np
from eve.endpoints import error_endpoint
from eve.io.mongo.mongo import Mongo
from eve.io.mongo.parser import ParseError, parse
from flask import Flask, Request, abort, current_app, request
from werkzeug.datastructures import ImmutableMultiDict, MultiDict
from werkzeug.exceptions import BadRequest, RequestEntityTooLarge, UnsupportedMediaType
from werkzeug.utils import cached_property
from werkzeug.wsgi import LimitedStream

from service.api.versioning import API_VERSION
from service.errors import Rejected, echoed

# page and max_results: ASCII digits (str.isdigit takes "²"), a bound Eve's
# arithmetic and MongoDB's 64-bit skip are safe with.
MAX_PAGE_ARG = 1_000_000_000
WHOLE_NUMBER = re.compile(r"[0-9]{1,10}")

# Python's JSON parser takes NaN, Infinity (and 1e400, which is infinite) and
# integers of any size; MongoDB takes no integer beyond 64 bits, and a stored
# NaN could never be answered as JSON again.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
NOT_FINITE = "NaN and Infinity are not allowed (nor numbers beyond ±1.8e308)"
OUT_OF_RANGE = "integer out of the 64-bit range MongoDB takes"
# A stored key starting with $ cannot be queried, and Eve reshapes a dotted one
# ({"a.b": 1} became {"a": {"b": 1}}).
BAD_KEY = "a field name may not start with $ or contain a dot"
# JSON lets a string hold half a UTF-16 pair ("\\ud800"), which UTF-8 (and so BSON)
# cannot; BSON field names cannot hold NUL either.
BAD_TEXT = "not valid Unicode text (a lone surrogate, or NUL in a field name)"


def storable_text(text: str, name: bool = False) -> bool:
    """Whether MongoDB can store the string (as a field name, with name)."""
    if text.isascii():
        return not (name and "\0" in text)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return not (name and "\0" in text)


# The operators whose value is a list of filters, each naming fields of its own.
LOGICAL_OPERATORS = ("$and", "$or", "$nor")


class SibylRequest(Request):
    """Flask's request, saying what is wrong with a malformed or too large body."""

    @property
    def api_version(self) -> str | None:
        """The API version the request is served as (service/api/versioning.py)."""
        return self.environ.get(API_VERSION)

    def on_json_loading_failed(self, e: ValueError | None):
        if e is None:
            return super().on_json_loading_failed(e)
        raise BadRequest(description=f"malformed JSON body: {e}")

    @cached_property
    def stream(self):
        """A body without Content-Length (chunked) past max_content_length is a 413.

        Werkzeug stops reading such a body at the limit without a word: a too large
        chunked JSON body looked cut ("malformed JSON at char 8388608").
        """
        limit = self.max_content_length
        if (
            self.content_length is None
            and limit is not None
            and "wsgi.input_terminated" in self.environ
        ):
            return BodyLimit(self.environ["wsgi.input"], limit)
        return super().stream


class BodyLimit(LimitedStream):
    """Read up to limit bytes; the body's next byte raises RequestEntityTooLarge."""

    def __init__(self, stream, limit: int):
        super().__init__(stream, limit + 1, is_max=True)

    def readinto(self, b) -> int | None:
        size = super().readinto(b)
        if self.is_exhausted:
            raise RequestEntityTooLarge(f"the body is larger than {self.limit - 1} bytes")
        return size


def register(app: Flask) -> None:
    app.request_class = SibylRequest
    app.before_request(check_url_length)
    app.before_request(allow_model_uploads)
    app.before_request(check_json_body)
    app.before_request(check_query_args)


def check_url_length() -> None:
    """A JSON 414 past MAX_URL_BYTES when served without Sibyl's front (Werkzeug in tests,
    another WSGI server); behind the front such a URL never gets here (service/api/front.py)."""
    limit = current_app.config["MAX_URL_BYTES"]
    size = len(request.path) + len(request.query_string)
    if size > limit:
        abort(414, description=f"the URL has {size} bytes; at most {limit} are accepted")


def allow_model_uploads():
    """Model files may be larger than other bodies, up to MAX_MODEL_BYTES; they come as
    multipart forms, and any other body on POST /models is a 415 (at the normal limit)."""
    if request.method != "POST" or request.endpoint != "models|resource":
        return None
    if request.mimetype != "multipart/form-data":
        return error_endpoint(
            UnsupportedMediaType(
                f"a model is uploaded as multipart/form-data (a `file` part and form fields), "
                f"not {request.mimetype or 'a body without Content-Type'}"
            )
        )
    request.max_content_length = current_app.config["MAX_MODEL_BYTES"] + 1024 * 1024
    request.__dict__["form"] = form_values_as_json(request.form)
    return None


def form_values_as_json(form: MultiDict) -> ImmutableMultiDict:
    """The form with each value given as the JSON Eve decodes it into.

    Eve decodes every field as JSON (MULTIPART_FORM_FIELDS_AS_JSON, for `labels`), and
    a value that is not JSON by wrapping it in quotes, which fails, as a 500, on text
    holding a quote, a backslash or a control character (found by tests/test_fuzz.py).
    A text field stays text even when it reads as JSON (a description `42`).
    """
    schema = current_app.config["DOMAIN"]["models"]["schema"]
    values = []
    for key, value in form.items(multi=True):
        if schema.get(key, {}).get("type") == "string" or not is_json(value):
            value = json.dumps(value)
        values.append((key, value))
    return ImmutableMultiDict(values)


def is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def check_json_body() -> None:
    """Parse JSON bodies early: refuse more documents than a POST takes with a 413, too-deep
    nesting with a 400, and numbers or field names MongoDB cannot store with a 422, before
    Eve sees them."""
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
    if request.method == "POST" and isinstance(body, list):
        check_bulk_size(len(body))
    too_deep, number = scan_json(body, limit, int(isinstance(body, list)), keys=True)
    if too_deep:
        abort(400, description=f"JSON body is nested deeper than {limit} levels")
    if request.method == "POST" and isinstance(body, list):
        if not body:
            abort(400, description="empty list: a bulk POST needs at least one document")
        if not all(isinstance(item, dict) for item in body):
            abort(400, description="a bulk POST is a list of JSON objects")
    elif not isinstance(body, dict):
        abort(400, description="the JSON body must be an object (or, to POST many, a list of them)")
    if number is not None:
        path, reason = number
        if isinstance(body, list):  # (position, field, ...) in a bulk POST
            position, path = path[0], path[1:]
        else:
            position = 0
        raise Rejected([(position, path[0], f"{json_path(path)}: {reason}")])


def check_bulk_size(count: int) -> None:
    """A 413 past MAX_JOBS_PER_POST documents, before any is looked at: validating each
    costs CPU, and an answer naming each one's issues would be larger than the request."""
    limit = current_app.config["MAX_JOBS_PER_POST"]
    if count > limit:
        resource = current_app.config["DOMAIN"].get(_resource_name(), {})
        title = resource.get("item_title", "document")
        abort(
            413,
            description=f"a POST takes at most {limit} {title}s (SIBYL_MAX_JOBS_PER_POST); "
            f"this one has {count}: send them in several requests",
        )


def scan_json(
    value, depth_limit: int, document_level: int = 0, keys: bool = False
) -> tuple[bool, tuple[tuple, str] | None]:
    """One walk of a parsed JSON value: (nested deeper than depth_limit, the path to the
    first value MongoDB cannot store and why): a number, a string that is not Unicode
    text, or with keys, a field name starting with $ or holding a dot.
    document_level: 1 when value is a list of documents (a bulk POST), 0 when it is one."""
    if not isinstance(value, (dict, list)):
        return False, None
    found = None
    stack = [(value, ())]
    while stack:
        node, path = stack.pop()
        if type(node) is list and _storable_array(node, depth_limit - len(path)):
            continue
        for key, child in node.items() if isinstance(node, dict) else enumerate(node):
            if found is None and type(key) is str:
                if not storable_text(key, name=True):
                    found = (*path, key), BAD_TEXT
                elif keys and (key[:1] == "$" or "." in key):
                    found = (*path, key), BAD_KEY
            kind = type(child)
            if kind is dict or kind is list:
                if len(path) + 2 > depth_limit:
                    return True, found
                stack.append((child, (*path, key)))
            elif found is not None:
                continue
            # A job's inputs are checked against its model, which names the
            # instance at fault ("inputs[1]: NaN, Infinity or null is not ...").
            elif (
                kind is float
                and not math.isfinite(child)
                and path[document_level : document_level + 1] != ("inputs",)
            ):
                found = (*path, key), NOT_FINITE
            elif kind is int and not INT64_MIN <= child <= INT64_MAX:
                found = (*path, key), OUT_OF_RANGE
            elif kind is str and not storable_text(child):
                found = (*path, key), BAD_TEXT
    return False, found


def _storable_array(values: list, depth: int) -> bool:
    """Whether the list is a rectangular array of numbers MongoDB stores (finite, and
    any integer within 64 bits) no deeper than depth, told by NumPy in C: a job's inputs
    are tens of thousands of numbers, which scan_json's per-item loop took 6 ms to walk.
    False (walk it item by item) for anything else."""
    try:
        array = np.asarray(values)
    except (ValueError, TypeError, OverflowError, RecursionError):
        return False
    if array.ndim > depth:
        return False
    if array.dtype.kind in "ib":  # (uint64 holds 2**63 and beyond)
        return True
    # A float64 array below 2**63 in magnitude: any integer it was made from is in range.
    return array.dtype.kind == "f" and bool(np.all(np.abs(array) < 2.0**63))


def unstorable_value(value) -> tuple[tuple, str] | None:
    """The path to a number or string in a parsed JSON value that cannot be stored, and why."""
    return scan_json(value, depth_limit=2**31)[1]


def nesting_exceeds(value, limit: int) -> bool:
    """Tell whether lists and dicts in a parsed JSON value nest deeper than limit."""
    return scan_json(value, limit)[0]


def json_path(path: tuple) -> str:
    """`tags.x`, `inputs[1][2]`: where a value is in a document."""
    text = ""
    for key in path:
        text += f"[{key}]" if isinstance(key, int) else f".{key}" if text else key
    return text


def check_query_args() -> None:
    """Check where, sort, projection, page and max_results as Eve will read them."""
    if request.method not in ("GET", "HEAD"):
        return
    args = request.args
    resource = current_app.config["DOMAIN"].get(_resource_name()) or {}
    filterable = resource.get("allowed_filters", ["*"])
    if "where" in args:
        whitelist = resource.get("mongo_query_whitelist", [])
        allowed = Mongo.operators | set(whitelist)
        check_where(args["where"], current_app.config["MONGO_QUERY_BLACKLIST"], allowed, filterable)
    if "projection" in args:
        projection = _json_object("projection", args["projection"])
        if any(value not in (0, 1) for value in projection.values()):
            abort(400, description="projection: values must be 1 (include) or 0 (exclude)")
        if any(not name or "$" in name for name in projection):
            abort(400, description="projection: a field name may not be empty or hold a $")
    if "sort" in args:
        check_sort(args["sort"], sortable_fields(resource) if "*" not in filterable else None)
    for name in ("page", "max_results"):
        raw = args.get(name)
        if raw is not None and not (WHOLE_NUMBER.fullmatch(raw) and 0 < int(raw) <= MAX_PAGE_ARG):
            abort(
                400,
                description=f"{name} must be a positive whole number up to {MAX_PAGE_ARG}, "
                f"got {echoed(raw)}",
            )


def check_where(
    raw: str, banned: list[str], allowed: set[str], filterable: list[str] | None = None
) -> None:
    """A MongoDB filter as a JSON object (or Eve's Python-like syntax): no banned or unknown
    operator anywhere (Eve refuses them without saying which), fields among filterable
    (Eve's `allowed_filters`: a listed field's sub-fields too; "*" for any), no number
    MongoDB cannot take."""
    try:
        query = json.loads(raw)
    except ValueError as error:
        try:
            query = parse(raw)
        except (ParseError, SyntaxError, ValueError, TypeError):
            abort(400, description=f"where: not a JSON object ({error})")
    if not isinstance(query, dict):
        abort(400, description='where: must be a JSON object, like {"label": "setosa"}')
    keys = _keys(query)
    if "" in keys:
        abort(400, description="where: an empty field name")
    operators = {key for key in keys if key.startswith("$")}
    found = operators & set(banned)
    if len(found) == 1:
        abort(400, description=f"where: the operator {found.pop()} is not allowed")
    if found:
        abort(400, description=f"where: the operators {', '.join(sorted(found))} are not allowed")
    unknown = operators - allowed
    if unknown:
        abort(400, description=f"where: unknown operator {', '.join(sorted(unknown))}")
    if filterable is not None and "*" not in filterable:
        for field in sorted(_filtered_fields(query)):
            if not _covered(field, filterable):
                abort(
                    400,
                    description=f"where: filtering on {echoed(field)} is not allowed; fields "
                    f"that may be filtered on: {', '.join(filterable)} (and their sub-fields, "
                    "such as tags.<name>)",
                )
    number = unstorable_value(query)
    if number:
        path, reason = number
        abort(400, description=f"where: {json_path(path)}: {reason}")


def check_sort(raw: str, sortable: list[str] | None = None) -> None:
    """`-score,_created` or Eve's `[("score", -1)]`, on fields among sortable (None: any)."""
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
        names = [name for name, _ in keys]
    else:
        names = [name.strip().lstrip("-") for name in raw.split(",")]
    if any(not name for name in names):
        abort(400, description="sort: an empty field name")
    if any(name.startswith("$") for name in names):
        abort(400, description="sort: a field name may not start with $")
    for name in names:
        if sortable is not None and name not in sortable:
            abort(
                400,
                description=f"sort: sorting on {echoed(name)} is not allowed (only on fields "
                f"an index serves); sort on {', '.join(sortable)}",
            )


def sortable_fields(resource: dict) -> list[str]:
    """The fields of a resource a client may sort on: those its indexes hold, and _id, that
    it may also filter on (a sort no index serves reads and sorts the whole collection)."""
    indexed = {"_id"}
    for index in resource.get("mongo_indexes", {}).values():
        keys = index[0] if isinstance(index, tuple) else index
        indexed |= {field for field, _ in keys}
    filterable = resource.get("allowed_filters", ["*"])
    return sorted(f for f in indexed if "*" in filterable or _covered(f, filterable))


def _resource_name() -> str:
    """The resource of the request's Eve endpoint ("jobs" of "jobs|item_lookup")."""
    return (request.endpoint or "").partition("|")[0]


def _filtered_fields(query: dict) -> set[str]:
    """The fields a filter tests: its names, and those of the filters under $and, $or and
    $nor, however nested. (Names under a field, as in $elemMatch, are within that field.)"""
    fields: set[str] = set()
    stack = [query]
    while stack:
        for key, value in stack.pop().items():
            if not isinstance(key, str):
                abort(400, description=f"where: a field name must be a string, got {echoed(key)}")
            if key in LOGICAL_OPERATORS:
                if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
                    abort(400, description=f"where: {key} takes a list of filters (objects)")
                stack.extend(value)
            elif not key.startswith("$"):
                fields.add(key)
    return fields


def _covered(field: str, allowed: list[str]) -> bool:
    """field is listed, or is a sub-field of a listed one (as Eve's allowed_filters reads)."""
    while field:
        if field in allowed:
            return True
        field = field.rpartition(".")[0]
    return False


def _json_object(name: str, raw: str) -> dict:
    try:
        value = json.loads(raw)
    except ValueError as error:
        abort(400, description=f"{name}: not a JSON object ({error})")
    if not isinstance(value, dict):
        abort(400, description=f"{name}: must be a JSON object")
    return value


def _keys(value) -> set[str]:
    """Every key anywhere in a query."""
    found: set[str] = set()
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            found |= {key for key in node if isinstance(key, str)}
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found
