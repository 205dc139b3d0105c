"""The jobs resource over HTTP: submission, validation against the model, ETags.

These run against the queueing app, where jobs stay queued: what is tested here
is what the API stores, not inference (tests/test_inference.py).
"""

import pytest

SETOSA = [5.1, 3.5, 1.4, 0.2]
JOB = {"model": "iris", "inputs": [SETOSA], "tags": {"run": "a"}}


def test_job_round_trip(queue_api, queue_db, queue_demo_models):
    created = queue_api.post("/jobs", json=JOB)
    assert created.status_code == 201, created.text
    job_id = created.json()["_id"]

    job = queue_api.get(f"/jobs/{job_id}").json()
    iris = queue_demo_models["iris"]
    assert job["model"] == "iris"
    assert job["model_ref"] == {"_id": str(iris["_id"]), "name": "iris", "version": 1}
    assert job["inputs"] == [SETOSA]
    assert job["tags"] == {"run": "a"}
    assert job["status"] == "queued"
    assert job["attempts"] == 0
    assert job["progress"] == {"done": 0, "total": 1}
    assert job["queued_at"] == job["_created"]

    listed = queue_api.get("/jobs").json()["_items"]
    assert [item["_id"] for item in listed] == [job_id]
    assert queue_db.jobs.count_documents({}) == 1


def test_inputs_are_stored_packed_and_read_back_as_sent(queue_api, queue_db, queue_demo_models):
    inputs = [[0.1, 2, 1e-7, 4.25], [6.3, 3.3, 6.0, 2.5]]
    created = queue_api.post("/jobs", json={"model": "iris", "inputs": inputs})
    assert created.status_code == 201, created.text
    stored = queue_db.jobs.find_one()["inputs"]
    assert isinstance(stored, bytes) and stored.subtype == 0x80
    job_id = created.json()["_id"]
    # 2 comes back as 2.0: an integer among floats is stored as one.
    expected = [[0.1, 2.0, 1e-7, 4.25], [6.3, 3.3, 6.0, 2.5]]
    assert queue_api.get(f"/jobs/{job_id}").json()["inputs"] == expected
    listed = queue_api.get("/jobs", params={"projection": '{"inputs": 1}'}).json()["_items"]
    assert listed[0]["inputs"] == expected
    # The ETag a GET gives is the one PATCH checks.
    etag = queue_api.get(f"/jobs/{job_id}").json()["_etag"]
    patched = queue_api.patch(
        f"/jobs/{job_id}", json={"tags": {"a": "b"}}, headers={"If-Match": etag}
    )
    assert patched.status_code == 200, patched.text


@pytest.mark.parametrize("reference", ["iris", "iris@1", "ID"])
def test_model_can_be_named_by_name_version_or_id(queue_api, queue_demo_models, reference):
    reference = reference.replace("ID", str(queue_demo_models["iris"]["_id"]))
    created = queue_api.post("/jobs", json={"model": reference, "inputs": [SETOSA]})
    assert created.status_code == 201, created.text
    job = queue_api.get(f"/jobs/{created.json()['_id']}").json()
    assert job["model_ref"]["_id"] == str(queue_demo_models["iris"]["_id"])


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        # Cerberus, from the schema
        ({"inputs": [SETOSA]}, "model", "required field"),
        ({"model": "iris"}, "inputs", "required field"),
        ({"model": 3, "inputs": [SETOSA]}, "model", "must be of string type"),
        ({"model": "iris", "inputs": "1,2,3"}, "inputs", "must be of ['list', 'dict'] type"),
        ({"model": "iris", "inputs": []}, "inputs", "empty values not allowed"),
        ({"model": "iris", "inputs": [SETOSA], "tags": []}, "tags", "must be of dict type"),
        ({"model": "iris", "inputs": [SETOSA], "color": "red"}, "color", "unknown field"),
        ({"model": "iris", "inputs": [SETOSA], "status": "succeeded"}, "status", "read-only"),
        ({"model": "iris", "inputs": [SETOSA], "attempts": 3}, "attempts", "read-only"),
        ({"model": "iris", "inputs": [SETOSA], "owner": "eve"}, "owner", "read-only"),
        # the hook, against the model
        ({"model": "tulip", "inputs": [SETOSA]}, "model", "no ready model 'tulip'"),
        ({"model": "iris@7", "inputs": [SETOSA]}, "model", "no ready model 'iris@7'"),
        ({"model": "iris@x", "inputs": [SETOSA]}, "model", "version after @ must be a number"),
        ({"model": "0" * 24, "inputs": [SETOSA]}, "model", "no ready model with id"),
        (
            {"model": "iris", "inputs": [SETOSA, [1, 2, 3]]},
            "inputs",
            "inputs[1]: expected shape [4], got [3]",
        ),
        (
            {"model": "iris", "inputs": [SETOSA, SETOSA, [1, 2, 3, 4, 5]]},
            "inputs",
            "inputs[2]: expected shape [4], got [5]",
        ),
        (
            {"model": "iris", "inputs": [[1, 2, "3", 4]]},
            "inputs",
            "inputs[0]: expected numbers, got a string",
        ),
        (
            {"model": "iris", "inputs": [[1, 2, None, 4]]},
            "inputs",
            "inputs[0]: expected numbers, got null",
        ),
        (
            {"model": "iris", "inputs": [[True, False, True, False]]},
            "inputs",
            "inputs[0]: expected numbers, got booleans",
        ),
        ({"model": "iris", "inputs": [SETOSA, [1, [2], 3, 4]]}, "inputs", "inputs[1]"),
        ({"model": "iris", "inputs": {"pixels": [SETOSA]}}, "inputs", "no input named pixels"),
        (
            {"model": "digits", "inputs": [SETOSA]},
            "inputs",
            "inputs[0]: expected shape [8, 8], got [4]",
        ),
    ],
)
def test_invalid_job_is_422_naming_the_field(
    queue_api, queue_db, queue_demo_models, body, field, message
):
    response = queue_api.post("/jobs", json=body)
    assert response.status_code == 422, response.text
    issues = response.json()["_issues"]
    assert field in issues
    assert message in str(issues[field])
    assert queue_db.jobs.count_documents({}) == 0


def test_non_finite_numbers_are_refused(queue_api, queue_db, queue_demo_models):
    # Python's JSON parser accepts NaN and Infinity; the model must never see them.
    for literal in ("NaN", "Infinity", "-Infinity"):
        body = f'{{"model": "iris", "inputs": [[1, 2, 3, 4], [1, 2, {literal}, 4]]}}'
        response = queue_api.post("/jobs", data=body, headers={"Content-Type": "application/json"})
        assert response.status_code == 422
        assert response.json()["_issues"]["inputs"].startswith("inputs[1]: NaN, Infinity or null")
    assert queue_db.jobs.count_documents({}) == 0


def test_too_many_instances(start_server, queue_db, queue_demo_models):
    api = start_server(
        {"INFERENCE": "workers", "MONGO_DBNAME": "sibyl_queue_test", "MAX_INSTANCES_PER_JOB": 3}
    ).api()
    response = api.post("/jobs", json={"model": "iris", "inputs": [SETOSA] * 4})
    assert response.status_code == 422
    assert response.json()["_issues"]["inputs"] == "inputs: 4 instances, at most 3 per job"
    assert api.post("/jobs", json={"model": "iris", "inputs": [SETOSA] * 3}).status_code == 201


def test_bulk_post_stores_all_or_nothing(queue_api, queue_db, queue_demo_models):
    response = queue_api.post("/jobs", json=[JOB, {"model": "iris", "inputs": [[1.0]]}, JOB])
    assert response.status_code == 422
    body = response.json()
    assert [item["_status"] for item in body["_items"]] == ["OK", "ERR"]
    assert "inputs[0]: expected shape [4], got [1]" in body["_items"][1]["_issues"]["inputs"]
    assert body["_error"]["message"].startswith("job 1: inputs[0]")
    assert queue_db.jobs.count_documents({}) == 0

    created = queue_api.post("/jobs", json=[JOB, JOB])
    assert created.status_code == 201
    assert len(created.json()["_items"]) == 2
    assert queue_db.jobs.count_documents({}) == 2


def test_patch_needs_the_current_etag(queue_api, queue_demo_models):
    created = queue_api.post("/jobs", json=JOB).json()
    url, etag = f"/jobs/{created['_id']}", created["_etag"]

    assert queue_api.patch(url, json={"tags": {"run": "b"}}).status_code == 428
    updated = queue_api.patch(url, json={"tags": {"run": "b"}}, headers={"If-Match": etag})
    assert updated.status_code == 200, updated.text

    stale = queue_api.patch(url, json={"tags": {"run": "c"}}, headers={"If-Match": etag})
    assert stale.status_code == 412
    assert queue_api.get(url).json()["tags"] == {"run": "b"}


def test_submitted_inputs_cannot_change(queue_api, queue_demo_models):
    created = queue_api.post("/jobs", json=JOB).json()
    url = f"/jobs/{created['_id']}"
    response = queue_api.patch(
        url, json={"inputs": [[0.0] * 4]}, headers={"If-Match": created["_etag"]}
    )
    assert response.status_code == 422
    assert "inputs" in response.json()["_error"]["message"]
    assert queue_api.get(url).json()["inputs"] == [SETOSA]


def test_queued_job_cannot_be_deleted(queue_api, queue_db, queue_demo_models):
    created = queue_api.post("/jobs", json=JOB).json()
    url = f"/jobs/{created['_id']}"
    response = queue_api.delete(url, headers={"If-Match": created["_etag"]})
    assert response.status_code == 409
    assert "queued" in response.json()["_error"]["message"]
    assert queue_db.jobs.count_documents({}) == 1


@pytest.mark.parametrize("wait", ["soon", "-1", "nan", "inf"])
def test_bad_wait_is_400_and_stores_nothing(queue_api, queue_db, queue_demo_models, wait):
    response = queue_api.post(f"/jobs?wait={wait}", json=JOB)
    assert response.status_code == 400
    assert "wait must be a number of seconds" in response.json()["_error"]["message"]
    assert queue_db.jobs.count_documents({}) == 0
