"""Each instance of a job is predicted and stored once, whatever the workers do.

Real `run.py worker` processes on the session's database server: two racing for
the same jobs, and a worker frozen (SIGSTOP) past its lease that wakes up
(SIGCONT) after the job was finished, or failed, by another. Plus the sweep's
race with a lease being extended, reproduced in-process.
"""

import signal
import socket
import subprocess
import time
from collections import Counter
from datetime import timedelta

import pytest
from bson import ObjectId
from conftest import job_queue, wait_for
from pymongo.collection import Collection

from service.jobs.claims import utcnow
from service.jobs.engine import Job

SETOSA = [5.1, 3.5, 1.4, 0.2]
# Collection methods through which the sweep may write a job.
WRITES = ("update_one", "update_many", "find_one_and_update", "bulk_write", "replace_one")


def worker_name(process: subprocess.Popen) -> str:
    """The lease holder name of a worker process (service/jobs/dispatch.py worker_id)."""
    return f"{socket.gethostname()}:{process.pid}:worker"


def wait_until_ready(process: subprocess.Popen) -> None:
    wait_for(
        lambda: "waiting for jobs" in process.log_path.read_text() or process.poll() is not None,
        20,
        "a worker to start",
    )
    assert process.poll() is None, process.log_path.read_text()


def stop(process: subprocess.Popen) -> int:
    """SIGTERM a worker (resumed first if stopped) and return its exit code.

    A worker finishes the batch at hand before it exits: once it has, it writes no more.
    """
    process.send_signal(signal.SIGCONT)
    process.send_signal(signal.SIGTERM)
    return process.wait(timeout=20)


def job_of(db, job_id: ObjectId) -> dict:
    return db.jobs.find_one({"_id": job_id})


def prediction_keys(db, query: dict) -> Counter:
    """How many predictions each (job, index) has."""
    rows = db.predictions.find(query, {"job": 1, "index": 1})
    return Counter((row["job"], row["index"]) for row in rows)


def test_two_workers_claim_each_job_once(queue_api, queue_db, queue_demo_models, start_worker):
    # Small batches: each sweep claims a few of the oldest jobs, which both want.
    workers = [start_worker(max_batch_size=4), start_worker(max_batch_size=4)]
    for worker in workers:
        wait_until_ready(worker)

    response = queue_api.post("/jobs", json=[{"model": "iris", "inputs": [SETOSA]}] * 200)
    assert response.status_code == 201, response.text
    ids = [ObjectId(item["_id"]) for item in response.json()["_items"]]

    holders = set()

    def all_finished() -> bool:
        running = queue_db.jobs.find({"status": "running"}, {"lease.worker": 1})
        holders.update(job["lease"]["worker"] for job in running)
        return queue_db.jobs.count_documents({"status": {"$in": ["queued", "running"]}}) == 0

    wait_for(all_finished, 40, "the workers to run the 200 jobs")

    jobs = list(queue_db.jobs.find({"_id": {"$in": ids}}))
    assert len(jobs) == 200
    for job in jobs:
        assert job["status"] == "succeeded", job
        assert job["attempts"] == 1, job  # claimed once: nobody took it from its first holder
    keys = prediction_keys(queue_db, {})
    assert sum(keys.values()) == 200
    assert set(keys) == {(job_id, 0) for job_id in ids}
    assert set(keys.values()) == {1}
    # Both raced for the jobs (a held job shows its holder while it runs).
    assert holders == {worker_name(worker) for worker in workers}

    assert [stop(worker) for worker in workers] == [0, 0]


def freeze_mid_job(queue_api, queue_db, start_worker, count: int, **settings):
    """Queue one long job, let a worker with a 2 s lease run part of it, SIGSTOP the
    worker between two batches, and wait until its lease has expired.

    Frozen where its next write is a batch of predictions (all it stored so far is
    recorded as progress), so that once resumed it stores rows after the takeover.
    Returns (worker, job id).
    """
    created = queue_api.post("/jobs", json={"model": "iris", "inputs": [SETOSA] * count})
    assert created.status_code == 201, created.text
    job_id = ObjectId(created.json()["_id"])

    stale = start_worker(lease_seconds=2, max_batch_size=16, **settings)

    def progress() -> int:
        return job_of(queue_db, job_id)["progress"]["done"]

    done = 0
    for attempt in range(10):
        wait_for(lambda seen=done: progress() > seen, 30, "the first worker to make progress")
        stale.send_signal(signal.SIGSTOP)
        time.sleep(0.3)  # the requests it had sent are answered meanwhile
        done = progress()
        if queue_db.predictions.count_documents({"job": job_id}) == done or attempt == 9:
            break
        stale.send_signal(signal.SIGCONT)  # caught between its rows and its progress: again
    job = job_of(queue_db, job_id)
    assert job["status"] == "running" and 0 < done < count, job
    assert job["lease"]["worker"] == worker_name(stale)
    wait_for(
        lambda: job_of(queue_db, job_id)["lease"]["until"] < utcnow() - timedelta(seconds=0.2),
        10,
        "the frozen worker's lease to expire",
    )
    return stale, job_id


def test_a_frozen_worker_leaves_the_newer_attempts_predictions(
    queue_api, queue_db, queue_demo_models, start_worker
):
    count = 2000
    stale, job_id = freeze_mid_job(queue_api, queue_db, start_worker, count)
    stale_batches = set(queue_db.predictions.distinct("batch.id", {"job": job_id}))
    assert stale_batches

    # Another worker takes the job over once the lease expired, and finishes it.
    fresh = start_worker(max_batch_size=500)
    wait_for(lambda: job_of(queue_db, job_id)["status"] == "succeeded", 30, "the second worker")

    # The stale worker wakes up mid-batch; once it has exited, it wrote all it would.
    assert stop(stale) == 0

    job = job_of(queue_db, job_id)
    assert job["status"] == "succeeded", job
    assert job["attempts"] == 2
    assert job["progress"] == {"done": count, "total": count}
    assert job["lease"] is None and job["error"] is None
    keys = prediction_keys(queue_db, {"job": job_id})
    assert sorted(index for _, index in keys) == list(range(count)), "missing predictions"
    assert set(keys.values()) == {1}, "duplicate predictions"
    assert queue_db.predictions.count_documents({"job": job_id}) == count
    # The rows the first attempt stored were overwritten by the second attempt's.
    kept = set(queue_db.predictions.distinct("batch.id", {"job": job_id}))
    assert not kept & stale_batches, "predictions of the stale attempt are left"

    assert stop(fresh) == 0


def test_a_frozen_worker_leaves_nothing_of_a_failed_job(
    queue_api, queue_db, queue_demo_models, start_worker
):
    stale, job_id = freeze_mid_job(queue_api, queue_db, start_worker, 2000, max_attempts=1)
    assert queue_db.predictions.count_documents({"job": job_id}) > 0

    # Out of attempts: the other worker's sweep fails the job and drops its predictions.
    sweeper = start_worker(max_attempts=1)
    wait_for(lambda: job_of(queue_db, job_id)["status"] == "failed", 20, "the job to fail")
    wait_for(  # deleted right after the job's status is written
        lambda: queue_db.predictions.count_documents({"job": job_id}) == 0,
        5,
        "the failed job's predictions to be deleted",
    )

    # The stale worker wakes up mid-batch; whatever it stores, it takes back.
    assert stop(stale) == 0

    job = job_of(queue_db, job_id)
    assert job["status"] == "failed" and job["lease"] is None
    assert job["attempts"] == 1
    assert f"lease expired: worker {worker_name(stale)} stopped answering" in job["error"]
    assert queue_db.predictions.count_documents({"job": job_id}) == 0

    assert stop(sweeper) == 0


@pytest.mark.parametrize("max_attempts", [3, 1], ids=["requeue", "fail"])
def test_the_sweep_leaves_a_lease_extended_meanwhile(unswept_db, monkeypatch, max_attempts):
    """requeue_expired reads the expired jobs, then writes: a lease extended in
    between must stay with its holder (neither requeued nor failed)."""
    db = unswept_db
    (job_id,) = db.jobs.insert_many(
        [{"status": "queued", "attempts": 0, "_created": utcnow(), "progress": {"done": 0}}]
    ).inserted_ids
    db.predictions.insert_one({"job": job_id, "index": 0})
    holder = job_queue(db, "holder", max_attempts=max_attempts)
    sweeper = job_queue(db, "sweeper", max_attempts=max_attempts)
    token, _ = holder.claim([job_id])
    holder.start([Job(job_id, token, {}, {}, count=1, attempts=0, counted=False)], utcnow())
    db.jobs.update_one({"_id": job_id}, {"$set": {"lease.until": utcnow() - timedelta(seconds=1)}})

    # The holder extends its lease just before the sweep's first write to jobs.
    original = {name: getattr(Collection, name) for name in WRITES}
    extended = []

    def racing(name):
        def write(collection, *args, **kwargs):
            if collection.name == "jobs" and not extended:
                extended.append(True)
                original["update_one"](
                    collection,
                    {"_id": job_id, "lease.token": token},
                    {"$set": {"lease.until": utcnow() + timedelta(seconds=30)}},
                )
            return original[name](collection, *args, **kwargs)

        return write

    for name in WRITES:
        monkeypatch.setattr(Collection, name, racing(name))
    changed = sweeper.requeue_expired()
    monkeypatch.undo()

    assert extended, "requeue_expired wrote nothing to jobs: the race was not reproduced"
    assert changed == 0
    job = db.jobs.find_one({"_id": job_id})
    assert job["status"] == "running"
    assert job["lease"]["token"] == token and job["lease"]["worker"] == "holder"
    assert job["attempts"] == 1
    assert db.predictions.count_documents({"job": job_id}) == 1
