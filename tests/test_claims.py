"""Claims and leases of the job queue (unit tests: mongomock, no server needed)."""

from datetime import timedelta

import mongomock
import pytest

from service.jobs.claims import JobQueue, utcnow


@pytest.fixture
def mock_db():
    return mongomock.MongoClient(tz_aware=True).db


def queue_jobs(db, count: int) -> list:
    now = utcnow()
    jobs = [
        {"status": "queued", "attempts": 0, "_created": now, "progress": {"done": 0}}
        for _ in range(count)
    ]
    return db.jobs.insert_many(jobs).inserted_ids


def test_a_job_is_claimed_once(mock_db):
    ids = queue_jobs(mock_db, 3)
    first = JobQueue(mock_db, "w1", lease_seconds=30, max_attempts=3)
    second = JobQueue(mock_db, "w2", lease_seconds=30, max_attempts=3)
    token, claimed = first.claim(ids[:2])
    assert claimed == ids[:2]
    other_token, other_claimed = second.claim(ids)
    assert other_claimed == [ids[2]]
    job = mock_db.jobs.find_one({"_id": ids[0]})
    assert job["status"] == "running"
    assert job["attempts"] == 1
    assert job["lease"]["worker"] == "w1" and job["lease"]["token"] == token


def test_a_stale_worker_cannot_complete_a_reclaimed_job(mock_db):
    (job_id,) = queue_jobs(mock_db, 1)
    stale = JobQueue(mock_db, "stale", lease_seconds=30, max_attempts=3)
    fresh = JobQueue(mock_db, "fresh", lease_seconds=30, max_attempts=3)
    old_token, _ = stale.claim([job_id])
    mock_db.jobs.update_one(
        {"_id": job_id}, {"$set": {"lease.until": utcnow() - timedelta(seconds=1)}}
    )

    assert fresh.requeue_expired() == 1
    new_token, claimed = fresh.claim([job_id])
    assert claimed == [job_id]
    assert mock_db.jobs.find_one({"_id": job_id})["attempts"] == 2

    # The stale worker wakes up: none of its writes land.
    now = utcnow()
    assert stale.succeed([(job_id, old_token, 1, now)], now) == set()
    assert stale.extend(job_id, old_token, done=1, started_at=now) is False
    assert stale.fail_attempt(job_id, old_token, 1, "late") == ""
    assert mock_db.jobs.find_one({"_id": job_id})["status"] == "running"

    assert fresh.succeed([(job_id, new_token, 1, now)], now) == {job_id}
    job = mock_db.jobs.find_one({"_id": job_id})
    assert job["status"] == "succeeded" and job["lease"] is None


def test_attempts_run_out(mock_db):
    (job_id,) = queue_jobs(mock_db, 1)
    mock_db.predictions.insert_one({"job": job_id, "index": 0})
    queue = JobQueue(mock_db, "w", lease_seconds=30, max_attempts=2)
    token, _ = queue.claim([job_id])
    assert queue.fail_attempt(job_id, token, 1, "boom") == "queued"
    token, _ = queue.claim([job_id])
    assert queue.fail_attempt(job_id, token, 2, "boom") == "failed"
    job = mock_db.jobs.find_one({"_id": job_id})
    assert job["error"] == "failed after 2 attempts: boom"
    assert mock_db.predictions.count_documents({}) == 0  # no partial results kept


def test_expired_lease_past_max_attempts_fails_the_job(mock_db):
    (job_id,) = queue_jobs(mock_db, 1)
    queue = JobQueue(mock_db, "w", lease_seconds=30, max_attempts=1)
    queue.claim([job_id])
    mock_db.jobs.update_one(
        {"_id": job_id}, {"$set": {"lease.until": utcnow() - timedelta(seconds=1)}}
    )
    queue.requeue_expired()
    job = mock_db.jobs.find_one({"_id": job_id})
    assert job["status"] == "failed"
    assert "lease expired: worker w stopped answering" in job["error"]


def test_jobs_inserted_with_a_lease_are_nobody_elses(mock_db):
    held, free = queue_jobs(mock_db, 2)
    api = JobQueue(mock_db, "api", lease_seconds=30, max_attempts=3)
    lease = api.new_lease()
    mock_db.jobs.update_one({"_id": held}, {"$set": {"lease": lease, "attempts": 1}})
    worker = JobQueue(mock_db, "worker", lease_seconds=30, max_attempts=3)
    assert worker.queued(limit=10) == [free]
    assert worker.claim([held, free])[1] == [free]

    # The API process dies before running it: once the lease expires, it is free again.
    mock_db.jobs.update_one(
        {"_id": held}, {"$set": {"lease.until": utcnow() - timedelta(seconds=1)}}
    )
    assert worker.requeue_expired() == 1
    assert worker.queued(limit=10) == [held]
    assert worker.claim([held])[1] == [held]
    assert mock_db.jobs.find_one({"_id": held})["attempts"] == 2
