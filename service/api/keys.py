"""/v1/keys: an admin makes, lists and revokes API keys.

POST answers the key itself, once; nothing ever shows it again, nor its hash. A
revoked key stays listed (with revoked_at), so who had access when stays known.
"""

from datetime import datetime

from eve.endpoints import error_endpoint
from flask import Blueprint, abort, jsonify, request
from werkzeug.exceptions import NotFound, UnsupportedMediaType

from service.api.described import described, json_body
from service.api.request_checks import storable_text
from service.context import sibyl
from service.errors import InvalidField, Rejected
from service.store.keys import ROLES

keys = Blueprint("keys", __name__)

NAME_MAX = 100
KEY = {
    "type": "object",
    "properties": {
        "_id": {"type": "string"},
        "role": {"enum": list(ROLES)},
        "name": {"type": "string"},
        "owner": {"type": "string"},
        "created_at": {"type": "string", "format": "date-time"},
        "revoked_at": {"type": ["string", "null"], "format": "date-time"},
    },
}
NEW_KEY = {
    "type": "object",
    "required": ["role", "name"],
    "additionalProperties": False,
    "properties": {
        "role": {"enum": list(ROLES)},
        "name": {"type": "string", "minLength": 1, "maxLength": NAME_MAX},
        "owner": {"type": "string", "minLength": 1, "maxLength": NAME_MAX},
    },
}


def _public(document: dict) -> dict:
    """A key document as answered: ISO times, never the hash."""
    shown = {k: v for k, v in document.items() if k != "hash"}
    for field, value in shown.items():
        if isinstance(value, datetime):
            shown[field] = value.strftime("%Y-%m-%dT%H:%M:%SZ")
    return shown


@keys.get("/keys")
@described(
    summary="List the API keys (revoked ones too, never their hashes)",
    responses={
        "200": json_body(
            {"type": "object", "properties": {"_items": {"type": "array", "items": KEY}}}
        )
    },
)
def list_keys():
    return jsonify({"_items": [_public(key) for key in sibyl().keys.list()]})


@keys.get("/keys/<key_id>")
@described(summary="One API key", responses={"200": json_body(KEY)})
def get_key(key_id: str):
    document = sibyl().keys.get(key_id)
    if document is None:
        abort(error_endpoint(NotFound(f"no key with id {key_id}")))
    return jsonify(_public(document))


@keys.post("/keys")
@described(
    summary="Make a key; the answer holds the key itself, shown this once",
    requestBody={"required": True, "content": {"application/json": {"schema": NEW_KEY}}},
    responses={
        "201": json_body({**KEY, "properties": {**KEY["properties"], "key": {"type": "string"}}})
    },
)
def create_key():
    """{"role": "client", "name": "alice", "owner": "alice"} → 201 with the key, shown once."""
    if not request.is_json:
        abort(error_endpoint(UnsupportedMediaType("send the key's fields as application/json")))
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise InvalidField('the body must be a JSON object: {"role": ..., "name": ...}')
    issues = []
    unknown = sorted(set(body) - {"role", "name", "owner"})
    for field in unknown:
        issues.append((0, field, "unknown field"))
    if body.get("role") not in ROLES:
        issues.append((0, "role", f"must be one of {', '.join(ROLES)}"))
    for field, required in (("name", True), ("owner", False)):
        value = body.get(field)
        if value is None and not required:
            continue
        if not isinstance(value, str) or not 0 < len(value) <= NAME_MAX:
            issues.append((0, field, f"must be a string of 1 to {NAME_MAX} characters"))
        elif not value.isprintable() or not storable_text(value):
            issues.append((0, field, "must be printable text"))
    if issues:
        raise Rejected(issues)
    try:
        document, key = sibyl().keys.create(body["role"], body["name"], body.get("owner"))
    except ValueError as error:
        raise Rejected([(0, "owner", str(error))]) from None
    answer = {**_public(document), "key": key, "_status": "OK"}
    return jsonify(answer), 201, {"Location": f"{request.base_url}/{document['_id']}"}


@keys.delete("/keys/<key_id>")
@described(summary="Revoke a key", responses={"204": {"description": "revoked"}})
def revoke_key(key_id: str):
    """Revoke a key: it stops working at once here, within KEY_CACHE_SECONDS elsewhere."""
    service = sibyl().keys
    if service.get(key_id) is None:
        abort(error_endpoint(NotFound(f"no key with id {key_id}")))
    service.revoke(key_id)
    return "", 204
