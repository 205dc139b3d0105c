"""Claims and leases of the job queue, against the session's real database server."""

import random
import threading
from datetime import timedelta

import pytest
from conftest import job_queue

from service.jobs.claims import utcnow
from service.jobs.engine import Job


@pytest.fixture
def db(unswept_db):
    return unswept_db


def queue_jobs(db, count: int) -> list:
    now = utcnow()
    jobs = [
        {"status": "queued", "attempts": 0, "tags": {}, "_created": now, "progress": {"done": 0}}
        for _ in range(count)
    ]
    return db.jobs.insert_many(jobs).inserted_ids


def ran(job_id, token: str, attempts: int, started_at) -> Job:
    """A one-instance job as the engine hands it to JobQueue.succeed once it ran."""
    return Job(job_id, token, {}, {}, count=1, attempts=attempts, started_at=started_at)


def claimed(job_id, token: str, attempts: int = 0) -> Job:
    """A one-instance job as the engine holds it between its claim and its first batch."""
    return Job(job_id, token, {}, {}, count=1, attempts=attempts, counted=False)


def expire_lease(db, job_id) -> None:
    db.jobs.update_one({"_id": job_id}, {"$set": {"lease.until": utcnow() - timedelta(seconds=1)}})


def test_a_job_is_claimed_once(db):
    ids = queue_jobs(db, 3)
    first = job_queue(db, "w1")
    second = job_queue(db, "w2")
    token, taken = first.claim(ids[:2])
    assert taken == ids[:2]
    other_token, other_claimed = second.claim(ids)
    assert other_claimed == [ids[2]]
    job = db.jobs.find_one({"_id": ids[0]})
    # Leased, but neither running nor counted as an attempt until its first batch starts.
    assert (job["status"], job["attempts"], job.get("started_at")) == ("queued", 0, None)
    assert job["lease"]["worker"] == "w1" and job["lease"]["token"] == token
    now = utcnow()
    first.start([claimed(ids[0], token)], now)
    job = db.jobs.find_one({"_id": ids[0]})
    assert (job["status"], job["attempts"], job["started_at"]) == ("running", 1, now)
    # Another runner's token starts nothing.
    second.start([claimed(ids[1], other_token)], now)
    assert db.jobs.find_one({"_id": ids[1]})["attempts"] == 0


def test_concurrent_claims_take_each_job_once(db):
    """Runners racing for the same jobs over their own connections: no job is claimed twice."""
    ids = queue_jobs(db, 60)
    runners = 6
    start = threading.Barrier(runners)
    results: dict[str, list] = {}

    def run(name: str) -> None:
        queue = job_queue(db, name)
        claimed = results.setdefault(name, [])
        order = list(ids)
        random.Random(name).shuffle(order)
        start.wait()
        # Small overlapping claims in each runner's own order: many races per job.
        for position in range(0, len(order), 3):
            claimed += queue.claim(order[position : position + 6])[1]

    threads = [threading.Thread(target=run, args=(f"w{i}",)) for i in range(runners)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    claimed_by = {}
    for name, claimed in results.items():
        for job_id in claimed:
            assert job_id not in claimed_by, f"{job_id} claimed by {claimed_by[job_id]} and {name}"
            claimed_by[job_id] = name
    assert sorted(claimed_by) == sorted(ids)
    for job in db.jobs.find():
        assert job["status"] == "queued" and job["attempts"] == 0
        assert job["lease"]["worker"] == claimed_by[job["_id"]]


def test_a_stale_worker_cannot_complete_a_reclaimed_job(db):
    (job_id,) = queue_jobs(db, 1)
    stale = job_queue(db, "stale")
    fresh = job_queue(db, "fresh")
    old_token, _ = stale.claim([job_id])
    stale.start([claimed(job_id, old_token)], utcnow())
    expire_lease(db, job_id)

    assert fresh.requeue_expired() == 1
    new_token, taken = fresh.claim([job_id])
    assert taken == [job_id]
    fresh.start([claimed(job_id, new_token, attempts=1)], utcnow())
    assert db.jobs.find_one({"_id": job_id})["attempts"] == 2

    # The stale worker wakes up: none of its writes land.
    now = utcnow()
    assert stale.succeed([ran(job_id, old_token, 1, now)], now) == set()
    assert stale.extend(job_id, old_token, done=1, started_at=now) is False
    assert stale.fail_attempt(job_id, old_token, 1, "late") == ""
    assert db.jobs.find_one({"_id": job_id})["status"] == "running"

    assert fresh.succeed([ran(job_id, new_token, 2, now)], now) == {job_id}
    job = db.jobs.find_one({"_id": job_id})
    assert job["status"] == "succeeded" and job["lease"] is None


def test_attempts_run_out(db):
    (job_id,) = queue_jobs(db, 1)
    db.predictions.insert_one({"job": job_id, "index": 0})
    queue = job_queue(db, "w", max_attempts=2)
    token, _ = queue.claim([job_id])
    assert queue.fail_attempt(job_id, token, 1, "boom") == "queued"
    token, _ = queue.claim([job_id])
    assert queue.fail_attempt(job_id, token, 2, "boom") == "failed"
    job = db.jobs.find_one({"_id": job_id})
    assert job["error"] == "failed after 2 attempts: boom"
    assert db.predictions.count_documents({}) == 0  # no partial results kept


def test_expired_lease_past_max_attempts_fails_the_job(db):
    (job_id,) = queue_jobs(db, 1)
    queue = job_queue(db, "w", max_attempts=1)
    token, _ = queue.claim([job_id])
    expire_lease(db, job_id)
    # Claimed but never started: its attempts are untouched, it is free again.
    assert queue.requeue_expired() == 1
    job = db.jobs.find_one({"_id": job_id})
    assert (job["status"], job["attempts"], job["lease"]) == ("queued", 0, None)
    token, _ = queue.claim([job_id])
    queue.start([claimed(job_id, token)], utcnow())
    expire_lease(db, job_id)
    queue.requeue_expired()
    job = db.jobs.find_one({"_id": job_id})
    assert job["status"] == "failed"
    assert "lease expired: worker w stopped answering" in job["error"]


def test_a_runner_claims_what_starts_in_one_batch_and_keeps_its_leases(db):
    now = utcnow()
    sizes = [100, 100, 100, 5]
    jobs = [
        {"status": "queued", "attempts": 0, "lease": None, "_created": now + timedelta(seconds=i)}
        | {"progress": {"done": 0, "total": size}}
        for i, size in enumerate(sizes)
    ]
    ids = db.jobs.insert_many(jobs).inserted_ids
    queue = job_queue(db, "w")
    assert queue.queued(256) == ids[:2]  # a third would not start in the first batch
    assert queue.queued(50) == ids[:1]  # the oldest alone, however large
    token, taken = queue.claim(ids[:2])
    before = db.jobs.find_one({"_id": ids[0]})["lease"]["until"]
    queue.renew([claimed(job_id, token) for job_id in taken] + [claimed(ids[2], "not-ours")])
    assert db.jobs.find_one({"_id": ids[0]})["lease"]["until"] >= before
    assert db.jobs.find_one({"_id": ids[2]})["lease"] is None  # renewing takes nothing


def test_jobs_inserted_with_a_lease_are_nobody_elses(db):
    held, free = queue_jobs(db, 2)
    api = job_queue(db, "api")
    lease = api.new_lease()
    db.jobs.update_one({"_id": held}, {"$set": {"lease": lease, "attempts": 1}})
    worker = job_queue(db, "worker")
    assert worker.queued(10) == [free]
    assert worker.claim([held, free])[1] == [free]

    # The API process dies before running it: once the lease expires, it is free again.
    expire_lease(db, held)
    assert worker.requeue_expired() == 1
    assert worker.queued(10) == [held]
    assert worker.claim([held])[1] == [held]
    assert db.jobs.find_one({"_id": held})["attempts"] == 1  # counted again when it starts
