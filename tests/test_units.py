"""Pure functions, no server needed."""

import copy
import inspect
import json

import pytest
from bson import ObjectId
from cerberus import Validator as CerberusValidator
from cerberus.schema import DefinitionSchema
from eve.io.mongo import Validator
from flask import Flask

from hooks.pagination import on_fetched_resource
from run import redact
from schemas import DOMAIN
from schemas.common import MODEL_NAME
from service.api.request_checks import nesting_exceeds, unstorable_value
from service.api.validation import CHECKED_SCHEMAS, CheckedSchema, SibylValidator
from service.store.access import Access, Identity
from service.store.packed import is_packed, pack, unpacked, unpacked_array


@pytest.mark.parametrize(
    ("value", "limit", "expected"),
    [
        (1, 1, False),
        ([], 1, False),
        ([[]], 1, True),
        ([[]], 2, False),
        ({"a": [{"b": 1}]}, 3, False),
        ({"a": [{"b": []}]}, 3, True),
        ([1, 2, [3, [4]]], 3, False),
        ([1, 2, [3, [4, [5]]]], 3, True),
    ],
)
def test_nesting_exceeds(value, limit, expected):
    assert nesting_exceeds(value, limit) is expected


@pytest.mark.parametrize(
    ("value", "path"),
    [
        # Among thousands of plain numbers (checked by NumPy, not item by item).
        ([[0.5] * 1000, [1.0] * 999 + [2**63]], (1, 999)),
        ([[1] * 1000, [-(2**63) - 1] + [1] * 999], (1, 0)),
        ([1e300] * 1000 + [2**64], (1000,)),
        ([0.5] * 1000 + [float("nan")], (1000,)),
        ([0.5] * 1000 + ["\ud800"], (1000,)),
    ],
)
def test_unstorable_numbers_are_found_in_large_arrays(value, path):
    assert unstorable_value(value)[0] == path


@pytest.mark.parametrize(
    "inputs",
    [
        [[5.1, 3.5, 1.4, 0.2]],
        [[0.1, 1e-300, -2.5e300, 3.0]] * 3,
        [[[1, 2], [3, -(2**63)]], [[2**63 - 1, 0], [7, 8]]],
    ],
)
def test_packed_inputs_read_back_as_sent(inputs):
    stored = pack(inputs)
    assert is_packed(stored)
    # The same JSON: the same numbers, integers still integers.
    assert json.dumps(unpacked(stored)) == json.dumps(inputs)
    assert unpacked_array(stored).tolist() == inputs


@pytest.mark.parametrize(
    "inputs",
    [
        [[1, 2], [3]],  # ragged
        [["a", "b"]],  # strings
        [{"x": [1.0]}],  # named inputs
        {"x": [[1.0]]},
        [[True, False]],
        [[2**64]],  # past int64: stored as sent, refused by the model's check
    ],
)
def test_inputs_that_are_not_numeric_arrays_are_stored_as_sent(inputs):
    assert pack(inputs) is inputs
    assert unpacked(inputs) is inputs


def test_redact_hides_only_the_password():
    assert (
        redact("mongodb://sibyl:s3cret@db.example:27017/x")
        == "mongodb://sibyl:***@db.example:27017/x"
    )
    assert redact("mongodb://127.0.0.1:27017") == "mongodb://127.0.0.1:27017"


@pytest.mark.parametrize(("returned", "has_next"), [(2, False), (3, True)])
def test_next_link_only_on_full_pages(returned, has_next):
    response = {"_items": [{}] * returned, "_meta": {"max_results": 3}, "_links": {"next": {}}}
    on_fetched_resource("jobs", response)
    assert ("next" in response["_links"]) is has_next


def test_cerberus_internals_that_checked_schema_relies_on():
    """CheckedSchema (service/api/validation.py) overrides Cerberus' DefinitionSchema: an
    upgrade that changes what it overrides or copies must fail here, not in production."""
    assert list(inspect.signature(DefinitionSchema.__init__).parameters) == [
        "self",
        "validator",
        "schema",
    ]
    assert list(inspect.signature(DefinitionSchema.__setitem__).parameters) == [
        "self",
        "key",
        "value",
    ]
    assert list(inspect.signature(DefinitionSchema.copy).parameters) == ["self"]
    # The validator's schema is a property whose setter SibylValidator wraps.
    assert isinstance(CerberusValidator.schema, property)
    assert CerberusValidator.schema.fset is not None
    # copy() clones these attributes; a new one would be shared between copies.
    checked = CheckedSchema(Validator({}), {"a": {"type": "string"}})
    assert set(vars(checked)) == {"validator", "validation_schema", "schema_validator", "schema"}
    assert checked.schema == {"a": {"type": "string"}}
    clone = checked.copy()
    clone["b"] = {"type": "integer"}
    assert "b" not in checked.schema


@pytest.mark.parametrize(
    "document",
    [
        {"model": "iris", "inputs": [[1, 2, 3, 4]]},
        {"model": "iris", "inputs": [[1]], "tags": {"a": {"b": [1, 2.5]}}},
        {"model": "", "inputs": []},
        {"model": "iris", "inputs": [[1]], "status": "running"},
        {"model": 3, "inputs": {"a": [1]}, "color": "red"},
        {"model": "iris", "inputs": [[1]], "progress": {"done": "x"}},
    ],
)
def test_checked_schema_validates_like_cerberus(document):
    """Same verdict, errors and normalised document as Eve's plain validator, with the
    checked schema shared between the validators of one app."""
    with Flask(__name__).app_context():
        ours = copy.deepcopy(DOMAIN["jobs"]["schema"])
        theirs = copy.deepcopy(DOMAIN["jobs"]["schema"])
        del theirs["tags"]["tags_limits"]  # Sibyl's own rule, unknown to a plain validator
        first = SibylValidator(ours, resource="jobs")
        for _ in range(2):  # the second validator reuses the first one's CheckedSchema
            sibyl = SibylValidator(ours, resource="jobs")
            plain = Validator(theirs, resource="jobs")
            assert isinstance(sibyl.schema, CheckedSchema)
            assert sibyl.schema is first.schema
            verdict = sibyl.validate(copy.deepcopy(document))
            assert verdict == plain.validate(copy.deepcopy(document))
            assert sibyl.errors == plain.errors
            assert sibyl.document == plain.document


def test_checked_schemas_live_with_their_app():
    """One CheckedSchema per resource schema and app, kept in the app, not in the module."""
    schema = copy.deepcopy(DOMAIN["jobs"]["schema"])
    apps = [Flask(__name__), Flask(__name__)]
    checked = []
    for app in apps:
        with app.app_context():
            for _ in range(3):
                checked.append(SibylValidator(schema, resource="jobs").schema)
            assert len(app.extensions[CHECKED_SCHEMAS]) == 1
    assert checked[0] is checked[2] and checked[3] is checked[5]
    assert checked[0] is not checked[3]


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("iris", True),
        ("g" * 24, True),
        ("5f2b6c1d9e8a7b6c5d4e3f2", True),  # 23 digits
        ("5f2b6c1d9e8a7b6c5d4e3f21", False),
        ("5F2B6C1D9E8A7B6C5D4E3F21", False),
    ],
)
def test_model_names_never_look_like_model_ids(name, valid):
    validator = SibylValidator({"name": MODEL_NAME})
    assert validator.validate({"name": name}) is valid
    if not valid:
        assert validator.errors == {
            "name": "a model name may not look like a model id (24 hex digits)"
        }


def test_a_clients_scope_is_a_top_level_owner_unless_the_query_names_one():
    """The embedded database plans no index for a top-level $and (it scanned every job
    for a client's GET of one): the owner joins the query's own fields, and only a
    query naming an owner itself is wrapped, so it cannot replace the scope's."""
    alice = Identity(owner="alice", sees_all=False, role="client")
    owned, shared = Access(owned=True, has_owner=True), Access(owned=False, has_owner=True)
    job_id = ObjectId()
    assert alice.scope(owned, {}) == {"owner": "alice"}
    assert alice.scope(owned, {"_id": job_id}) == {"_id": job_id, "owner": "alice"}
    named = {"owner": "bob", "status": "queued"}
    assert alice.scope(owned, named) == {"$and": [named, {"owner": "alice"}]}
    assert alice.scope(shared, {"name": "iris"}) == {"name": "iris"}
