"""The OpenAPI document: valid OpenAPI 3.1, every route and method in it, the schemas
translated from Cerberus; Swagger UI served from local files."""

import re

import pytest
import requests
from openapi_spec_validator import validate

from schemas.common import JOB_STATUSES
from service.api.openapi import field_schema, openapi_path


@pytest.fixture(scope="module")
def document(live_server) -> dict:
    answer = requests.get(live_server.url + "/v1/openapi.json", timeout=10)
    assert answer.status_code == 200
    return answer.json()


def test_the_document_is_valid_openapi_3_1(document):
    assert document["openapi"].startswith("3.1")
    validate(document)


def test_every_route_and_method_is_in_the_document(live_server, document):
    missing = []
    for rule in live_server.app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = openapi_path(rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            if method.lower() not in document["paths"].get(path, {}):
                missing.append(f"{method} {path}")
    assert missing == []
    assert "/v1/jobs/{_id}" in document["paths"]


def test_the_job_schemas_say_what_cerberus_checks(document):
    schemas = document["components"]["schemas"]
    write, read = schemas["JobsWrite"], schemas["Jobs"]
    assert write["required"] == ["inputs", "model"]
    assert write["additionalProperties"] is False
    assert "status" not in write["properties"] and "owner" not in write["properties"]
    assert read["properties"]["status"] == {
        "type": "string",
        "enum": JOB_STATUSES,
        "readOnly": True,
    }
    assert write["properties"]["model"]["maxLength"] == 100
    assert write["properties"]["model"]["minLength"] == 1  # empty: False
    model_name = schemas["ModelsWrite"]["properties"]["name"]
    assert re.fullmatch(model_name["pattern"], "iris") and not re.fullmatch(
        model_name["pattern"], "-x"
    )
    assert schemas["ModelsWrite"]["properties"]["file"]["format"] == "binary"
    assert schemas["Models"]["properties"]["stage"]["enum"] == ["production", None]


def test_sibyls_own_routes_are_described_where_they_are_defined(document):
    paths = document["paths"]
    post = paths["/v1/jobs"]["post"]
    assert "wait" in [p.get("name") for p in post["parameters"]]
    assert "predictions" in post["responses"]["201"]["description"]
    assert "wait" in [p.get("name") for p in paths["/v1/jobs/{_id}"]["get"]["parameters"]]
    assert "multipart/form-data" in paths["/v1/models"]["post"]["requestBody"]["content"]
    assert paths["/v1/keys"]["post"]["requestBody"]["content"]["application/json"]["schema"][
        "required"
    ] == ["role", "name"]
    assert paths["/v1/healthz"]["get"]["security"] == []
    assert "503" in paths["/v1/readyz"]["get"]["responses"]
    item = paths["/v1/jobs/{_id}"]["delete"]
    assert {"$ref": "#/components/parameters/If-Match"} in item["parameters"]
    assert {"404", "409", "412", "428"} <= set(item["responses"])
    assert "Needs `jobs:write` (roles: admin, client)" in item["description"]
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    listing = paths["/v1/predictions"]["get"]["parameters"]
    assert {"$ref": "#/components/parameters/where"} in listing


@pytest.mark.parametrize(
    ("rule", "schema"),
    [
        (
            {"type": "string", "nullable": True, "allowed": ["a"]},
            {"type": ["string", "null"], "enum": ["a", None]},
        ),
        (
            {"type": "list", "schema": {"type": "integer"}, "maxlength": 3},
            {"type": "array", "items": {"type": "integer"}, "maxItems": 3},
        ),
        (
            {"type": ["list", "dict"], "empty": False},
            {"anyOf": [{"type": "array", "minItems": 1}, {"type": "object", "minProperties": 1}]},
        ),
        (
            {"type": "integer", "min": 1, "max": 9, "default": 3},
            {"type": "integer", "minimum": 1, "maximum": 9, "default": 3},
        ),
        (
            {
                "type": "dict",
                "keysrules": {"type": "string", "regex": "^a"},
                "valuesrules": {"type": "float"},
            },
            {
                "type": "object",
                "propertyNames": {"type": "string", "pattern": "^a"},
                "additionalProperties": {"type": "number"},
            },
        ),
        (
            {"type": "dict", "schema": {"a": {"type": "datetime", "required": True}}},
            {
                "type": "object",
                "properties": {"a": {"type": "string", "format": "date-time"}},
                "required": ["a"],
            },
        ),
    ],
)
def test_cerberus_rules_become_json_schema(rule, schema):
    assert field_schema(rule) == schema


def test_swagger_ui_is_served_from_local_files(live_server):
    page = requests.get(live_server.url + "/v1/docs", timeout=10)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sources and all(source.startswith("/v1/") for source in sources)
    for source in sources:
        asset = requests.get(live_server.url + source, timeout=10)
        assert asset.status_code == 200, source
        assert asset.headers["Content-Type"].split(";")[0] in ("text/javascript", "text/css")
    assert "/v1/openapi.json" in page.text
    # The package's other files (an OAuth redirect page among them) are not served.
    for other in ("oauth2-redirect.html", "index.css"):
        hidden = requests.get(live_server.url + "/v1/docs/assets/" + other, timeout=10)
        assert hidden.status_code == 404, other
    outside = requests.get(live_server.url + "/v1/docs/assets/..%2F__init__.py", timeout=10)
    assert outside.status_code >= 400 and "import" not in outside.text
