"""The job service: the one way in for a job, and the one way to wait for it.

Every route that accepts jobs calls `submit` (POST /v1/jobs today; predict routes,
replays or a CLI tomorrow), with or without an HTTP request behind it:
it resolves each job's model, checks its inputs against the model's signature,
builds the job's document (service/jobs/claims.py `new_job`), stores the jobs
through the owner-scoped store, and hands them to this process's dispatcher
(in-process mode) or leaves them to worker processes. `await_finished` answers
`?wait=` with the jobs as stored and their predictions.
"""

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from bson import ObjectId
from pymongo.errors import ConnectionFailure

from schemas.common import ACTIVE_STATUSES, FINISHED_STATUSES
from service.errors import Conflict, InvalidField, MaybeStored, Rejected, Unprocessable
from service.jobs.claims import JobQueue, new_job, utcnow
from service.jobs.completions import Completions, Waiter
from service.jobs.engine import Job
from service.jobs.held import Held
from service.jobs.quota import InFlight, Reservation
from service.logs import current_request_id
from service.metrics import JOBS
from service.registry.model_store import ModelLookup
from service.registry.signature import check_inputs
from service.store.access import Identity, Store

# What a finished job's predictions show inline (the rest is on the job).
# How long a process may count an owner's in-flight jobs from its last read (plus what
# it accepted since) before reading them again (service/jobs/quota.py).
QUOTA_READ_EVERY_S = 1.0
INLINE_PREDICTION_FIELDS = ("_id", "index", "output", "label", "score")


# How long before the end of a ?wait= the jobs still held in memory are stored queued.
HOLD_MARGIN_S = 1.0
# How long a ?wait= request may wait when MAX_WAITING_REQUESTS others already do.
UNSLOTTED_WAIT_S = 1.0


@dataclass
class Accepted:
    """Jobs checked and reserved, not yet handed to a runner."""

    documents: list[dict]
    jobs: list[Job]
    runner: object | None  # this process's Dispatcher, or None (workers run them)
    reservation: Reservation | None

    @property
    def ids(self) -> list[ObjectId]:
        return [document["_id"] for document in self.documents]

    def hand_over(self) -> None:
        """Give the jobs to this process's dispatcher, if it runs them (they are accepted)."""
        for job in self.jobs:
            JOBS.labels(job.model["name"], "accepted").inc()
        if self.runner is not None:
            self.runner.submit(self.jobs)


class JobService:
    """Submitting jobs, waiting for them, and the changes a client may make to them."""

    def __init__(
        self,
        store: Store,
        models: ModelLookup,
        config: dict,
        completions: Completions,
        dispatcher: Callable[[], object | None],
    ):
        """dispatcher: returns this process's Dispatcher, or None when workers run the jobs."""
        self.store = store
        self.models = models
        self.completions = completions
        # The jobs' schema: what a job's document is built from, what a PATCH may change.
        self.schema = config["DOMAIN"]["jobs"]["schema"]
        self.changeable = config["DOMAIN"]["jobs"].get("changeable_fields", [])
        self.max_instances = config["MAX_INSTANCES_PER_JOB"]
        self.max_batch_size = config["MAX_BATCH_SIZE"]
        # Anonymous callers (authentication off) are one owner, None; Sibyl's own
        # submissions have no quota.
        self.in_flight = InFlight(
            self._active,
            config["MAX_ACTIVE_JOBS_PER_OWNER"],
            config["MAX_ACTIVE_INSTANCES_PER_OWNER"],
            lambda: QUOTA_READ_EVERY_S,
        )
        self._dispatcher = dispatcher
        self._wait_slots = threading.BoundedSemaphore(config["MAX_WAITING_REQUESTS"])
        # State changes made for a request (a deletion), with this process's events.
        self._claims = JobQueue(store, "api", 0, 0, completions.events)

    @contextmanager
    def wait_slot(self, seconds: float) -> Iterator[float]:
        """The seconds a request may wait: as asked while fewer than MAX_WAITING_REQUESTS
        wait in this process, else at most UNSLOTTED_WAIT_S (a job that ends as quickly
        as most do is still answered finished): waiting requests can never hold every
        request thread for long."""
        if seconds <= 0:
            yield 0.0
            return
        if not self._wait_slots.acquire(blocking=False):
            yield min(seconds, UNSLOTTED_WAIT_S)
            return
        try:
            yield seconds
        finally:
            self._wait_slots.release()

    def submit(self, submitted: list[dict], identity: Identity, watch: bool = False) -> list[dict]:
        """Accept jobs ({model, inputs, tags}) for identity; return their documents as stored.

        All or nothing: if any job names an unknown model or has inputs its model
        cannot take, Rejected names each one and nothing is stored; if the owner's
        queued and running jobs or instances would exceed its quota, TooManyActive.
        watch: the caller will await_finished() them (registered before they can end).
        """
        accepted = self._accept(submitted, identity)
        self._insert(accepted, identity, accepted.documents)
        self.in_flight.inserted(accepted.reservation)
        if watch:
            self.completions.expect(accepted.ids)
        accepted.hand_over()
        return accepted.documents

    def submit_and_wait(
        self, submitted: list[dict], identity: Identity, seconds: float
    ) -> tuple[list[dict], dict[ObjectId, dict]]:
        """submit() and await_finished(): the documents as stored, and the jobs that ended
        within seconds with their predictions.

        Jobs this process runs in one batch are held in memory and written once they
        end, complete (service/jobs/held.py); those still unwritten near the end of
        the wait are stored queued. Either way each is in the database before this
        returns, or its write's error is raised.
        """
        accepted = self._accept(submitted, identity)
        if accepted.runner is not None:
            for job, document in zip(accepted.jobs, accepted.documents, strict=True):
                if job.count <= self.max_batch_size:
                    job.held = Held(document)
        pairs = zip(accepted.jobs, accepted.documents, strict=True)
        normal = [document for job, document in pairs if job.held is None]
        if normal:
            self._insert(accepted, identity, normal)
        held = [job.held for job in accepted.jobs if job.held is not None]
        self.completions.expect(accepted.ids)
        deadline = time.monotonic() + seconds
        try:
            accepted.hand_over()
            if held:
                store = self.store.acting_as(identity)
                hold = seconds - min(HOLD_MARGIN_S, seconds / 2)
                self.wait(accepted.ids, hold, identity, just_submitted=True)
                renewed = accepted.runner.queue.renewed
                Held.store_untaken(
                    held, lambda documents: store.jobs.insert_many(renewed(documents))
                )
                for h in held:
                    if h.error is not None:
                        raise h.error
            finished = self.await_finished(
                accepted.ids,
                max(0.0, deadline - time.monotonic()),
                identity,
                submitted=dict(zip(accepted.ids, accepted.documents, strict=True)),
            )
        except ConnectionFailure as error:
            # Some may be stored (written by the engine, or by this request) and run.
            raise MaybeStored(accepted.ids, error) from error
        finally:
            self.completions.release(accepted.ids)
            self.in_flight.inserted(accepted.reservation)
        return accepted.documents, finished

    def _accept(self, submitted: list[dict], identity: Identity) -> "Accepted":
        """Jobs checked against their models, their documents built, their quota reserved."""
        quota = self.in_flight.enabled and not identity.system
        if quota:
            self.in_flight.check(identity.owner)  # before the inputs cost any work
        now = utcnow()
        runner = self._dispatcher()
        # Run here: stored already leased to this process's dispatcher, so no other
        # runner takes them and no claim is needed. Otherwise free for workers.
        lease = runner.queue.new_lease() if runner is not None else None
        documents, jobs, issues = [], [], []
        resolved: dict[str, dict] = {}
        for position, fields in enumerate(submitted):
            try:
                reference = fields["model"]
                if reference not in resolved:
                    resolved[reference] = self.models.resolve(reference)
                model = resolved[reference]
                arrays, count = check_inputs(
                    fields["inputs"], model["signature"]["inputs"], self.max_instances
                )
            except InvalidField as error:
                issues.append((position, error.field, error.message))
                continue
            document = identity.stamp(
                self.store.access["jobs"],
                new_job(fields, self.schema, model, count, lease, now, current_request_id()),
            )
            document["_id"] = ObjectId()
            documents.append(document)
            token = lease["token"] if lease else ""
            jobs.append(
                Job(
                    document["_id"],
                    token,
                    model,
                    arrays,
                    count,
                    attempts=1,
                    tags=document["tags"],
                    owner=document["owner"],
                )
            )
        if issues:
            raise Rejected(issues)
        reservation = None
        if quota:
            instances = sum(job.count for job in jobs)
            reservation = self.in_flight.reserve(identity.owner, len(documents), instances)
        return Accepted(documents, jobs, runner, reservation)

    def _insert(self, accepted: "Accepted", identity: Identity, documents: list[dict]) -> None:
        """Store documents of the accepted jobs queued; their reservation is given back
        if the insert fails. If the database dropped meanwhile, they may be stored:
        MaybeStored says so, and this process runs those that were once it is back."""
        try:
            self.store.acting_as(identity).jobs.insert_many(documents)
        except ConnectionFailure as error:
            self.in_flight.cancel(accepted.reservation)
            written = {document["_id"] for document in documents}
            uncertain = [job for job in accepted.jobs if job.id in written]
            for job in uncertain:
                job.uncertain = True
            if accepted.runner is not None:
                accepted.runner.submit(uncertain)
            raise MaybeStored([document["_id"] for document in documents], error) from error
        except BaseException:
            self.in_flight.cancel(accepted.reservation)
            raise

    def _active(self, owner: str | None) -> tuple[int, int]:
        """The owner's queued and running (jobs, instances), from the database.

        Served by the (owner, status) index; the job quota keeps this read short.
        """
        active = self.store.jobs.find(
            {"owner": owner, "status": {"$in": ACTIVE_STATUSES}}, {"_id": 0, "progress.total": 1}
        )
        jobs = instances = 0
        for job in active:
            jobs += 1
            instances += job.get("progress", {}).get("total", 0)
        return jobs, instances

    def await_finished(
        self, ids: list[ObjectId], seconds: float, identity: Identity, submitted: dict | None = None
    ) -> dict[ObjectId, dict]:
        """Wait up to seconds for the jobs to end; return those that did, as stored, with their
        predictions in index order (`predictions`).

        submitted: the documents submit(watch=True) returned, by id, when the caller
        just submitted the jobs (those that ran here need no read).
        """
        store = self.store.acting_as(identity)
        ended = self.wait(ids, seconds, identity, just_submitted=submitted is not None)
        finished = {}
        for job_id, waiter in ended.items():
            document = self._as_stored(store, job_id, waiter, submitted)
            if document is not None:
                finished[job_id] = document
        return finished

    def wait(
        self, ids: list[ObjectId], seconds: float, identity: Identity, just_submitted: bool = False
    ) -> dict[ObjectId, Waiter | None]:
        """Wait up to seconds for the jobs to end; return the ended ones, with what this process
        saw of their end (None: they had ended before the wait began)."""
        store = self.store.acting_as(identity)
        self.completions.expect(ids)
        try:
            already = set()
            open_ids = ids
            if not just_submitted:
                # Only jobs the identity can see are waited on: an unknown id or another
                # owner's job answers at once (a wait would tell when it ends).
                status = {
                    job["_id"]: job["status"]
                    for job in store.jobs.find({"_id": {"$in": ids}}, {"status": 1})
                }
                already = {job_id for job_id, s in status.items() if s in FINISHED_STATUSES}
                open_ids = [job_id for job_id in status if job_id not in already]
            # Jobs this process just leased to itself wake their waiters themselves.
            # open_ids are the identity's own (checked above, or just submitted): the
            # polls ask for them unscoped, {_id, status} (5 ms at 3,000 finished jobs
            # on the embedded database; with the owner too it walks the owner's jobs).
            local = just_submitted and self._dispatcher() is not None
            waiters = self.completions.wait(self.store, open_ids, seconds, local=local)
        finally:
            self.completions.release(ids)
        return {
            job_id: waiters.get(job_id) for job_id in ids if job_id in already or job_id in waiters
        }

    def _as_stored(
        self, store: Store, job_id: ObjectId, waiter: Waiter | None, submitted: dict | None
    ) -> dict | None:
        """The finished job and its predictions, from what this process wrote or read back."""
        inserted = (submitted or {}).get(job_id)
        if waiter is not None and waiter.fields is not None and inserted is not None:
            # Ended here: the job is what was inserted plus what its end wrote.
            document = {**inserted, **waiter.fields}
            document.pop("_etag", None)
        else:
            document = store.jobs.find_one({"_id": job_id})
            if document is None:
                return None  # deleted meanwhile
        predictions = waiter.predictions if waiter is not None else None
        if document["status"] != "succeeded":
            predictions = []
        elif predictions is None or len(predictions) != document["progress"]["total"]:
            predictions = store.predictions.find({"job": job_id}).sort("index", 1)
        document["predictions"] = [
            {name: p.get(name) for name in INLINE_PREDICTION_FIELDS} for p in predictions
        ]
        return document

    def check_update(self, updates: dict) -> None:
        """A submitted job changes only its `changeable_fields` (schemas/jobs.py)."""
        frozen = sorted(set(updates) - {*self.changeable, "_updated", "_etag"})
        if frozen:
            raise Unprocessable(
                f"{', '.join(frozen)}: a submitted job can only change "
                f"{', '.join(self.changeable) or 'nothing'}"
            )

    def retagged(self, job_id: ObjectId, tags: dict, identity: Identity) -> None:
        """A job's tags were replaced: its predictions carry the new ones."""
        self.store.acting_as(identity).predictions.update_many(
            {"job": job_id}, {"$set": {"tags": tags}}
        )

    def check_deletable(self, job: dict) -> None:
        """A job is deleted once it has finished, not while it runs."""
        if job.get("status") not in FINISHED_STATUSES:
            raise Conflict(f"job is {job.get('status')}: delete it once it has finished")

    def deleted(self, job_id: ObjectId) -> None:
        """A deleted job takes its predictions with it."""
        self._claims.deleted(job_id)

    def cancel(self, job_id: ObjectId, identity: Identity) -> bool:
        """Cancel a queued or running job the identity can see; False if it sees no such job.

        Conflict, naming its status, once the job has finished: an end is not undone.
        """
        store = self.store.acting_as(identity)
        who = " ".join(filter(None, (identity.role, identity.owner))) or "an anonymous caller"
        # Written through the identity's store: another owner's job is not found.
        claims = JobQueue(store, "api", 0, 0, self.completions.events)
        if claims.cancel(job_id, f"cancelled by {who}"):
            return True
        job = store.jobs.find_one({"_id": job_id}, {"status": 1})
        if job is None:
            return False
        raise Conflict(f"job is {job['status']}: only a queued or running job can be cancelled")
