"""The job queue in MongoDB: every job state change, claims and leases.

A job is either free (status "queued", no lease) or held by one runner through
a lease {worker, token, until}. A claim takes free jobs in one update filtered
on "queued and no lease", so two runners can never both hold a job, and counts
an attempt. An API process running jobs itself inserts them already held
(`new_lease`), which saves a claim per job. Every write that changes a held job
filters on the lease token, so a runner that wakes up after its lease expired
and the job was claimed again cannot overwrite the newer attempt.

This module writes every field of a job's state: a new job's document
(`new_job`), claims, progress, success, failure, requeueing, deletion; and it
raises the job events (service/jobs/events.py) where a job ends, once the end is
stored (marked for redelivery, in the same write, when a developer's hook listens).
"""

import copy
import logging
import threading
import uuid
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

from bson import ObjectId
from pymongo.errors import PyMongoError

from schemas.common import ACTIVE_STATUSES
from service.jobs.events import JobEnded, JobEvents
from service.jobs.held import Held
from service.metrics import JOBS, LEASE_EXPIRIES, PREDICTIONS
from service.store.access import Store
from service.store.packed import pack

log = logging.getLogger(__name__)


def utcnow() -> datetime:
    """Now, at the millisecond precision MongoDB stores, so it compares equal once stored."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def changed(fields: dict, now: datetime) -> dict:
    """The update of a job whose state changes: new fields, and a stale ETag dropped
    (Eve computes the new one on read)."""
    return {"$set": {**fields, "_updated": now}, "$unset": {"_etag": ""}}


def client_fields(submitted: dict, schema: dict) -> dict:
    """What a client may set of a document: the fields of its schema that are not
    read-only (those are the server's), the schema's defaults for those it left out.

    A field added to a schema is stored without a change to the code that stores it."""
    fields = {}
    for name, rule in schema.items():
        if rule.get("readonly"):
            continue
        if name in submitted:
            fields[name] = submitted[name]
        elif "default" in rule:
            fields[name] = copy.deepcopy(rule["default"])
    return fields


def new_job(
    submitted: dict,
    schema: dict,
    model: dict,
    count: int,
    lease: dict | None,
    now: datetime,
    request_id: str | None = None,
) -> dict:
    """A new job's document: the fields the client may set (schemas/jobs.py), and the
    state of a queued job.

    With a lease, the job is stored already held by the runner that will run it;
    request_id is the id of the request that submitted it (None without one).
    """
    return {
        **client_fields(submitted, schema),
        "inputs": pack(submitted["inputs"]),
        "request_id": request_id,
        "model_ref": {"_id": model["_id"], "name": model["name"], "version": model["version"]},
        "status": "queued",
        "attempts": 1 if lease else 0,
        "lease": lease,
        "error": None,
        "progress": {"done": 0, "total": count},
        "queued_at": now,
        "started_at": None,
        "finished_at": None,
        "_created": now,
        "_updated": now,
    }


def count_succeeded(jobs: list) -> None:
    """Count jobs (the engine's) whose success was written, before anyone is told."""
    for job in jobs:
        JOBS.labels(job.model.get("name", ""), "succeeded").inc()


def leased_by(job_id: ObjectId, token: str, condition: dict | None = None) -> dict:
    """The query of a job while this lease token still holds it (and condition holds)."""
    return {"_id": job_id, "lease.token": token, **(condition or {})}


def succeeded_fields(count: int, attempts: int, started_at: datetime, now: datetime) -> dict:
    """What a job's document says once it succeeded."""
    return {
        "status": "succeeded",
        "attempts": attempts,
        "progress": {"done": count, "total": count},
        "started_at": started_at,
        "finished_at": now,
        "lease": None,
        "error": None,
        "_updated": now,
    }


class JobQueue:
    """Claims and state changes of jobs, for one runner identity."""

    def __init__(
        self,
        store: Store,
        worker_id: str,
        lease_seconds: float,
        max_attempts: int,
        events: JobEvents | None = None,
    ):
        self.store = store
        self.worker_id = worker_id
        self.lease = timedelta(seconds=lease_seconds)
        self.max_attempts = max_attempts
        self.events = events or JobEvents()

    def new_lease(self) -> dict:
        """A lease for jobs this runner is about to insert and run itself."""
        return {"worker": self.worker_id, "token": uuid.uuid4().hex, "until": utcnow() + self.lease}

    def renewed(self, documents: list[dict]) -> list[dict]:
        """Held jobs' documents their request is about to store: the leases counted from
        now. Counted from the jobs' acceptance, they ran out while a long ?wait= held
        them, and a sweep took back a job this runner was still running."""
        until = utcnow() + self.lease
        for document in documents:
            document["lease"] = {**document["lease"], "until": until}
        return documents

    def claim(self, ids: list[ObjectId]) -> tuple[str, list[ObjectId]]:
        """Lease those of ids that are still free; return the token and the claimed ids.

        A claimed job stays queued, its attempts uncounted, until its first batch
        starts (start): a runner that dies holding it costs it no attempt."""
        if not ids:
            return "", []
        token = uuid.uuid4().hex
        now = utcnow()
        lease = {"worker": self.worker_id, "token": token, "until": now + self.lease}
        result = self.store.jobs.update_many(
            {"_id": {"$in": ids}, "status": "queued", "lease": None},
            changed({"lease": lease}, now),
        )
        if result.modified_count == len(ids):
            return token, list(ids)
        if result.modified_count == 0:
            return token, []
        mine = self.store.jobs.find({"_id": {"$in": ids}, "lease.token": token}, {"_id": 1})
        return token, [doc["_id"] for doc in mine]

    def claimed_documents(self, token: str, ids: list[ObjectId]) -> list[dict]:
        """The full documents of jobs this token holds."""
        return list(self.store.jobs.find({"_id": {"$in": ids}, "lease.token": token}))

    def queued(self, max_rows: int, model_id: ObjectId | None = None) -> list[ObjectId]:
        """Ids of the oldest free jobs (of one model version, if given), as many as
        start in one batch of max_rows instances (or the oldest alone, if it is larger):
        a runner claims only what it can start within its lease (index: status, _created)."""
        query = {"status": "queued", "lease": None}
        if model_id is not None:
            query["model_ref._id"] = model_id
        cursor = (
            self.store.jobs.find(query, {"progress.total": 1}).sort("_created", 1).limit(max_rows)
        )
        ids, rows = [], 0
        for doc in cursor:
            rows += (doc.get("progress") or {}).get("total") or 1
            if ids and rows > max_rows:
                break
            ids.append(doc["_id"])
        return ids

    def start(self, jobs: list, now: datetime) -> list:
        """Claimed jobs whose first batch begins: running, and an attempt counted.

        jobs: the engine's jobs; each still held gets its new attempt number and
        started_at. Returns those whose lease was lost meanwhile: they must not run (a
        run that is not the job's current attempt once replaced the rows of the one
        that was, then withdrew them, leaving a succeeded job without predictions)."""
        lost = []
        for token, held in self._by_token(jobs).items():
            ids = [job.id for job in held]
            query = {"_id": {"$in": ids}, "lease.token": token}
            update = changed({"status": "running", "started_at": now}, now)
            result = self.store.jobs.update_many(query, {**update, "$inc": {"attempts": 1}})
            if result.modified_count < len(ids):
                started = {doc["_id"] for doc in self.store.jobs.find(query, {"_id": 1})}
                lost += [job for job in held if job.id not in started]
        gone = {id(job) for job in lost}
        for job in jobs:
            if id(job) not in gone:
                job.attempts += 1
                job.counted = True
                job.started_at = now
        return lost

    def renew(self, jobs: list) -> None:
        """Extend the leases of jobs this runner still holds (those it lost stay lost):
        one write for all, by this runner's id (one per lease token took seconds with
        hundreds of requests' jobs waiting, longer than the leases it renewed)."""
        self.store.jobs.update_many(
            {"_id": {"$in": [job.id for job in jobs]}, "lease.worker": self.worker_id},
            {"$set": {"lease.until": utcnow() + self.lease}},
        )

    def release(self, jobs: list) -> int:
        """Give back claimed jobs that have not started (a runner stopping): free at
        once for any runner, no attempt counted, rather than after their lease."""
        released = 0
        for token, held in self._by_token(jobs).items():
            for counted in (True, False):
                ids = [job.id for job in held if job.counted == counted]
                if not ids:
                    continue
                query = {"_id": {"$in": ids}, "lease.token": token, "status": "queued"}
                update = changed({"lease": None}, utcnow())
                if counted:  # inserted leased, counted at insert: that attempt never ran
                    update["$inc"] = {"attempts": -1}
                released += self.store.jobs.update_many(query, update).modified_count
        return released

    @staticmethod
    def _by_token(jobs: list) -> dict[str, list]:
        grouped: dict[str, list] = {}
        for job in jobs:
            grouped.setdefault(job.token, []).append(job)
        return grouped

    def requeue_expired(self) -> int:
        """Free the jobs whose lease ran out, or fail them past MAX_ATTEMPTS."""
        now = utcnow()
        expired_lease = {"lease.until": {"$lt": now}}
        # One query per status: SecantusDB narrows the (status, lease.until) index by
        # both fields for one status, not for an $in of them (5.5 s at 100k queued).
        expired = [
            job
            for status in ACTIVE_STATUSES
            for job in self.store.jobs.find(
                {"status": status, **expired_lease}, {"_id": 1, "attempts": 1, "lease": 1}
            ).limit(100)
        ]
        count = 0
        for job in expired:
            message = f"lease expired: worker {job['lease']['worker']} stopped answering"
            token = job["lease"]["token"]
            # The lease must still be expired when the update lands: one
            # extended in between stays with its holder.
            if job.get("attempts", 0) >= self.max_attempts:
                count += self._finish_failed(job["_id"], token, message, expired_lease)
            else:
                count += self._requeue(job["_id"], token, message, expired_lease)
        LEASE_EXPIRIES.inc(count)
        return count

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

    def succeed(self, jobs: list, now: datetime) -> set[ObjectId]:
        """Mark jobs succeeded; return the ids of those still held, whose success was written.

        jobs: the engine's jobs (id, token, count, attempts, started_at, tags). A job
        run in one batch goes from queued to succeeded directly. A job whose tags
        were replaced while it ran gets them carried onto its predictions first.
        """
        if not jobs:
            return set()
        fields = {
            job.id: succeeded_fields(job.count, job.attempts, job.started_at, now) for job in jobs
        }
        pending = self.events.pending("succeeded", now)
        updates = [
            (
                leased_by(job.id, job.token, {"tags": job.tags}),
                changed({**fields[job.id], **pending}, now),
            )
            for job in jobs
        ]
        if len(updates) == 1:
            result = self.store.jobs.update_one(*updates[0])
        else:
            operations = [self.store.jobs.update_op(query, change) for query, change in updates]
            result = self.store.jobs.bulk_write(operations, ordered=False)
        succeeded, retagged = set(fields), []
        if result.matched_count < len(jobs):
            # A lease was lost, or tags were replaced meanwhile: look which.
            succeeded = set()
            by_id = {job.id: job for job in jobs}
            for doc in self.store.jobs.find(
                {"_id": {"$in": list(by_id)}},
                {"status": 1, "finished_at": 1, "lease": 1, "tags": 1},
            ):
                job = by_id[doc["_id"]]
                if doc["status"] == "succeeded" and doc.get("finished_at") == now:
                    succeeded.add(job.id)
                elif (doc.get("lease") or {}).get("token") == job.token:
                    retagged.append((job, doc.get("tags") or {}))
        tags = {job.id: job.tags for job in jobs}
        count_succeeded([job for job in jobs if job.id in succeeded])
        self.events.ended(
            *(
                JobEnded(job_id, "succeeded", {**fields[job_id], "tags": tags[job_id]})
                for job_id in succeeded
            )
        )
        for job, new_tags in retagged:
            self.store.predictions.update_many({"job": job.id}, {"$set": {"tags": new_tags}})
            job.tags = new_tags
            succeeded |= self.succeed([job], now)
        return succeeded

    def insert_held(self, jobs: list) -> None:
        """Write held jobs (service/jobs/held.py) as ordinary jobs: leased to this runner,
        the lease counted from now. Those their request stored meanwhile are already."""
        until = utcnow() + self.lease
        with Held.writing([job.held for job in jobs]) as unwritten:
            documents = []
            for job in jobs:
                if job.held in unwritten:
                    lease = {**job.held.document["lease"], "until": until}
                    job.held.document.update(lease=lease, started_at=job.started_at)
                    documents.append(job.held.document)
            if documents:
                Held.write(unwritten, lambda: self.store.jobs.insert_many(documents))
        for job in jobs:
            job.held = None

    def insert_succeeded(
        self, jobs: list, predictions: dict[ObjectId, list[dict]], now: datetime
    ) -> set[ObjectId]:
        """Write held jobs once, succeeded, with their predictions: one transaction, so
        a job is never stored without its predictions nor they without it.

        Returns the ids written; the others were stored by their request meanwhile
        (queued, leased to this runner) and are ordinary jobs from now on.
        """
        fields = {
            job.id: succeeded_fields(job.count, job.attempts, job.started_at, now) for job in jobs
        }
        with Held.writing([job.held for job in jobs]) as unwritten:
            mine = [job for job in jobs if job.held in unwritten]
            pending = self.events.pending("succeeded", now)
            documents = [{**job.held.document, **fields[job.id], **pending} for job in mine]
            rows = [row for job in mine for row in predictions[job.id]]

            def write(session):
                self.store.jobs.insert_many(documents, session=session)
                self.store.predictions.insert_many(rows, ordered=False, session=session)

            def write_and_count():
                self.store.in_transaction(write)
                count_succeeded(mine)
                PREDICTIONS.labels(mine[0].model["name"]).inc(len(rows))

            if mine:
                Held.write(unwritten, write_and_count)
        for job in jobs:
            job.held = None
        self.events.ended(
            *(JobEnded(job.id, "succeeded", {**fields[job.id], "tags": job.tags}) for job in mine)
        )
        return {job.id for job in mine}

    def fail_attempt(
        self, job_id: ObjectId, token: str, attempts: int, error: str, for_good: bool = False
    ) -> str:
        """After a failed attempt: requeue, or fail for good past MAX_ATTEMPTS (or at
        once, for_good).

        Returns the job's new status ("queued" or "failed"), or "" if the lease was lost.
        """
        if for_good:
            return "failed" if self._finish_failed(job_id, token, error) else ""
        if attempts >= self.max_attempts:
            message = f"failed after {attempts} attempts: {error}"
            return "failed" if self._finish_failed(job_id, token, message) else ""
        return "queued" if self._requeue(job_id, token, error) else ""

    def deleted(self, job_id: ObjectId) -> None:
        """A finished job was deleted: its predictions go with it."""
        self.store.predictions.delete_many({"job": job_id})
        self.events.ended(JobEnded(job_id, "deleted"))

    def cancel(self, job_id: ObjectId, error: str) -> bool:
        """Stop a queued or running job for good; False if it has finished (or this store
        does not see it).

        No lease token is needed: clearing the lease is what stops the runner. Its
        progress and success writes filter on the token, so they land nowhere and it
        withdraws its batch's rows (service/jobs/engine.py); sweeps requeue only
        active jobs, so it is never retried.
        """
        active = {"_id": job_id, "status": {"$in": ACTIVE_STATUSES}}
        return bool(self._end_without_predictions(active, "cancelled", error))

    def _requeue(self, job_id: ObjectId, token: str, error: str, condition=None) -> int:
        fields = {"status": "queued", "lease": None, "error": error}
        changed_count = self._change_held(
            job_id, token, changed(fields, utcnow()), condition
        ).modified_count
        if changed_count:
            self.events.requeued(job_id)
        return changed_count

    def _finish_failed(self, job_id: ObjectId, token: str, error: str, condition=None) -> int:
        return self._end_without_predictions(leased_by(job_id, token, condition), "failed", error)

    def _end_without_predictions(self, query: dict, status: str, error: str) -> int:
        """End the job query matches as failed or cancelled: it keeps no predictions (all
        or nothing), and its end is raised."""
        now = utcnow()
        fields = {"status": status, "lease": None, "error": error, "finished_at": now}
        pending = self.events.pending(status, now)
        result = self.store.jobs.update_one(query, changed({**fields, **pending}, now))
        if result.modified_count:
            self.store.predictions.delete_many({"job": query["_id"]})
            self.events.ended(JobEnded(query["_id"], status, {**fields, "_updated": now}))
        return result.modified_count

    def _change_held(self, job_id: ObjectId, token: str, update: dict, condition=None):
        """Apply an update to a job only while this token still holds it (and condition holds)."""
        return self.store.jobs.update_one(leased_by(job_id, token, condition), update)


class LeaseKeeper:
    """Renews, every third of a lease, the leases of the jobs an engine holds, however
    long they wait: behind other batches and models, a model's runner starting, a
    slow call. One thread per engine; jobs are held for the length of a run."""

    def __init__(self, queue: JobQueue):
        self.queue = queue
        self.every_s = queue.lease.total_seconds() / 3
        self._held: dict[int, object] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sibyl-leases", daemon=True)
        self._thread.start()

    def hold(self, jobs: list) -> None:
        """Keep jobs' leases alive until a run that holds them ends (jobs waiting in a
        lane for their run: their leases once ran out there while a runner started)."""
        with self._lock:
            self._held.update((id(job), job) for job in jobs)

    @contextmanager
    def holding(self, jobs: list):
        """Keep jobs' leases alive for the block; it gets a function that adds more."""
        held: list = []

        def also(more: list) -> None:
            held.extend(more)
            self.hold(more)

        also(jobs)
        try:
            yield also
        finally:
            with self._lock:
                for job in held:
                    self._held.pop(id(job), None)

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            with self._lock:
                jobs = list(self._held.values())
            if not jobs:
                continue
            try:
                self.queue.renew(jobs)
            except PyMongoError as error:
                log.warning("could not renew %d leases (%s); retrying", len(jobs), error)
