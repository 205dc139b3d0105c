"""POST /v1/jobs/<id>/cancel: a queued or running job stopped for good, by its owner or
an admin. Most tests run against the queueing app, where jobs stay queued until a
test claims them or starts a worker."""

import threading
import time

import pytest
from bson import ObjectId
from conftest import emptied, job_queue, restore_models, wait_for

from service.jobs.claims import utcnow
from service.jobs.engine import Job

SETOSA = [5.1, 3.5, 1.4, 0.2]
JOB = {"model": "iris", "inputs": [SETOSA, SETOSA]}


@pytest.fixture
def alice(queueing_server, queue_db, queue_demo_models):
    return queueing_server.api("client", "alice")


def submitted(caller) -> str:
    created = caller.post("/jobs", json=JOB)
    assert created.status_code == 201, created.text
    return created.json()["_id"]


def test_the_owner_cancels_a_queued_job_and_no_runner_takes_it(
    alice, queue_api, queue_db, start_worker
):
    cancelled_id, other_id = submitted(alice), submitted(alice)
    response = alice.post(f"/jobs/{cancelled_id}/cancel")
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["_id"] == cancelled_id and job["status"] == "cancelled"
    assert job["finished_at"] is not None and job["error"] == "cancelled by client alice"
    assert job["inputs"] == [SETOSA, SETOSA]  # answered as a GET of it is
    assert "lease" not in job  # an admin's field
    assert alice.get(f"/jobs/{cancelled_id}").json()["_etag"] == job["_etag"]

    start_worker()
    assert alice.get(f"/jobs/{other_id}?wait=60").json()["status"] == "succeeded"
    stored = queue_db.jobs.find_one({"_id": ObjectId(cancelled_id)})
    assert stored["status"] == "cancelled" and stored["lease"] is None
    assert stored["attempts"] == 0  # never claimed
    assert queue_db.predictions.count_documents({"job": ObjectId(cancelled_id)}) == 0


def test_a_running_job_cancelled_keeps_nothing_its_runner_writes_later(alice, queue_api, queue_db):
    job_id = ObjectId(submitted(alice))
    runner = job_queue(queue_db, "runner")
    token, _ = runner.claim([job_id])
    queue_db.predictions.insert_one({"job": job_id, "index": 0, "owner": "alice"})

    response = queue_api.post(f"/jobs/{job_id}/cancel", json={})
    assert response.status_code == 200, response.text
    assert response.json()["error"] == "cancelled by admin admin"
    assert response.json()["lease"] is None
    assert queue_db.predictions.count_documents({"job": job_id}) == 0  # all or nothing

    # The runner's next writes, fenced by its lease, land nowhere: it withdraws its rows.
    now = utcnow()
    assert runner.extend(job_id, token, done=1, started_at=now) is False
    ran = Job(job_id, token, {}, {}, count=2, attempts=1, started_at=now)
    assert runner.succeed([ran], now) == set()
    assert runner.fail_attempt(job_id, token, 1, "late") == ""
    assert runner.requeue_expired() == 0 and runner.queued(10) == []
    stored = queue_db.jobs.find_one({"_id": job_id})
    assert stored["status"] == "cancelled" and stored["error"] == "cancelled by admin admin"


def test_only_the_owner_or_an_admin_may_cancel(alice, queueing_server, queue_db):
    job_id = submitted(alice)
    bob = queueing_server.api("client", "bob")
    analyst = queueing_server.api("analyst")
    hidden = bob.post(f"/jobs/{job_id}/cancel")
    assert hidden.status_code == 404 and hidden.json()["_error"]["message"] == (
        f"no job with id {job_id}"
    )
    assert analyst.post(f"/jobs/{job_id}/cancel").status_code == 403
    assert queue_db.jobs.find_one({"_id": ObjectId(job_id)})["status"] == "queued"


@pytest.mark.parametrize("job_id", [str(ObjectId()), "not-an-id", "A" * 24])
def test_an_unknown_or_malformed_id_is_a_json_404(alice, job_id):
    response = alice.post(f"/jobs/{job_id}/cancel")
    assert response.status_code == 404
    assert response.json()["_status"] == "ERR"


def test_a_finished_job_is_a_409_naming_its_status_and_can_be_deleted(alice, queue_db):
    job_id = submitted(alice)
    assert alice.post(f"/jobs/{job_id}/cancel").status_code == 200
    again = alice.post(f"/jobs/{job_id}/cancel")
    assert again.status_code == 409
    assert again.json()["_error"]["message"].startswith("job is cancelled")

    succeeded_id = submitted(alice)
    queue_db.jobs.update_one({"_id": ObjectId(succeeded_id)}, {"$set": {"status": "succeeded"}})
    assert "job is succeeded" in alice.post(f"/jobs/{succeeded_id}/cancel").text

    etag = alice.get(f"/jobs/{job_id}").json()["_etag"]
    assert alice.delete(f"/jobs/{job_id}", headers={"If-Match": etag}).status_code == 204


@pytest.mark.parametrize(
    "query, body, status",
    [("", {"reason": "slow"}, 422), ("", [{}], 422), ('?projection={"inputs": 0}', None, 400)],
)
def test_a_refused_cancel_changes_nothing(alice, queue_db, query, body, status):
    job_id = submitted(alice)
    response = alice.post(f"/jobs/{job_id}/cancel{query}", json=body)
    assert response.status_code == status, response.text
    assert queue_db.jobs.find_one({"_id": ObjectId(job_id)})["status"] == "queued"


def test_a_waiter_on_the_job_answers_once_it_is_cancelled(alice):
    job_id = submitted(alice)
    answers = []
    waiting = threading.Thread(
        target=lambda: answers.append(alice.get(f"/jobs/{job_id}?wait=20").json())
    )
    waiting.start()
    time.sleep(0.3)  # the waiter is registered
    cancelled_at = time.monotonic()
    assert alice.post(f"/jobs/{job_id}/cancel").status_code == 200
    waiting.join(10)
    assert time.monotonic() - cancelled_at < 2
    assert answers[0]["status"] == "cancelled"


def test_a_cancelled_job_no_longer_counts_against_the_quota(
    start_server, queue_db, queue_demo_models
):
    server = start_server(
        {"INFERENCE": "workers", "MONGO_DBNAME": queue_db.name, "MAX_ACTIVE_JOBS_PER_OWNER": 1}
    )
    carol = server.api("client", "carol")
    job_id = submitted(carol)
    assert carol.post("/jobs", json=JOB).status_code == 429
    assert carol.post(f"/jobs/{job_id}/cancel").status_code == 200
    # Each process reads an owner's count at most once a second (service/jobs/quota.py).
    wait_for(lambda: carol.post("/jobs", json=JOB).status_code == 201, 5, "room in the quota")


@pytest.fixture
def cancel_db(database, model_snapshot):
    """A database of its own for an in-process app: no other app's sweeps reach it."""
    for db in emptied(database, "sibyl_cancel_test"):
        restore_models(db, model_snapshot)
        yield db


def test_the_in_process_engine_never_overwrites_a_cancelled_job(start_server, cancel_db):
    # The dispatcher holds a batch back up to 1.5 s for more jobs: the cancel lands
    # before the engine runs the job, which then finds its lease gone.
    server = start_server(
        {"MONGO_DBNAME": cancel_db.name, "MAX_WAIT_MS": 1500, "MAX_BATCH_SIZE": 3}
    )
    admin = server.api()
    job_id = submitted(admin)
    assert admin.post(f"/jobs/{job_id}/cancel").json()["status"] == "cancelled"
    # A later job ends in a later batch (3 rows a batch): the cancelled one's has run.
    later_id = submitted(admin)
    assert admin.get(f"/jobs/{later_id}?wait=60").json()["status"] == "succeeded"
    stored = cancel_db.jobs.find_one({"_id": ObjectId(job_id)})
    assert stored["status"] == "cancelled" and stored["progress"]["done"] == 0
    assert cancel_db.predictions.count_documents({"job": ObjectId(job_id)}) == 0


def test_the_route_is_in_the_openapi_document(queueing_server):
    document = queueing_server.api(None).get("/openapi.json").json()
    operation = document["paths"]["/v1/jobs/{_id}/cancel"]["post"]
    assert {"200", "403", "404", "409"} <= set(operation["responses"])
    assert "jobs:write" in operation["description"]
