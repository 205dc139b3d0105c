"""The job service without HTTP, job events, owners on predictions, and the import graph."""

import subprocess
import sys
import threading
from datetime import timedelta

import pytest
from bson import ObjectId
from conftest import ROOT
from pymongo.errors import AutoReconnect

from service.errors import Rejected
from service.jobs.claims import JobQueue, utcnow
from service.store.access import ANONYMOUS, SYSTEM, Identity, Store

SETOSA = [5.1, 3.5, 1.4, 0.2]
VIRGINICA = [6.3, 3.3, 6.0, 2.5]


def test_a_job_submitted_without_http_gets_its_predictions(live_server, db, demo_models):
    services = live_server.app.extensions["sibyl"]
    documents = services.jobs.submit(
        [{"model": "iris", "inputs": [SETOSA, VIRGINICA], "tags": {"via": "service"}}],
        ANONYMOUS,
        watch=True,
    )
    job_id = documents[0]["_id"]
    finished = services.jobs.await_finished(
        [job_id], 30, ANONYMOUS, submitted={job_id: documents[0]}
    )
    answer = finished[job_id]
    assert answer["status"] == "succeeded"
    assert [p["label"] for p in answer["predictions"]] == ["setosa", "virginica"]
    stored = list(db.predictions.find({"job": job_id}).sort("index", 1))
    assert [p["_id"] for p in stored] == [p["_id"] for p in answer["predictions"]]
    assert all(p["tags"] == {"via": "service"} for p in stored)


def test_the_service_refuses_a_bad_submission_whole(live_server, db, demo_models):
    services = live_server.app.extensions["sibyl"]
    with pytest.raises(Rejected) as refused:
        services.jobs.submit(
            [{"model": "iris", "inputs": [SETOSA]}, {"model": "tulip", "inputs": [SETOSA]}],
            ANONYMOUS,
        )
    assert refused.value.issues == [(1, "model", "no ready model 'tulip'; see GET /v1/models")]
    assert db.jobs.count_documents({}) == 0


def test_a_jobs_owner_is_carried_onto_its_predictions(live_server, db, demo_models):
    services = live_server.app.extensions["sibyl"]
    alice = Identity(owner="alice", sees_all=False)
    (document,) = services.jobs.submit([{"model": "iris", "inputs": [SETOSA] * 3}], alice)
    assert services.jobs.wait([document["_id"]], 30, alice)
    assert db.jobs.find_one({"_id": document["_id"]})["owner"] == "alice"
    owners = {p["owner"] for p in db.predictions.find({"job": document["_id"]})}
    assert owners == {"alice"}


def test_an_identity_sees_only_its_own_jobs(db):
    store = Store(db, SYSTEM)
    db.jobs.insert_many([{"owner": "alice", "n": 1}, {"owner": "bob", "n": 2}])
    alice = store.acting_as(Identity(owner="alice", sees_all=False))
    assert [job["n"] for job in alice.jobs.find({})] == [1]
    assert alice.jobs.find_one({"n": 2}) is None
    assert alice.jobs.update_many({}, {"$set": {"seen": True}}).modified_count == 1
    assert alice.jobs.delete_many({"n": 2}).deleted_count == 0
    alice.jobs.insert_one({"n": 3, "owner": "bob"})  # a claimed owner is overwritten
    assert db.jobs.find_one({"n": 3})["owner"] == "alice"
    assert len(list(store.jobs.find({}))) == 3  # Sibyl's own processes see every job


def test_a_job_failed_by_an_expired_lease_reaches_its_waiters(
    queueing_server, queue_db, queue_demo_models
):
    # The queueing app's database: no dispatcher sweeps it, so only this sweeper can
    # end the job (another app's sweep would requeue it first, in its own process).
    db = queue_db
    services = queueing_server.app.extensions["sibyl"]
    (document,) = services.jobs.submit([{"model": "iris", "inputs": [SETOSA]}], ANONYMOUS)
    ended = []
    services.events.on_ended(ended.append)
    # A runner took it and vanished: its lease expired.
    lease = {"worker": "gone", "token": "t", "until": utcnow() - timedelta(seconds=1)}
    db.jobs.update_one({"_id": document["_id"]}, {"$set": {"lease": lease, "attempts": 1}})
    JobQueue(services.store, "sweeper", 30, 1, services.events).requeue_expired()
    assert [(event.job_id, event.status) for event in ended] == [(document["_id"], "failed")]
    assert db.jobs.find_one({"_id": document["_id"]})["status"] == "failed"


def test_replaced_tags_reach_the_predictions(api, db, demo_models):
    created = api.post("/jobs?wait=30", json={"model": "iris", "inputs": [SETOSA] * 2}).json()
    url = f"/jobs/{created['_id']}"
    job = api.get(url).json()
    response = api.patch(url, json={"tags": {"run": "b"}}, headers={"If-Match": job["_etag"]})
    assert response.status_code == 200, response.text
    assert api.get(url).json()["tags"] == {"run": "b"}
    predictions = api.get(f'/predictions?where={{"job": "{created["_id"]}"}}').json()["_items"]
    assert [p["tags"] for p in predictions] == [{"run": "b"}, {"run": "b"}]


def test_the_post_answer_shows_the_status(queue_api, queue_demo_models):
    created = queue_api.post("/jobs", json={"model": "iris", "inputs": [SETOSA]})
    assert created.status_code == 201
    body = created.json()
    assert body["status"] == "queued"
    assert body["model_ref"]["name"] == "iris"
    assert "inputs" not in body
    assert queue_api.get(f"/jobs/{body['_id']}").json()["_etag"] == body["_etag"]


def test_an_item_fetched_with_wait_has_no_next_link(api, demo_models):
    created = api.post("/jobs?wait=30", json={"model": "iris", "inputs": [SETOSA]}).json()
    job = api.get(f"/jobs/{created['_id']}?wait=10").json()
    assert set(job["_links"]) <= {"self", "parent", "collection"}


@pytest.mark.parametrize(
    "module",
    [
        "service.registry.runner_child",  # the model runner, before it loads a model
        "service.registry.runner",  # what starts and calls runners
        "service.jobs.dispatch",  # the worker entry point (run.py worker)
        "service.store.access",  # the data layer
        "service",
        "hooks.job_events",  # the developers' job hooks, which run.py worker imports
    ],
)
def test_light_modules_import_neither_eve_nor_hooks_nor_tensorflow(module):
    probe = (
        f"import sys, {module}; "
        "print(' '.join(m for m in ('eve', 'hooks', 'tensorflow', 'flask') if m in sys.modules))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert loaded == (["hooks"] if module.startswith("hooks.") else [])


def test_a_waited_answer_after_a_retry_equals_the_stored_predictions(
    queueing_server, queue_db, queue_demo_models
):
    from service.jobs.dispatch import Runner

    services = queueing_server.app.extensions["sibyl"]
    (document,) = services.jobs.submit(
        [{"model": "iris", "inputs": [SETOSA, VIRGINICA]}], ANONYMOUS, watch=True
    )
    # Attempt 1 stored instance 0 before its runner vanished; the job was requeued.
    queue_db.jobs.update_one({"_id": document["_id"]}, {"$set": {"attempts": 1}})
    earlier = {"job": document["_id"], "index": 0, "output": [1.0, 0.0, 0.0], "label": "stale"}
    queue_db.predictions.insert_one({**earlier, "score": 1.0, "attempt": 1, "batch": {}})
    runner = Runner(services.store, services.config, services.completions, "test")
    thread = threading.Thread(target=runner.sweep, args=(runner.engine.run,))
    thread.start()
    answer = services.jobs.await_finished(
        [document["_id"]], 30, ANONYMOUS, submitted={document["_id"]: document}
    )[document["_id"]]
    thread.join()
    runner.engine.stop()
    stored = list(queue_db.predictions.find({"job": document["_id"]}).sort("index", 1))
    fields = ["_id", "index", "output", "label", "score"]
    assert answer["predictions"] == [{f: p[f] for f in fields} for p in stored]
    assert [p["label"] for p in stored] == ["setosa", "virginica"]  # the newer attempt's rows
    assert [p["attempt"] for p in stored] == [2, 2]


def job_changes(db, during) -> list[dict]:
    """The change events of jobs while during() runs: what was written, in order."""
    with db.jobs.watch(max_await_time_ms=100) as stream:
        during()
        changes = []
        while (change := stream.try_next()) is not None:
            changes.append(change)
    return changes


def test_a_waited_job_is_written_once_complete(live_server, db, demo_models):
    services = live_server.app.extensions["sibyl"]
    answers = {}

    def submit():
        answers["result"] = services.jobs.submit_and_wait(
            [{"model": "iris", "inputs": [SETOSA, VIRGINICA], "tags": {"run": 1}}], ANONYMOUS, 30
        )

    changes = job_changes(db, submit)
    (document,), finished = answers["result"]
    # One insert of the finished job: never stored queued, never updated.
    assert [change["operationType"] for change in changes] == ["insert"]
    written = changes[0]["fullDocument"]
    assert written["_id"] == document["_id"]
    assert written["status"] == "succeeded" and written["lease"] is None
    assert written["progress"] == {"done": 2, "total": 2}
    answer = finished[document["_id"]]
    assert [p["label"] for p in answer["predictions"]] == ["setosa", "virginica"]
    stored = list(db.predictions.find({"job": document["_id"]}).sort("index", 1))
    assert [p["_id"] for p in stored] == [p["_id"] for p in answer["predictions"]]
    assert all(p["tags"] == {"run": 1} for p in stored)


class IdleRunner:
    """A dispatcher that accepts jobs and never runs them."""

    def __init__(self, store):
        self.queue = JobQueue(store, "idle-runner", 30, 3)
        self.jobs = []

    def submit(self, jobs):
        self.jobs.extend(jobs)


def test_a_held_job_not_taken_in_time_is_stored_queued_before_the_answer(
    live_server, db, demo_models, monkeypatch
):
    services = live_server.app.extensions["sibyl"]
    runner = IdleRunner(services.store)
    monkeypatch.setattr(services.jobs, "_dispatcher", lambda: runner)
    (document,), finished = services.jobs.submit_and_wait(
        [{"model": "iris", "inputs": [SETOSA]}], ANONYMOUS, 0.4
    )
    assert finished == {}
    stored = db.jobs.find_one({"_id": document["_id"]})
    assert stored["status"] == "queued"
    assert stored["lease"]["worker"] == "idle-runner"  # still this process's to run
    (job,) = runner.jobs
    assert job.held.stored.is_set() and job.held.error is None


def test_jobs_split_across_batches_are_stored_and_finish(start_server, db, demo_models):
    """The second job's instances straddle two model calls: it is written as an
    ordinary job before its first batch, the first job once, complete."""
    api = start_server({"MAX_BATCH_SIZE": 10}).api()
    bodies = [
        {"model": "iris", "inputs": [SETOSA] * 6},
        {"model": "iris", "inputs": [VIRGINICA] * 8},
    ]
    answer = api.post("/jobs?wait=30", json=bodies)
    assert answer.status_code == 201, answer.text
    items = answer.json()["_items"]
    assert [item["status"] for item in items] == ["succeeded", "succeeded"]
    assert [len(item["predictions"]) for item in items] == [6, 8]
    for item, label in zip(items, ["setosa", "virginica"], strict=True):
        stored = list(db.predictions.find({"job": ObjectId(item["_id"])}).sort("index", 1))
        assert [p["index"] for p in stored] == list(range(len(item["predictions"])))
        assert {p["label"] for p in stored} == {label}
        assert db.jobs.find_one({"_id": ObjectId(item["_id"])})["status"] == "succeeded"


def test_a_held_jobs_failed_write_is_a_503_and_stores_nothing(
    live_server, db, demo_models, monkeypatch
):
    services = live_server.app.extensions["sibyl"]
    assert services.dispatcher.queue.store is services.store  # what the patch reaches

    def database_gone(write):
        raise AutoReconnect("connection closed")

    monkeypatch.setattr(services.store, "in_transaction", database_gone)
    answer = live_server.api("client").post(
        "/jobs?wait=30", json={"model": "iris", "inputs": [SETOSA]}
    )
    assert answer.status_code == 503, answer.text
    assert "database unavailable" in answer.json()["_error"]["message"]
    assert db.jobs.count_documents({}) == 0
    assert db.predictions.count_documents({}) == 0
