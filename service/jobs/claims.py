"""The job queue in MongoDB: atomic claims with leases, and every job state change.

A job is either free (status "queued", no lease) or held by one runner through
a lease {worker, token, until}. A claim takes free jobs in one update filtered
on "queued and no lease", so two runners can never both hold a job, and counts
an attempt. An API process running jobs itself inserts them already held
(`new_lease`), which saves a claim per job. Every write that completes a job
filters on the lease token, so a runner that wakes up after its lease expired
and the job was claimed again cannot overwrite the newer attempt. This module
is the only writer of job status after insertion.
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


def changed(fields: dict, now: datetime) -> dict:
    """The update of a job whose state changes: new fields, and a stale ETag dropped
    (Eve computes the new one on read)."""
    return {"$set": {**fields, "_updated": now}, "$unset": {"_etag": ""}}


class JobQueue:
    """Claims and state transitions of jobs, for one worker identity."""

    def __init__(self, db: Database, worker_id: str, lease_seconds: float, max_attempts: int):
        self.db = db
        self.worker_id = worker_id
        self.lease = timedelta(seconds=lease_seconds)
        self.max_attempts = max_attempts

    def new_lease(self) -> dict:
        """A lease for jobs this runner is about to insert and run itself."""
        return {"worker": self.worker_id, "token": uuid.uuid4().hex, "until": utcnow() + self.lease}

    def claim(self, ids: list[ObjectId]) -> tuple[str, list[ObjectId]]:
        """Claim those of ids that are still free; return the token and the claimed ids."""
        if not ids:
            return "", []
        token = uuid.uuid4().hex
        now = utcnow()
        lease = {"worker": self.worker_id, "token": token, "until": now + self.lease}
        update = changed({"status": "running", "lease": lease, "started_at": now}, now)
        result = self.db.jobs.update_many(
            {"_id": {"$in": ids}, "status": "queued", "lease": None},
            {**update, "$inc": {"attempts": 1}},
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

    def queued(self, limit: int) -> list[ObjectId]:
        """Ids of the oldest free jobs (index: status, _created)."""
        cursor = (
            self.db.jobs.find({"status": "queued", "lease": None}, {"_id": 1})
            .sort("_created", 1)
            .limit(limit)
        )
        return [doc["_id"] for doc in cursor]

    def requeue_expired(self) -> int:
        """Free the jobs whose lease ran out, or fail them past MAX_ATTEMPTS."""
        now = utcnow()
        expired = self.db.jobs.find(
            {"status": {"$in": ["queued", "running"]}, "lease.until": {"$lt": now}},
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

    def extend(self, job_id: ObjectId, token: str, done: int, started_at: datetime) -> bool:
        """Record progress of a running job and extend its lease; False if the lease was lost."""
        now = utcnow()
        fields = {
            "status": "running",
            "started_at": started_at,
            "progress.done": done,
            "lease.until": now + self.lease,
        }
        return self._change_held(job_id, token, changed(fields, now)).matched_count == 1

    def succeed(
        self, jobs: list[tuple[ObjectId, str, int, datetime]], now: datetime
    ) -> set[ObjectId]:
        """Mark (id, token, instance count, started_at) jobs succeeded; return those still held.

        A job run in one batch goes from queued to succeeded directly.
        """
        if not jobs:
            return set()
        updates = [
            (
                {"_id": job_id, "lease.token": token},
                changed(
                    {
                        "status": "succeeded",
                        "progress": {"done": count, "total": count},
                        "started_at": started_at,
                        "finished_at": now,
                        "lease": None,
                        "error": None,
                    },
                    now,
                ),
            )
            for job_id, token, count, started_at in jobs
        ]
        if len(updates) == 1:
            result = self.db.jobs.update_one(*updates[0])
        else:
            operations = [UpdateOne(query, change) for query, change in updates]
            result = self.db.jobs.bulk_write(operations, ordered=False)
        if result.matched_count == len(jobs):
            return {job_id for job_id, *_ in jobs}
        # Some lease was lost: only report the jobs that really finished here.
        ids = [job_id for job_id, *_ in jobs]
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
        fields = {"status": "queued", "lease": None, "error": error}
        return self._change_held(job_id, token, changed(fields, utcnow())).modified_count

    def _finish_failed(self, job_id: ObjectId, token: str, error: str) -> int:
        now = utcnow()
        fields = {"status": "failed", "lease": None, "error": error, "finished_at": now}
        result = self._change_held(job_id, token, changed(fields, now))
        if result.modified_count:
            # A failed job keeps no partial predictions: all or nothing.
            self.db.predictions.delete_many({"job": job_id})
        return result.modified_count

    def _change_held(self, job_id: ObjectId, token: str, update: dict):
        """Apply an update to a job only while this token still holds it."""
        return self.db.jobs.update_one({"_id": job_id, "lease.token": token}, update)
