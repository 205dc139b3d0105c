"""The jobs resource over HTTP: CRUD, validation, ETags."""

import pytest

JOB = {"model": "iris", "inputs": [[5.1, 3.5, 1.4, 0.2]], "tags": {"run": "a"}}


def test_job_round_trip(api, db):
    created = api.post("/jobs", json=JOB)
    assert created.status_code == 201, created.text
    job_id = created.json()["_id"]

    job = api.get(f"/jobs/{job_id}").json()
    assert job["model"] == "iris"
    assert job["inputs"] == JOB["inputs"]
    assert job["tags"] == {"run": "a"}
    assert job["status"] == "queued"
    assert job["attempts"] == 0
    assert job["progress"] == {"done": 0, "total": 1}
    assert job["queued_at"] == job["_created"]

    listed = api.get("/jobs").json()["_items"]
    assert [item["_id"] for item in listed] == [job_id]
    assert db.jobs.count_documents({}) == 1


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"inputs": [[1.0]]}, "model", "required field"),
        ({"model": "iris"}, "inputs", "required field"),
        ({"model": 3, "inputs": [[1.0]]}, "model", "must be of string type"),
        ({"model": "iris", "inputs": "1,2,3"}, "inputs", "must be of ['list', 'dict'] type"),
        ({"model": "iris", "inputs": []}, "inputs", "empty values not allowed"),
        ({"model": "iris", "inputs": [[1.0]], "tags": []}, "tags", "must be of dict type"),
        ({"model": "iris", "inputs": [[1.0]], "color": "red"}, "color", "unknown field"),
        ({"model": "iris", "inputs": [[1.0]], "status": "succeeded"}, "status", "read-only"),
        ({"model": "iris", "inputs": [[1.0]], "attempts": 3}, "attempts", "read-only"),
        ({"model": "iris", "inputs": [[1.0]], "owner": "eve"}, "owner", "read-only"),
    ],
)
def test_invalid_job_is_422_naming_the_field(api, db, body, field, message):
    response = api.post("/jobs", json=body)
    assert response.status_code == 422
    issues = response.json()["_issues"]
    assert field in issues
    assert message in str(issues[field])
    assert db.jobs.count_documents({}) == 0


def test_bulk_post_with_one_bad_job_stores_none(api, db):
    response = api.post("/jobs", json=[JOB, {"model": "iris"}])
    assert response.status_code == 422
    assert db.jobs.count_documents({}) == 0


def test_patch_needs_the_current_etag(api):
    created = api.post("/jobs", json=JOB).json()
    url, etag = f"/jobs/{created['_id']}", created["_etag"]

    assert api.patch(url, json={"tags": {"run": "b"}}).status_code == 428
    updated = api.patch(url, json={"tags": {"run": "b"}}, headers={"If-Match": etag})
    assert updated.status_code == 200, updated.text

    stale = api.patch(url, json={"tags": {"run": "c"}}, headers={"If-Match": etag})
    assert stale.status_code == 412
    assert api.get(url).json()["tags"] == {"run": "b"}


def test_submitted_inputs_cannot_change(api):
    created = api.post("/jobs", json=JOB).json()
    url = f"/jobs/{created['_id']}"
    response = api.patch(url, json={"inputs": [[0.0]]}, headers={"If-Match": created["_etag"]})
    assert response.status_code == 422
    assert "inputs" in response.json()["_error"]["message"]
    assert api.get(url).json()["inputs"] == JOB["inputs"]


def test_queued_job_cannot_be_deleted(api, db):
    created = api.post("/jobs", json=JOB).json()
    url = f"/jobs/{created['_id']}"
    response = api.delete(url, headers={"If-Match": created["_etag"]})
    assert response.status_code == 409
    assert "queued" in response.json()["_error"]["message"]
    assert db.jobs.count_documents({}) == 1
