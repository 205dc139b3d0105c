"""Job events: the one event system for a job's life, in each process that changes jobs.

Raised by service/jobs/claims.py wherever a job's state changes that way (success,
failure, failure once its last lease expired, cancellation, deletion), in the API
process and in each worker alike. Two kinds of listeners hear them:
- Sibyl's own (`?wait=` waiters today; metrics and webhooks tomorrow) subscribe with
  `on_ended` / `on_requeued` and get the event: the fields as written;
- developers' lifecycle hooks, registered in hooks/job_events.py with
  `events.on_job_succeeded += hook` (or `on_job_failed`, `on_job_cancelled`), get the
  job's document as stored and Sibyl's store: `hook(job, store)`.

Every listener is isolated: one that raises is logged with the job's id and counted
(`sibyl_hook_errors_total{hook=...}`); the others, the `?wait=` answer and the engine
go on. Sibyl's listeners run first, so a slow hook never delays a waiting request.

The guarantee for developers' hooks: at least once, after the job's end is stored,
with the document as read back then. The write that ends a job marks it
(`hooks_pending_since`) when a hook listens to that end; delivery clears the mark.
Were the process to die in between, a runner's sweep (service/jobs/dispatch.py)
delivers again the ends still marked after REDELIVER_AFTER_S. A hook may therefore
see a job twice: make it idempotent (an `$addToSet`, an upsert by job id). With no
hook registered none of this happens: no mark, no read, no sweep query.
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from bson import ObjectId
from pymongo.errors import PyMongoError

from service.metrics import HOOK_ERRORS

log = logging.getLogger(__name__)

# The field of an ended job whose hooks are not delivered yet, and when that was set.
PENDING = "hooks_pending_since"
# How long an end may stay undelivered before a sweep delivers it again: longer than
# any delivery right after the write takes.
REDELIVER_AFTER_S = 30.0
# The ends a developer's hook may listen to: those with a stored document.
HOOKED_STATUSES = ("succeeded", "failed", "cancelled")


@dataclass(frozen=True)
class JobEnded:
    """A job reached an end: "succeeded", "failed", "cancelled" or "deleted".

    fields: what the job's document became, as written by the change that
    ended it (empty for a deletion).
    """

    job_id: ObjectId
    status: str
    fields: dict = field(default_factory=dict)


class Hooks(list):
    """The hooks of one event, added Eve's way: `events.on_job_succeeded += hook`."""

    def __iadd__(self, hook):
        self.append(hook)
        return self


def call_isolated(listener: Callable, job_id: ObjectId, *args) -> None:
    """listener(*args); if it raises, log it with the job's id and count it, and go on."""
    try:
        listener(*args)
    except Exception:
        name = f"{getattr(listener, '__module__', '?')}.{getattr(listener, '__qualname__', '?')}"
        HOOK_ERRORS.labels(name).inc()
        log.exception("job hook %s raised on job %s; the other hooks still run", name, job_id)


class JobEvents:
    """Listeners to job events; they run in the thread that made the change.

    store: Sibyl's own store (service/store/access.py), through which developers'
    hooks get the documents as stored; needed only once a hook is registered.
    """

    def __init__(self, store=None):
        self.store = store
        self._ended: list[Callable[[JobEnded], None]] = []
        self._requeued: list[Callable[[ObjectId], None]] = []
        self.on_job_succeeded = Hooks()
        self.on_job_failed = Hooks()
        self.on_job_cancelled = Hooks()

    def on_ended(self, callback: Callable[[JobEnded], None]) -> None:
        self._ended.append(callback)

    def on_requeued(self, callback: Callable[[ObjectId], None]) -> None:
        self._requeued.append(callback)

    def hooks(self, status: str) -> list:
        """The developers' hooks on this end (none for "deleted")."""
        return getattr(self, f"on_job_{status}", []) if status in HOOKED_STATUSES else []

    def pending(self, status: str, now: datetime) -> dict:
        """The fields the write that ends a job with status adds: the mark that its hooks
        are yet to hear of it, if any listen."""
        return {PENDING: now} if self.hooks(status) else {}

    def ended(self, *events: JobEnded) -> None:
        """Jobs ended, their ends stored: tell Sibyl's listeners, then the hooks."""
        for event in events:
            for callback in self._ended:
                call_isolated(callback, event.job_id, event)
        hooked = [event.job_id for event in events if self.hooks(event.status)]
        if hooked:
            try:
                self._deliver({PENDING: {"$exists": True}, "_id": {"$in": hooked}})
            except PyMongoError as error:
                # The ends stay marked: a sweep delivers them; the engine goes on.
                log.warning("job hooks of %d jobs left for a sweep (%s)", len(hooked), error)

    def requeued(self, job_id: ObjectId) -> None:
        for callback in self._requeued:
            call_isolated(callback, job_id, job_id)

    def redeliver(self) -> int:
        """Deliver again the ends whose hooks have not heard of them after
        REDELIVER_AFTER_S (their process died in between); return how many.

        Each is taken by moving its mark forward first, so that two sweeps rarely
        deliver the same end twice; a sweep that dies leaves it for a later one."""
        if not (self.on_job_succeeded or self.on_job_failed or self.on_job_cancelled):
            return 0
        now = datetime.now(UTC)
        cutoff = now - timedelta(seconds=REDELIVER_AFTER_S)
        taken = []
        for job in self.store.jobs.find({PENDING: {"$lt": cutoff}}, {PENDING: 1}).limit(100):
            mark = {"_id": job["_id"], PENDING: job[PENDING]}
            if self.store.jobs.update_one(mark, {"$set": {PENDING: now}}).modified_count:
                taken.append(job["_id"])
        if taken:
            log.info("delivering the hooks of %d ended jobs again", len(taken))
            self._deliver({"_id": {"$in": taken}})
        return len(taken)

    def _deliver(self, query: dict) -> None:
        """Call the hooks of each job query matches with its document as stored, then
        clear its mark: one read and one write for a batch of ends."""
        delivered = []
        for job in self.store.jobs.find(query):
            for hook in self.hooks(job["status"]):
                call_isolated(hook, job["_id"], job, self.store)
            delivered.append(job["_id"])
        if delivered:
            self.store.jobs.update_many({"_id": {"$in": delivered}}, {"$unset": {PENDING: ""}})
