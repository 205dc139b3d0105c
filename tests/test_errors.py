"""Bad request bodies: precise 4xx JSON answers, nothing stored."""

import json

import pytest
from pymongo.errors import OperationFailure

from service.api.errors import query_refused

JSON = {"Content-Type": "application/json"}


def test_malformed_json_is_400_saying_why(api, db):
    response = api.post(
        "/jobs", data='{"model": "iris",', headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["_error"]["message"].startswith("malformed JSON body:")
    assert db.jobs.count_documents({}) == 0


@pytest.mark.parametrize("depth", [33, 5_000, 100_000])
def test_deeply_nested_json_is_400(api, db, depth):
    body = "[" * depth + "]" * depth
    response = api.post("/jobs", data=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert "nested deeper than 32" in response.json()["_error"]["message"]
    assert db.jobs.count_documents({}) == 0


def test_nesting_within_the_limit_reaches_validation(queue_api, queue_demo_models):
    inputs = [[[[1.0]]]]
    response = queue_api.post("/jobs", json={"model": "iris", "inputs": inputs})
    assert response.status_code == 422
    assert response.json()["_issues"]["inputs"] == "inputs[0]: expected shape [4], got [1, 1, 1]"


def test_body_over_the_limit_is_413(start_server, db, demo_models):
    api = start_server({"MAX_CONTENT_LENGTH": 10_000}).api()
    inputs = [[1.0, 2.0, 3.0, 4.0]] * 1_000
    response = api.post("/jobs", json={"model": "iris", "inputs": inputs})
    assert response.status_code == 413
    assert response.json()["_error"] == {
        "code": 413,
        "message": "the body is larger than 10000 bytes",
    }
    assert db.jobs.count_documents({}) == 0
    assert (
        api.post("/jobs?wait=10", json={"model": "iris", "inputs": inputs[:10]}).status_code == 201
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('"just a string"', "the JSON body must be an object"),
        ("42", "the JSON body must be an object"),
        ("[]", "empty list: a bulk POST needs at least one document"),
        ('[{"model": "iris"}, 3]', "a bulk POST is a list of JSON objects"),
    ],
)
def test_body_of_the_wrong_shape_is_400(api, db, body, message):
    response = api.post("/jobs", data=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert message in response.json()["_error"]["message"]
    assert db.jobs.count_documents({}) == 0


def test_unknown_route_is_json_404(api):
    response = api.get("/nowhere")
    assert response.status_code == 404
    assert response.json()["_error"] == {"code": 404, "message": "no such route: GET /v1/nowhere"}


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/jobs/" + "a" * 24, "no job with id " + "a" * 24),
        ("/models/" + "b" * 24, "no model with id " + "b" * 24),
        ("/predictions/" + "c" * 24, "no prediction with id " + "c" * 24),
    ],
)
def test_missing_item_is_404_naming_it(api, path, message):
    response = api.get(path)
    assert response.status_code == 404
    assert response.json()["_error"]["message"] == message


def test_predictions_are_read_only(api):
    response = api.post("/predictions", json={"job": "x"})
    assert response.status_code == 405


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ({"label": {"$in": 5}}, "the database refused the query: $in needs an array"),
        ({"$or": 3}, "where: $or takes a list of filters (objects)"),
        ({"label": {"$options": "i"}}, "the database refused the query: $options needs a $regex"),
        ({"$text": {"$search": "x"}}, "where: the operator $text is not allowed"),
        ({"score": {"$mod": [0, 0]}}, "the database refused the query: divisor cannot be 0"),
        ({"output": {"$size": -1}}, "the database refused the query: Failed to parse $size"),
        ({"score": {"$foo": 1}}, "where: unknown operator $foo"),
        ({"$function": {"body": "f", "args": [], "lang": "js"}}, "where: the operator $function"),
        ({"$expr": {"$function": {}}}, "where: the operators $expr, $function are not allowed"),
        ({"": 1}, "where: an empty field name"),
        ({"index": 2**64}, "where: index: integer out of the 64-bit range MongoDB takes"),
        ({"score": {"$gt": float("nan")}}, "where: score.$gt: NaN and Infinity are not allowed"),
        ({"score": {"$bitsAllSet": -1}}, "the database refused the query: Expected a non-neg"),
    ],
)
def test_refused_filter_is_400_saying_why(api, db, where, message):
    db.predictions.insert_one({"label": "a", "score": 0.5, "output": [0.5], "index": 0})
    response = api.get("/predictions", params={"where": json.dumps(where)})
    assert response.status_code == 400
    assert response.json()["_error"]["message"].startswith(message)


def test_other_database_failures_stay_server_errors(live_server):
    """Only a read's filter is the client's fault; a timeout, or any write, is not."""
    app = live_server.app
    with app.test_request_context("/v1/predictions"), pytest.raises(OperationFailure):
        query_refused(OperationFailure("operation exceeded time limit", code=50))
    with app.test_request_context("/v1/jobs", method="POST"), pytest.raises(OperationFailure):
        query_refused(OperationFailure("bad value", code=2))


@pytest.mark.parametrize("name", ["page", "max_results"])
@pytest.mark.parametrize("value", ["99999999999999999999", "²", "1000000001", "0", "-1", "2.0"])
def test_bad_page_or_page_size_is_400(api, name, value):
    response = api.get("/predictions", params={name: value})
    assert response.status_code == 400
    assert response.json()["_error"]["message"] == (
        f"{name} must be a positive whole number up to 1000000000, got {value!r}"
    )


def job_body(tags: str = "{}", inputs: str = "[[1, 2, 3, 4]]") -> str:
    """A job as raw JSON text: Python's json module would refuse to write NaN."""
    return f'{{"model": "iris", "inputs": {inputs}, "tags": {tags}}}'


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        (job_body('{"x": NaN}'), "tags", "tags.x: NaN and Infinity are not allowed"),
        (job_body('{"x": -Infinity}'), "tags", "tags.x: NaN and Infinity are not allowed"),
        (job_body('{"run": {"seeds": [1, 1e400]}}'), "tags", "tags.run.seeds[1]: NaN and"),
        (job_body(f'{{"big": {2**64}}}'), "tags", "tags.big: integer out of the 64-bit range"),
        (job_body(f'{{"low": {-(2**63) - 1}}}'), "tags", "tags.low: integer out of the 64-bit"),
        (job_body(inputs=f"[[1, 2, 3, {2**64}]]"), "inputs", "inputs[0][3]: integer out of the"),
    ],
)
def test_numbers_mongodb_cannot_take_are_422(
    queue_api, queue_db, queue_demo_models, body, field, message
):
    response = queue_api.post("/jobs", data=body, headers=JSON)
    assert response.status_code == 422
    assert response.json()["_issues"][field].startswith(message)
    assert response.json()["_error"] == {"code": 422, "message": response.json()["_issues"][field]}
    assert queue_db.jobs.count_documents({}) == 0


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"tags": {"$where": "1"}}, "tags", "tags.$where: a field name may not start with $"),
        ({"tags": {"run": {"a.b": 1}}}, "tags", "tags.run.a.b: a field name may not start with"),
        ({"_id": "0" * 24}, "_id", "field is read-only"),
    ],
)
def test_field_names_and_ids_a_client_may_not_set_are_422(
    queue_api, queue_db, queue_demo_models, body, field, message
):
    job = {"model": "iris", "inputs": [[1, 2, 3, 4]], **body}
    response = queue_api.post("/jobs", json=job)
    assert response.status_code == 422
    assert message in response.json()["_issues"][field]
    assert queue_db.jobs.count_documents({}) == 0


def test_patch_with_a_dotted_tag_is_422_and_changes_nothing(queue_api, queue_db, queue_demo_models):
    job = queue_api.post("/jobs", json={"model": "iris", "inputs": [[1, 2, 3, 4]]}).json()
    response = queue_api.patch(
        f"/jobs/{job['_id']}", json={"tags": {"a.b": 1}}, headers={"If-Match": job["_etag"]}
    )
    assert response.status_code == 422
    assert response.json()["_issues"]["tags"].startswith("tags.a.b: a field name may not")
    assert queue_db.jobs.find_one()["tags"] == {}


def test_bulk_post_with_one_unstorable_number_stores_nothing(
    queue_api, queue_db, queue_demo_models
):
    body = "[" + job_body() + ", " + job_body('{"x": NaN}') + "]"
    response = queue_api.post("/jobs", data=body, headers=JSON)
    assert response.status_code == 422
    items = response.json()["_items"]
    assert items[0] == {"_status": "OK"}
    assert items[1]["_issues"]["tags"].startswith("tags.x: NaN and Infinity are not allowed")
    assert queue_db.jobs.count_documents({}) == 0


def test_non_finite_inputs_are_named_by_instance_and_tags_named_inputs_are_not_spared(
    queue_api, queue_db, queue_demo_models
):
    # Inputs are the model's to check, in a bulk POST too; a tag called "inputs" is not.
    body = "[" + job_body() + ", " + job_body(inputs="[[1, 2, NaN, 4]]") + "]"
    response = queue_api.post("/jobs", data=body, headers=JSON)
    assert response.status_code == 422
    message = response.json()["_items"][1]["_issues"]["inputs"]
    assert message.startswith("inputs[0]: NaN, Infinity or null")
    response = queue_api.post("/jobs", data=job_body('{"inputs": [NaN]}'), headers=JSON)
    assert response.status_code == 422
    assert response.json()["_issues"]["tags"].startswith("tags.inputs[0]: NaN and Infinity")
    assert queue_db.jobs.count_documents({}) == 0


def test_patch_with_unstorable_numbers_is_422_and_changes_nothing(
    queue_api, queue_db, queue_demo_models
):
    job = queue_api.post("/jobs", data=job_body('{"a": 1}'), headers=JSON).json()
    for tags, message in [
        ('{"x": Infinity}', "tags.x: NaN and Infinity are not allowed"),
        (f'{{"big": {2**64}}}', "tags.big: integer out of the 64-bit range MongoDB takes"),
    ]:
        etag = queue_api.get(f"/jobs/{job['_id']}").json()["_etag"]
        response = queue_api.patch(
            f"/jobs/{job['_id']}", data=f'{{"tags": {tags}}}', headers={**JSON, "If-Match": etag}
        )
        assert response.status_code == 422
        assert response.json()["_issues"]["tags"].startswith(message)
    assert queue_db.jobs.find_one()["tags"] == {"a": 1}
    assert queue_api.get("/jobs").status_code == 200


def test_numbers_at_the_64_bit_limits_are_stored(queue_api, queue_db, queue_demo_models):
    tags = {"max": 2**63 - 1, "min": -(2**63), "tiny": 5e-324, "huge": 1.7e308}
    response = queue_api.post(
        "/jobs", json={"model": "iris", "inputs": [[1, 2, 3, 4]], "tags": tags}
    )
    assert response.status_code == 201
    assert queue_api.get("/jobs").json()["_items"][0]["tags"] == tags


@pytest.fixture(scope="module")
def limited_server(start_server):
    """An app with small URL and body limits."""
    return start_server({"MAX_URL_BYTES": 2_000, "MAX_CONTENT_LENGTH": 10_000})


def test_url_over_the_limit_is_json_414(limited_server):
    api = limited_server.api()
    assert api.get("/predictions", params={"where": json.dumps({"label": "a" * 1_500})}).ok
    response = api.get("/predictions", params={"where": json.dumps({"label": "a" * 3_000})})
    assert response.status_code == 414
    assert response.json()["_error"]["message"].endswith("at most 2000 are accepted")


def chunks(data: bytes, size: int = 1_000):
    """A generator body: requests sends it chunked, without Content-Length."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


def test_chunked_body_over_the_limit_is_413(limited_server, db):
    api = limited_server.api()
    exactly = b'{"model": "iris"}'.ljust(10_000)
    response = api.post("/jobs", data=chunks(exactly), headers=JSON)
    assert response.status_code == 422  # read whole: only the missing inputs are wrong
    assert response.json()["_issues"] == {"inputs": "required field"}
    for body in [exactly + b" ", job_body(inputs=str([[1.0, 2.0, 3.0, 4.0]] * 1_000)).encode()]:
        response = api.post("/jobs", data=chunks(body), headers=JSON)
        assert response.status_code == 413
        assert response.json()["_error"] == {
            "code": 413,
            "message": "the body is larger than 10000 bytes",
        }
    assert db.jobs.count_documents({}) == 0
