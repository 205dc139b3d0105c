"""The job queue in MongoDB: atomic claims with leases, and every job state change.

A claim sets status "running", a lease {worker, token, until} and counts an
attempt, in one update filtered on status "queued": two workers can never both
claim a job. Every write that completes a job filters on the claim token, so a
worker that wakes up after its lease expired and the job was claimed again
cannot overwrite the newer attempt. This module is the only writer of job status.
"""

import uuid
from datetime import UTC, datetime, timedelta

from bson import ObjectId
from pymongo import UpdateOne
from pymongo.database import Database


def utcnow() -> datetime:
    """Now, at the millisecond precision MongoDB stores, so it compares equal once stored."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


class JobQueue:
    """Claims and state transitions of jobs, for one worker identity."""

    def __init__(self, db: Database, worker_id: str, lease_seconds: float, max_attempts: int):
        self.db = db
        self.worker_id = worker_id
        self.lease = timedelta(seconds=lease_seconds)
        self.max_attempts = max_attempts

    def claim(self, ids: list[ObjectId]) -> tuple[str, list[ObjectId]]:
        """Claim those of ids that are still queued; return the token and the claimed ids."""
        if not ids:
            return "", []
        token = uuid.uuid4().hex
        now = utcnow()
        result = self.db.jobs.update_many(
            {"_id": {"$in": ids}, "status": "queued"},
            {
                "$set": {
                    "status": "running",
                    "lease": {"worker": self.worker_id, "token": token, "until": now + self.lease},
                    "started_at": now,
                    "_updated": now,
                },
                "$inc": {"attempts": 1},
                "$unset": {"_etag": ""},
            },
        )
        if result.modified_count == len(ids):
            return token, list(ids)
        if result.modified_count == 0:
            return token, []
        mine = self.db.jobs.find({"_id": {"$in": ids}, "lease.token": token}, {"_id": 1})
        return token, [doc["_id"] for doc in mine]

    def claimed_documents(self, token: str, ids: list[ObjectId]) -> list[dict]:
        """The full documents of jobs this token holds."""
        return list(self.db.jobs.find({"_id": {"$in": ids}, "lease.token": token}))

    def queued(self, limit: int, fresh_after_s: float = 0.0) -> list[ObjectId]:
        """Ids of the oldest queued jobs (index: status, _created).

        Jobs never tried and younger than fresh_after_s are left to the API
        process that accepted them, which is about to run them.
        """
        cutoff = utcnow() - timedelta(seconds=fresh_after_s)
        cursor = (
            self.db.jobs.find({"status": "queued"}, {"_id": 1, "attempts": 1, "_created": 1})
            .sort("_created", 1)
            .limit(limit * 2)
        )
        ids = [
            doc["_id"]
            for doc in cursor
            if doc.get("attempts", 0) > 0 or not fresh_after_s or doc["_created"] <= cutoff
        ]
        return ids[:limit]

    def requeue_expired(self) -> int:
        """Put jobs whose lease ran out back in the queue, or fail them past MAX_ATTEMPTS."""
        now = utcnow()
        expired = self.db.jobs.find(
            {"status": "running", "lease.until": {"$lt": now}},
            {"_id": 1, "attempts": 1, "lease": 1},
        ).limit(100)
        changed = 0
        for job in expired:
            message = f"lease expired: worker {job['lease']['worker']} stopped answering"
            if job.get("attempts", 0) >= self.max_attempts:
                changed += self._finish_failed(job["_id"], job["lease"]["token"], message)
            else:
                changed += self._requeue(job["_id"], job["lease"]["token"], message)
        return changed

    def extend(self, job_id: ObjectId, token: str, done: int) -> bool:
        """Record progress and extend the lease; False if the lease was lost."""
        now = utcnow()
        result = self.db.jobs.update_one(
            {"_id": job_id, "lease.token": token},
            {
                "$set": {"progress.done": done, "lease.until": now + self.lease, "_updated": now},
                "$unset": {"_etag": ""},
            },
        )
        return result.matched_count == 1

    def succeed(self, jobs: list[tuple[ObjectId, str, int]]) -> set[ObjectId]:
        """Mark (id, token, instance count) jobs succeeded; return the ids still held."""
        if not jobs:
            return set()
        now = utcnow()
        updates = [
            (
                {"_id": job_id, "lease.token": token},
                {
                    "$set": {
                        "status": "succeeded",
                        "progress": {"done": count, "total": count},
                        "finished_at": now,
                        "lease": None,
                        "error": None,
                        "_updated": now,
                    },
                    "$unset": {"_etag": ""},
                },
            )
            for job_id, token, count in jobs
        ]
        if len(updates) == 1:
            result = self.db.jobs.update_one(*updates[0])
        else:
            operations = [UpdateOne(query, change) for query, change in updates]
            result = self.db.jobs.bulk_write(operations, ordered=False)
        if result.matched_count == len(jobs):
            return {job_id for job_id, _, _ in jobs}
        # Some lease was lost: only report the jobs that really finished here.
        ids = [job_id for job_id, _, _ in jobs]
        finished = self.db.jobs.find(
            {"_id": {"$in": ids}, "status": "succeeded", "finished_at": now}, {"_id": 1}
        )
        return {doc["_id"] for doc in finished}

    def fail_attempt(self, job_id: ObjectId, token: str, attempts: int, error: str) -> str:
        """After a failed attempt: requeue, or fail for good past MAX_ATTEMPTS.

        Returns the job's new status ("queued" or "failed"), or "" if the lease was lost.
        """
        if attempts >= self.max_attempts:
            message = f"failed after {attempts} attempts: {error}"
            return "failed" if self._finish_failed(job_id, token, message) else ""
        return "queued" if self._requeue(job_id, token, error) else ""

    def _requeue(self, job_id: ObjectId, token: str, error: str) -> int:
        now = utcnow()
        result = self.db.jobs.update_one(
            {"_id": job_id, "lease.token": token},
            {
                "$set": {"status": "queued", "lease": None, "error": error, "_updated": now},
                "$unset": {"_etag": ""},
            },
        )
        return result.modified_count

    def _finish_failed(self, job_id: ObjectId, token: str, error: str) -> int:
        now = utcnow()
        result = self.db.jobs.update_one(
            {"_id": job_id, "lease.token": token},
            {
                "$set": {
                    "status": "failed",
                    "lease": None,
                    "error": error,
                    "finished_at": now,
                    "_updated": now,
                },
                "$unset": {"_etag": ""},
            },
        )
        if result.modified_count:
            # A failed job keeps no partial predictions: all or nothing.
            self.db.predictions.delete_many({"job": job_id})
        return result.modified_count
