"""Developers' job lifecycle hooks (hooks/job_events.py, service/jobs/events.py): heard
once per end with the document as stored, in-process and in worker processes,
isolated from each other and from the `?wait=` answer, delivered again after a crash.

The hooks are tests/recording_hooks.py, registered where hooks/job_events.py's
`register` is called: by the app factory, and by `run.py worker` (tests/hooked_worker.py).
"""

import re
import signal
import textwrap
from datetime import timedelta

import pytest
import recording_hooks
from bson import ObjectId
from conftest import ROOT, emptied, restore_models, upload_model, wait_for
from prometheus_client import REGISTRY

import hooks.job_events
from service.jobs.claims import utcnow
from service.jobs.events import PENDING, REDELIVER_AFTER_S

SETOSA = [5.1, 3.5, 1.4, 0.2]
POISON = [3e38, 3e38]  # the overflowing model's output is not finite
HOOKS_DB_NAME = "sibyl_hooks_test"


@pytest.fixture(scope="module")
def hooked_server(start_server):
    """An in-process app whose job hooks are recording_hooks', on a database of its own:
    the session's other apps, without those hooks, would sweep its jobs."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(hooks.job_events, "register", recording_hooks.register)
        return start_server({"MONGO_DBNAME": HOOKS_DB_NAME, "MAX_ATTEMPTS": 1})


@pytest.fixture
def hooks_db(database, model_snapshot):
    for db in emptied(database, HOOKS_DB_NAME):
        restore_models(db, model_snapshot)
        yield db


def errors_counted() -> float:
    labels = {"hook": "recording_hooks.explode"}
    return REGISTRY.get_sample_value("sibyl_hook_errors_total", labels) or 0.0


def heard(db, ids: list[ObjectId]) -> list[dict]:
    """The hook calls on these jobs, once every one was delivered (its mark cleared)."""
    wait_for(
        lambda: (
            db.jobs.count_documents({"_id": {"$in": ids}, PENDING: {"$exists": False}}) == len(ids)
        ),
        60,
        "the hooks to hear of every job",
    )
    return list(db.hook_calls.find({"job": {"$in": ids}}))


def assert_heard_as_stored(db, calls: list[dict]) -> None:
    for call in calls:
        document = call["document"]
        assert document.pop(PENDING)  # marked until delivered, cleared since
        assert document == db.jobs.find_one({"_id": call["job"]})


def test_each_succeeded_job_is_heard_once_with_its_stored_document(hooked_server, hooks_db):
    api = hooked_server.api()
    experiment = {"experiment": "e1"}
    # Held and written complete (?wait=), and queued then succeeded: both writes.
    job = {"model": "iris", "inputs": [SETOSA], "tags": experiment}
    waited = api.post("/jobs?wait=30", json=job)
    queued = api.post("/jobs", json={**job, "inputs": [SETOSA] * 2})
    assert api.get(f"/jobs/{queued.json()['_id']}?wait=30").json()["status"] == "succeeded"
    ids = [ObjectId(waited.json()["_id"]), ObjectId(queued.json()["_id"])]

    calls = heard(hooks_db, ids)
    assert sorted(call["job"] for call in calls) == sorted(ids)  # once each
    assert {call["status"] for call in calls} == {"succeeded"}
    assert_heard_as_stored(hooks_db, calls)
    assert sorted(hooks_db.experiments.find_one({"name": "e1"})["succeeded"]) == sorted(ids)
    assert PENDING not in api.get(f"/jobs/{ids[0]}").json()


def test_a_hook_that_raises_is_counted_and_stops_neither_the_others_nor_the_wait(
    hooked_server, hooks_db
):
    api = hooked_server.api()
    before = errors_counted()
    answer = api.post("/jobs?wait=30", json={"model": "iris", "inputs": [SETOSA] * 3}).json()
    assert answer["status"] == "succeeded"
    assert [p["label"] for p in answer["predictions"]] == ["setosa"] * 3
    # recording_hooks.explode runs first; record, after it, still heard the job.
    assert len(heard(hooks_db, [ObjectId(answer["_id"])])) == 1
    assert errors_counted() == before + 1


def test_a_failed_job_is_heard_by_the_failure_hooks(hooked_server, hooks_db, model_files):
    api = hooked_server.api()
    assert upload_model(api, "fragile", model_files["overflowing"]).status_code == 201
    answer = api.post("/jobs?wait=30", json={"model": "fragile", "inputs": [POISON]}).json()
    job_id = ObjectId(answer["_id"])
    assert api.get(f"/jobs/{job_id}?wait=30").json()["status"] == "failed"
    (call,) = heard(hooks_db, [job_id])
    assert call["status"] == "failed"
    assert "is not finite" in call["document"]["error"]
    assert_heard_as_stored(hooks_db, [call])


def test_a_cancelled_job_is_heard_by_the_cancellation_hooks(hooked_server, hooks_db):
    api = hooked_server.api()
    ran = api.post("/jobs?wait=30", json={"model": "iris", "inputs": [SETOSA]}).json()
    # The same job, queued and held by a runner elsewhere: it stays put until cancelled.
    lease = {"worker": "elsewhere", "token": "t", "until": utcnow() + timedelta(minutes=10)}
    job = hooks_db.jobs.find_one({"_id": ObjectId(ran["_id"])})
    job.update(_id=ObjectId(), status="queued", lease=lease, finished_at=None)
    hooks_db.jobs.insert_one(job)
    assert api.post(f"/jobs/{job['_id']}/cancel").json()["status"] == "cancelled"
    (call,) = heard(hooks_db, [job["_id"]])
    assert call["status"] == "cancelled"
    assert_heard_as_stored(hooks_db, [call])


def test_an_end_left_undelivered_is_delivered_again_by_a_sweep(hooked_server, hooks_db):
    """A process died between storing a job's end and its hooks: the mark stayed."""
    api = hooked_server.api()
    # A job, so that the app's dispatcher (which sweeps) runs.
    api.post("/jobs?wait=30", json={"model": "iris", "inputs": [SETOSA]})
    now = utcnow()
    ended = {"status": "succeeded", "tags": {"experiment": "e2"}, "finished_at": now}
    stale, recent = hooks_db.jobs.insert_many(
        [
            {**ended, PENDING: now - timedelta(seconds=REDELIVER_AFTER_S + 5)},
            {**ended, PENDING: now},  # its process may still be delivering it
        ]
    ).inserted_ids
    (call,) = heard(hooks_db, [stale])
    assert call["document"]["tags"] == {"experiment": "e2"}
    assert hooks_db.experiments.find_one({"name": "e2"})["succeeded"] == [stale]
    assert hooks_db.hook_calls.count_documents({"job": recent}) == 0
    assert hooks_db.jobs.find_one({"_id": recent})[PENDING]


def test_a_worker_process_delivers_the_hooks(
    queue_api, queue_db, queue_demo_models, model_files, start_worker
):
    assert upload_model(queue_api, "fragile", model_files["overflowing"]).status_code == 201
    good = queue_api.post(
        "/jobs", json={"model": "iris", "inputs": [SETOSA], "tags": {"experiment": "w"}}
    ).json()
    bad = queue_api.post("/jobs", json={"model": "fragile", "inputs": [POISON]}).json()
    worker = start_worker(script=str(ROOT / "tests" / "hooked_worker.py"), max_attempts=1)
    states = [queue_api.get(f"/jobs/{job['_id']}?wait=60").json()["status"] for job in (good, bad)]
    assert states == ["succeeded", "failed"]

    ids = [ObjectId(good["_id"]), ObjectId(bad["_id"])]
    calls = sorted(heard(queue_db, ids), key=lambda call: ids.index(call["job"]))
    assert [(call["job"], call["status"]) for call in calls] == list(
        zip(ids, ["succeeded", "failed"], strict=True)
    )
    assert {call["pid"] for call in calls} == {worker.pid}  # heard in the worker
    assert_heard_as_stored(queue_db, calls)
    assert queue_db.experiments.find_one({"name": "w"})["succeeded"] == [ids[0]]
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    log = worker.log_path.read_text()
    assert f"job hook recording_hooks.explode raised on job {ids[0]}" in log


def test_without_hooks_a_job_ends_unmarked(api, db, demo_models):
    """Off the hot path: no hook listens in the default app, so no end is marked (nor
    read back, nor swept for)."""
    answer = api.post("/jobs?wait=30", json={"model": "iris", "inputs": [SETOSA]}).json()
    queued = api.post("/jobs", json={"model": "iris", "inputs": [SETOSA]}).json()
    assert api.get(f"/jobs/{queued['_id']}?wait=30").json()["status"] == "succeeded"
    assert answer["status"] == "succeeded"
    assert db.jobs.count_documents({PENDING: {"$exists": True}}) == 0


def test_the_guides_recipe_is_what_these_tests_run():
    """docs/EXTENDING.md's code blocks of "React to a job's life" are in
    tests/recording_hooks.py word for word (a function, or lines of register)."""
    guide = (ROOT / "docs" / "EXTENDING.md").read_text()
    section = guide.split("## React to a job's life", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    source = (ROOT / "tests" / "recording_hooks.py").read_text()
    assert len(blocks) == 2
    for block in blocks:
        code = block.split("\n", 1)[1]  # below its "# hooks/job_events.py" line
        assert code in source or textwrap.indent(code, "    ") in source, code
