"""Bad request bodies: precise 4xx JSON answers, nothing stored."""

import pytest


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
    assert response.json()["_error"]["code"] == 413
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
