"""Waiting for jobs to finish: `?wait=` on POST and GET /v1/jobs.

Jobs this process runs wake their waiters at once, predictions in hand; jobs run
elsewhere (worker processes, another API process) are seen by polling MongoDB.
"""

import threading
import time
from dataclasses import dataclass, field

from bson import ObjectId
from pymongo.database import Database

from schemas.common import FINISHED_STATUSES

POLL_START_S = 0.02
POLL_MAX_S = 0.25
# Jobs leased to this process wake their waiters themselves; the database is
# asked only in case the lease was lost and another runner finished the job.
LOCAL_POLL_S = 1.0


@dataclass
class Waiter:
    """One awaited job: set when it finishes here, with the predictions written here."""

    event: threading.Event = field(default_factory=threading.Event)
    status: str | None = None
    predictions: list[dict] = field(default_factory=list)
    # The job's fields as written when it finished here; None if it finished elsewhere.
    fields: dict | None = None


class Completions:
    """The jobs some request in this process is waiting for."""

    def __init__(self):
        self._lock = threading.Lock()
        self._waiters: dict[ObjectId, Waiter] = {}

    @property
    def has_waiters(self) -> bool:
        return bool(self._waiters)

    def expect(self, ids: list[ObjectId]) -> None:
        """Register interest before the job can finish, so no completion is missed."""
        with self._lock:
            for job_id in ids:
                self._waiters.setdefault(job_id, Waiter())

    def release(self, ids: list[ObjectId]) -> None:
        """The request stopped waiting: forget these jobs."""
        with self._lock:
            for job_id in ids:
                self._waiters.pop(job_id, None)

    def add_prediction(self, document: dict) -> None:
        waiter = self._waiters.get(document["job"])
        if waiter is not None:
            waiter.predictions.append(document)

    def restart(self, job_id: ObjectId) -> None:
        """The job goes back to the queue: drop what its failed attempt wrote."""
        waiter = self._waiters.get(job_id)
        if waiter is not None:
            waiter.predictions.clear()

    def finish(self, job_id: ObjectId, status: str, fields: dict | None = None) -> None:
        waiter = self._waiters.get(job_id)
        if waiter is not None:
            waiter.status = status
            waiter.fields = fields
            waiter.event.set()

    def wait(
        self, db: Database, ids: list[ObjectId], timeout: float, local: bool = False
    ) -> dict[ObjectId, Waiter]:
        """Wait until every job finished or the timeout passed; return the finished ones.

        The caller must have called expect(ids) first. local: the jobs are leased
        to this process, which wakes the waiters itself.
        """
        deadline = time.monotonic() + timeout
        waiters = {job_id: self._waiters[job_id] for job_id in ids}
        poll = LOCAL_POLL_S if local else POLL_START_S
        next_poll = time.monotonic() + poll
        while True:
            open_ids = [job_id for job_id, waiter in waiters.items() if not waiter.event.is_set()]
            if not open_ids:
                break
            now = time.monotonic()
            if now >= deadline:
                break
            if now >= next_poll:
                # Finished in another process? Then the caller reads the predictions
                # from the database (a job run here has them all in its waiter by now).
                for job in db.jobs.find(
                    {"_id": {"$in": open_ids}, "status": {"$in": FINISHED_STATUSES}},
                    {"status": 1},
                ):
                    waiters[job["_id"]].status = job["status"]
                    waiters[job["_id"]].event.set()
                poll = max(poll, min(poll * 2, POLL_MAX_S))
                next_poll = time.monotonic() + poll
                continue
            waiters[open_ids[0]].event.wait(min(next_poll, deadline) - now)
        return {job_id: waiter for job_id, waiter in waiters.items() if waiter.event.is_set()}
