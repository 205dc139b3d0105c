"""The OpenAPI 3.1 document, built at start-up from what serves the requests: the Eve
DOMAIN (its Cerberus schemas translated to JSON Schema, its resources' descriptions),
the app's URL map, the rights table, and the descriptions Sibyl's own views carry
(`described`, next to each view).
It cannot go stale as a hand-written file would: tests/test_openapi.py fails on any
route or method missing from it, and validates it against the OpenAPI 3.1 schema.

GET /v1/openapi.json serves it; /v1/docs is Swagger UI (5.x, which reads 3.1) on it,
its files from the flask-swagger-ui package (no CDN; its own page, with inline script,
is not used).
"""

import copy
import re
from pathlib import Path

import flask_swagger_ui
from flask import (
    Blueprint,
    Flask,
    abort,
    current_app,
    jsonify,
    render_template,
    send_from_directory,
)

from service.api.described import OPERATION, described
from service.api.negotiation import NOT_NEGOTIATED
from service.api.roles import PUBLIC
from service.errors import echoed

openapi = Blueprint("openapi", __name__)
docs = Blueprint("docs", __name__)
SWAGGER_UI = Path(flask_swagger_ui.__file__).parent / "dist"

DOCS_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; base-uri 'none'; frame-ancestors 'none'"
)
DOCS_ASSETS = {"swagger-ui.css", "swagger-ui-bundle.js"}
SKIPPED_METHODS = {"HEAD", "OPTIONS"}
JSON = "application/json"
HTML = "text/html"
PAGE = {"schema": {"type": "string", "description": "the browsable API's page of the answer"}}


def register(app: Flask) -> None:
    """Serve the document and the docs; built once every other route is registered."""
    app.register_blueprint(openapi, url_prefix=app.api_prefix)
    app.register_blueprint(docs, url_prefix=app.api_prefix)
    app.extensions["openapi"] = build(app)


@openapi.get("/openapi.json")
@described(
    summary="This OpenAPI 3.1 document",
    security=[],
    responses={
        "200": {"description": "the document", "content": {JSON: {"schema": {"type": "object"}}}}
    },
)
def openapi_document():
    return jsonify(current_app.extensions["openapi"])


@docs.get("/docs")
@described(
    summary="Swagger UI on this document (HTML)",
    security=[],
    responses={"200": {"description": "Swagger UI", "content": {"text/html": {}}}},
)
def docs_page():
    response = current_app.make_response(render_template("openapi/docs.html"))
    response.headers["Content-Security-Policy"] = DOCS_POLICY
    return response


@docs.get("/docs/assets/<filename>")
@described(summary="Swagger UI's files", security=[], responses={"200": {"description": "a file"}})
def docs_asset(filename: str):
    """Only the two files the docs page loads (the package has others, such as an OAuth
    redirect page, that are not Sibyl's to serve)."""
    if filename not in DOCS_ASSETS:
        abort(404, description=f"no such file of the API docs: {echoed(filename)}")
    return send_from_directory(SWAGGER_UI, filename)


# --- The document -----------------------------------------------------------------------


def build(app: Flask) -> dict:
    config = app.config
    rights = app.extensions["rights"]
    document = {
        "openapi": "3.1.0",
        "info": {
            "title": "Sibyl",
            "version": config["API_VERSION"].removeprefix("v"),
            "description": "TensorFlow inference behind a REST API, with a queryable "
            "record of every job and prediction.",
        },
        "paths": {},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": ERROR, "ValidationError": VALIDATION_ERROR},
            "responses": ERROR_RESPONSES,
            "parameters": COMMON_PARAMETERS,
        },
        "security": [{"bearer": []}],
        # Each resource's operations are tagged with its name (tag_of).
        "tags": [
            {"name": name, "description": resource["description"]}
            for name, resource in config["DOMAIN"].items()
            if resource.get("description")
        ],
    }
    for name, resource in config["DOMAIN"].items():
        document["components"]["schemas"].update(resource_schemas(name, resource))
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = openapi_path(rule.rule)
        for method in sorted((rule.methods or set()) - SKIPPED_METHODS):
            view = app.view_functions[rule.endpoint]
            operation = operation_for(config, rule.endpoint, method, view)
            operation.setdefault(
                "operationId",
                f"{method.lower()}_{rule.endpoint}".replace("|", "_").replace(".", "_"),
            )
            operation.setdefault("tags", [tag_of(rule.endpoint)])
            right = rights.needed(rule.endpoint, method)
            if right == PUBLIC:
                operation["security"] = []
            elif right:
                roles = rights.holders(right)
                operation["description"] = (
                    operation.get("description", "")
                    + f"\n\nNeeds `{right}` (roles: {', '.join(roles)})."
                ).strip()
            parameters = [*path_parameters(rule), *operation.get("parameters", [])]
            parameters.append({"$ref": "#/components/parameters/version"})
            negotiated = not ({rule.endpoint, tag_of(rule.endpoint)} & NOT_NEGOTIATED)
            if negotiated:
                parameters.append({"$ref": "#/components/parameters/format"})
                add_pages(operation)
            operation["parameters"] = parameters
            add_errors(operation, method, right)
            document["paths"].setdefault(path, {})[method.lower()] = operation
    return document


def openapi_path(rule: str) -> str:
    """/v1/jobs/<regex("[a-f0-9]{24}"):_id> → /v1/jobs/{_id}"""
    return re.sub(r"<(?:[^:<>]+(?:\([^)]*\))?:)?([^<>:]+)>", r"{\1}", rule)


def path_parameters(rule) -> list[dict]:
    parameters = []
    for name in rule.arguments:
        schema = {"type": "string"}
        converter = rule._converters.get(name)
        regex = getattr(converter, "regex", None)
        if regex and regex != "[^/]+":
            schema["pattern"] = f"^{regex}$"
        parameters.append({"name": name, "in": "path", "required": True, "schema": schema})
    return parameters


def tag_of(endpoint: str) -> str:
    return endpoint.partition("|")[0].partition(".")[0]


def operation_for(config: dict, endpoint: str, method: str, view) -> dict:
    """Eve's operation generated from the resource (or a bare one), with what the view
    itself describes for the method laid over it (its parameters added)."""
    resource, _, kind = endpoint.partition("|")
    if resource in config["DOMAIN"] and kind:
        operation = eve_operation(config, resource, kind, method)
    else:
        operation = {"summary": f"{method} {endpoint}", "responses": {"200": {"description": "OK"}}}
    own = copy.deepcopy(getattr(view, OPERATION, None) or {})
    own = own.get(method, {}) if set(own) & {"GET", "POST", "PATCH", "DELETE"} else own
    parameters = operation.get("parameters", []) + own.pop("parameters", [])
    responses = {**operation.get("responses", {}), **own.pop("responses", {})}
    return {**operation, **own, "parameters": parameters, "responses": responses}


def eve_operation(config: dict, name: str, kind: str, method: str) -> dict:
    """What Eve's generated endpoint takes and answers."""
    title = config["DOMAIN"][name]["item_title"]
    ref = {"$ref": f"#/components/schemas/{schema_name(name)}"}
    write = {"$ref": f"#/components/schemas/{schema_name(name)}Write"}
    if kind == "item_post_override":
        return {
            "summary": f"Not supported: POST on a {title}'s URL",
            "responses": {"405": {"$ref": "#/components/responses/MethodNotAllowed"}},
        }
    if kind == "resource" and method == "GET":
        return {
            "summary": f"List {name}",
            "parameters": [{"$ref": f"#/components/parameters/{p}"} for p in LIST_PARAMETERS],
            "responses": {
                "200": {
                    "description": f"a page of {name}",
                    "content": {JSON: {"schema": page_of(ref)}},
                }
            },
        }
    if kind == "resource" and method == "POST":
        media = "multipart/form-data" if has_media(config["DOMAIN"][name]) else JSON
        body = write if media != JSON else {"oneOf": [write, {"type": "array", "items": write}]}
        return {
            "summary": f"Create a {title} (or, with a JSON list, several)",
            "requestBody": {"required": True, "content": {media: {"schema": body}}},
            "responses": {
                "201": {
                    "description": f"the {title}'s meta fields",
                    "content": {JSON: {"schema": ref}},
                }
            },
        }
    if method == "GET":
        return {
            "summary": f"One {title}",
            "responses": {
                "200": {
                    "description": f"the {title}",
                    "headers": {"ETag": {"schema": {"type": "string"}}},
                    "content": {JSON: {"schema": ref}},
                }
            },
        }
    if_match = {"$ref": "#/components/parameters/If-Match"}
    if method == "PATCH":
        return {
            "summary": f"Change a {title}",
            "parameters": [if_match],
            "requestBody": {
                "required": True,
                "content": {JSON: {"schema": changes(config["DOMAIN"][name])}},
            },
            "responses": {
                "200": {"description": "its new meta fields", "content": {JSON: {"schema": ref}}}
            },
        }
    return {
        "summary": f"Delete a {title}",
        "parameters": [if_match],
        "responses": {"204": {"description": "deleted"}},
    }


def page_of(item: dict) -> dict:
    return {
        "type": "object",
        "properties": {
            "_items": {"type": "array", "items": item},
            "_links": {
                "type": "object",
                "description": "self, parent, next and prev, each {title, href}",
            },
            "_meta": {
                "type": "object",
                "properties": {"page": {"type": "integer"}, "max_results": {"type": "integer"}},
            },
        },
    }


def add_pages(operation: dict) -> None:
    """A negotiated answer is also a page of the browsable API (service/api/browsable.py)."""
    for response in operation["responses"].values():
        content = response.get("content", {})
        if JSON in content:
            content.setdefault(HTML, PAGE)


def has_media(resource: dict) -> bool:
    return any(rule.get("type") == "media" for rule in resource["schema"].values())


def add_errors(operation: dict, method: str, right: str | None) -> None:
    responses = operation.setdefault("responses", {})
    names = ["BadRequest", "NotAcceptable", "TooManyRequests", "Unavailable"]
    if right != PUBLIC:
        names += ["Unauthorized", "Forbidden"]
    if method != "GET" or "{" in str(operation.get("parameters", "")):
        names += ["NotFound"]
    if method in ("POST", "PATCH", "PUT"):
        names += ["TooLarge", "Unprocessable"]
    if method in ("PATCH", "DELETE"):
        names += ["PreconditionFailed", "PreconditionRequired", "Conflict"]
    for name in names:
        responses.setdefault(ERROR_CODES[name], {"$ref": f"#/components/responses/{name}"})


# --- Cerberus → JSON Schema -------------------------------------------------------------

TYPES = {
    "string": {"type": "string"},
    "integer": {"type": "integer"},
    "float": {"type": "number"},
    "number": {"type": "number"},
    "boolean": {"type": "boolean"},
    "list": {"type": "array"},
    "dict": {"type": "object"},
    "datetime": {"type": "string", "format": "date-time"},
    "objectid": {"type": "string", "pattern": "^[0-9a-f]{24}$"},
    "media": {"type": "string", "format": "binary"},
}
# A stored file as answered (EXTENDED_MEDIA_INFO, RETURN_MEDIA_AS_URL).
MEDIA_INFO = {
    "type": "object",
    "readOnly": True,
    "properties": {
        "file": {"type": "string", "description": "the URL that downloads it"},
        "name": {"type": ["string", "null"]},
        "content_type": {"type": ["string", "null"]},
        "length": {"type": "integer"},
    },
}
META = {
    "_id": {"type": "string", "pattern": "^[0-9a-f]{24}$", "readOnly": True},
    "_created": {"type": "string", "format": "date-time", "readOnly": True},
    "_updated": {"type": "string", "format": "date-time", "readOnly": True},
    "_etag": {"type": "string", "readOnly": True},
    "_links": {"type": "object", "readOnly": True},
    "_status": {"type": "string", "readOnly": True},
}


def schema_name(resource: str) -> str:
    return resource[:1].upper() + resource[1:]


def resource_schemas(name: str, resource: dict) -> dict:
    """The resource as answered (every field, read-only ones marked) and as written."""
    fields = resource["schema"]
    answered = {
        f: MEDIA_INFO if r.get("type") == "media" else field_schema(r) for f, r in fields.items()
    }
    read = {"type": "object", "properties": {**META, **answered}}
    return {schema_name(name): read, f"{schema_name(name)}Write": write_schema(resource)}


def write_schema(resource: dict) -> dict:
    """What a client may send: the fields that are not read-only."""
    writable = {f: r for f, r in resource["schema"].items() if not r.get("readonly")}
    return {
        "type": "object",
        "properties": {f: field_schema(r) for f, r in writable.items()},
        "required": sorted(f for f, r in writable.items() if r.get("required")),
        "additionalProperties": bool(resource.get("allow_unknown")),
    }


def changes(resource: dict) -> dict:
    """A PATCH body: any of the writable fields (the hooks say which may change)."""
    return {**write_schema(resource), "required": []}


def field_schema(rule: dict) -> dict:
    """One Cerberus field rule as JSON Schema (Sibyl's own rules are named in the
    description; their checks are the service's)."""
    kind = rule.get("type")
    if isinstance(kind, list):
        schema = {"anyOf": [dict(TYPES[k]) for k in kind]}
    else:
        schema = dict(TYPES.get(kind, {}))
    json_type = schema.get("type")
    if "allowed" in rule:
        schema["enum"] = list(rule["allowed"])
    for cerberus, keyword in (("min", "minimum"), ("max", "maximum")):
        if cerberus in rule:
            schema[keyword] = rule[cerberus]
    lengths = {"array": ("minItems", "maxItems"), "object": ("minProperties", "maxProperties")}
    low, high = lengths.get(json_type, ("minLength", "maxLength"))
    if "minlength" in rule:
        schema[low] = rule["minlength"]
    if "maxlength" in rule:
        schema[high] = rule["maxlength"]
    if rule.get("empty") is False:
        if json_type in lengths or json_type == "string":
            schema.setdefault(low, 1)
        else:  # a list of types: each may not be empty
            for option in schema.get("anyOf", []):
                option[lengths.get(option.get("type"), ("minLength",))[0]] = 1
    if "regex" in rule:
        schema["pattern"] = rule["regex"]
    nested = rule.get("schema")
    if isinstance(nested, dict) and json_type == "object":
        schema["properties"] = {f: field_schema(r) for f, r in nested.items()}
        required = sorted(f for f, r in nested.items() if r.get("required"))
        if required:
            schema["required"] = required
    elif isinstance(nested, dict) and json_type == "array":
        schema["items"] = field_schema(nested)
    if isinstance(rule.get("keysrules"), dict):
        schema["propertyNames"] = field_schema(rule["keysrules"])
    if isinstance(rule.get("valuesrules"), dict):
        schema["additionalProperties"] = field_schema(rule["valuesrules"])
    if rule.get("readonly"):
        schema["readOnly"] = True
    if "default" in rule:
        schema["default"] = rule["default"]
    relation = rule.get("data_relation")
    if relation:
        schema["description"] = f"the id of a document of {relation['resource']}"
    custom = sorted(set(rule) & {"tags_limits", "not_a_model_id", "model_file"})
    if custom:
        schema["description"] = "checked by the service: " + ", ".join(
            CUSTOM_RULES[c] for c in custom
        )
    if rule.get("nullable"):
        if isinstance(schema.get("type"), str):
            schema["type"] = [schema["type"], "null"]
            if "enum" in schema:
                schema["enum"].append(None)
        else:
            schema = {"anyOf": [schema, {"type": "null"}]}
    return schema


CUSTOM_RULES = {
    "tags_limits": "size, number of names and depth capped (SIBYL_MAX_TAGS_*)",
    "not_a_model_id": "not 24 hex digits (that reads as a model id)",
    "model_file": "a .keras, .h5 or zipped SavedModel file that loads and runs",
}

# --- Errors and parameters --------------------------------------------------------------

ERROR = {
    "type": "object",
    "required": ["_status", "_error"],
    "properties": {
        "_status": {"const": "ERR"},
        "_error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {"code": {"type": "integer"}, "message": {"type": "string"}},
        },
    },
}
VALIDATION_ERROR = {
    "allOf": [{"$ref": "#/components/schemas/Error"}],
    "properties": {
        "_issues": {
            "type": "object",
            "description": "each field at fault and what is wrong with it",
            "additionalProperties": {"type": "string"},
        },
        "_items": {
            "type": "array",
            "description": "per document of a bulk POST",
            "items": {"type": "object"},
        },
    },
}
ERROR_CODES = {
    "BadRequest": "400",
    "Unauthorized": "401",
    "Forbidden": "403",
    "NotFound": "404",
    "MethodNotAllowed": "405",
    "NotAcceptable": "406",
    "Conflict": "409",
    "PreconditionFailed": "412",
    "TooLarge": "413",
    "Unprocessable": "422",
    "PreconditionRequired": "428",
    "TooManyRequests": "429",
    "Unavailable": "503",
}
ERROR_TEXT = {
    "BadRequest": "a malformed body or query (the message says what)",
    "Unauthorized": "no key, or a key that is malformed, unknown or revoked",
    "Forbidden": "the key's role may not do this",
    "NotFound": "no such item (or another owner's), route or API version",
    "MethodNotAllowed": "the method is not allowed here",
    "NotAcceptable": "an Accept, ?format= or version the API cannot serve",
    "Conflict": "the item is in use (a queued or running job, a model such jobs need)",
    "PreconditionFailed": "If-Match is stale",
    "TooLarge": "the body, or the number of documents, is past the limit",
    "Unprocessable": "a field at fault (named in _issues)",
    "PreconditionRequired": "If-Match is missing",
    "TooManyRequests": "over a rate limit or the owner's quota (Retry-After)",
    "Unavailable": "the database cannot be reached (Retry-After)",
}
ERROR_RESPONSES = {
    name: {
        "description": ERROR_TEXT[name],
        "content": {
            JSON: {
                "schema": {
                    "$ref": "#/components/schemas/"
                    + ("ValidationError" if name == "Unprocessable" else "Error")
                }
            },
            HTML: PAGE,
        },
    }
    for name in ERROR_CODES
}
LIST_PARAMETERS = ["where", "sort", "projection", "page", "max_results", "embedded"]


def query_parameter(name: str, schema: dict, description: str | None = None) -> dict:
    parameter = {"name": name, "in": "query", "schema": schema}
    if description:
        parameter["description"] = description
    return parameter


TEXT = {"type": "string"}
PAGE_NUMBER = {"type": "integer", "minimum": 1, "maximum": 1_000_000_000}
COMMON_PARAMETERS = {
    "where": query_parameter(
        "where",
        TEXT,
        'a MongoDB filter as JSON on the fields the resource lists: {"status": "succeeded"}',
    ),
    "sort": query_parameter("sort", TEXT, "fields an index serves, `-` for descending: -_created"),
    "projection": query_parameter(
        "projection", TEXT, 'fields to include (1) or exclude (0), as JSON: {"inputs": 0}'
    ),
    "page": query_parameter("page", PAGE_NUMBER),
    "max_results": query_parameter("max_results", PAGE_NUMBER),
    "embedded": query_parameter("embedded", TEXT, "data relations to embed, as JSON"),
    "If-Match": {
        "name": "If-Match",
        "in": "header",
        "required": True,
        "description": "the item's current ETag (from a GET)",
        "schema": TEXT,
    },
    "version": query_parameter(
        "version", TEXT, "the API version to serve (also `Accept: application/json; version=N`)"
    ),
    "format": query_parameter(
        "format",
        {"type": "string", "enum": ["json", "html"]},
        "json, or html (the browsable API); overrides Accept",
    ),
}
