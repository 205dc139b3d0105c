"""Waiting for jobs to finish: what `?wait=` on POST and GET /v1/jobs holds on to.

Waiters subscribe to the job events of this process (service/jobs/events.py):
jobs run here wake them at once, with the job's fields as written and, when this
process stored every one of them, its predictions. Jobs run elsewhere (worker
processes, another API process) are seen by polling MongoDB.
"""

import threading
import time
from dataclasses import dataclass, field

from bson import ObjectId

from schemas.common import FINISHED_STATUSES
from service.jobs.events import JobEnded, JobEvents
from service.store.access import Store

POLL_START_S = 0.02
POLL_MAX_S = 0.25
# Jobs leased to this process wake their waiters themselves; the database is
# asked only in case the lease was lost and another runner finished the job.
LOCAL_POLL_S = 1.0


@dataclass
class Waiter:
    """One awaited job, and what this process saw of its end."""

    event: threading.Event = field(default_factory=threading.Event)
    status: str | None = None
    # The job's fields as written when it ended here; None if it ended elsewhere.
    fields: dict | None = None
    # Its predictions as this process stored them, or None once that is not the
    # whole truth (a retry, a row stored by another attempt, a lost lease): then
    # the answer reads them back.
    predictions: list[dict] | None = field(default_factory=list)
    # It went back to the queue: its end's fields are not the whole story (attempts,
    # started_at changed meanwhile), so the answer reads the job back.
    requeued: bool = False


class Completions:
    """The jobs some request in this process is waiting for."""

    def __init__(self, events: JobEvents):
        self._lock = threading.Lock()
        self._waiters: dict[ObjectId, Waiter] = {}
        # How many requests wait on each job: one request's release must not drop the
        # waiter another request shares.
        self._interest: dict[ObjectId, int] = {}
        self.events = events
        events.on_ended(self._ended)
        events.on_requeued(self._requeued)

    @property
    def has_waiters(self) -> bool:
        return bool(self._waiters)

    def expect(self, ids: list[ObjectId]) -> None:
        """Register interest before the job can finish, so no completion is missed."""
        with self._lock:
            for job_id in ids:
                self._waiters.setdefault(job_id, Waiter())
                self._interest[job_id] = self._interest.get(job_id, 0) + 1

    def release(self, ids: list[ObjectId]) -> None:
        """The request stopped waiting: forget these jobs once no request waits on them."""
        with self._lock:
            for job_id in ids:
                left = self._interest.get(job_id, 1) - 1
                if left > 0:
                    self._interest[job_id] = left
                else:
                    self._interest.pop(job_id, None)
                    self._waiters.pop(job_id, None)

    def add_predictions(self, job_id: ObjectId, documents: list[dict]) -> None:
        """Predictions of the job, exactly as this process just stored them."""
        waiter = self._waiters.get(job_id)
        if waiter is not None and waiter.predictions is not None:
            waiter.predictions.extend(documents)

    def forget_predictions(self, job_id: ObjectId) -> None:
        """What this process stored of the job is not all there is: read it back."""
        waiter = self._waiters.get(job_id)
        if waiter is not None:
            waiter.predictions = None

    def _requeued(self, job_id: ObjectId) -> None:
        waiter = self._waiters.get(job_id)
        if waiter is not None:
            waiter.predictions = None
            waiter.requeued = True

    def _ended(self, ended: JobEnded) -> None:
        waiter = self._waiters.get(ended.job_id)
        if waiter is not None:
            waiter.status = ended.status
            waiter.fields = None if waiter.requeued else ended.fields
            if waiter.predictions and waiter.predictions[0]["tags"] != ended.fields.get("tags"):
                waiter.predictions = None  # retagged while it ran: read them back
            waiter.event.set()

    def wait(
        self, store: Store, ids: list[ObjectId], timeout: float, local: bool = False
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
                # Finished in another process: the answer reads it back.
                for job in store.jobs.find(
                    {"_id": {"$in": open_ids}, "status": {"$in": FINISHED_STATUSES}},
                    {"status": 1},
                ):
                    waiter = waiters[job["_id"]]
                    waiter.status, waiter.fields, waiter.predictions = job["status"], None, None
                    waiter.event.set()
                poll = max(poll, min(poll * 2, POLL_MAX_S))
                next_poll = time.monotonic() + poll
                continue
            waiters[open_ids[0]].event.wait(min(next_poll, deadline) - now)
        return {job_id: waiter for job_id, waiter in waiters.items() if waiter.event.is_set()}
