"""The inference engine: claimed jobs in, predictions stored, jobs completed.

Instances of all the jobs for one model version are packed into batches of at
most MAX_BATCH_SIZE rows, each batch is one call of the compiled model, and each
batch's predictions are one insert_many. Used by the in-process dispatcher and
by worker processes alike.

Prediction writes are fenced by the lease like every job write: after a batch's
rows are stored, the progress or completion write (filtered on the lease token)
tells whether the lease still holds; if it was lost, that batch's rows are
removed again. Rows carry their attempt: an attempt that finds rows of an earlier
attempt on its unique (job, index) keys overwrites them, never those of a later
one, so the newest attempt's rows are the ones kept.
"""

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Protocol

import numpy as np
from bson import ObjectId
from pymongo.errors import BulkWriteError, ConnectionFailure, DuplicateKeyError

from schemas.common import ACTIVE_STATUSES
from service.errors import InputError
from service.jobs.claims import JobQueue, LeaseKeeper, utcnow
from service.jobs.completions import Completions
from service.jobs.held import Held
from service.metrics import BATCH_ROWS, JOBS, MODEL_CALL_SECONDS, PREDICTIONS
from service.registry import model_store
from service.registry.runner import (
    ModelCallError,
    RunnerLimits,
    RunnerPool,
    RunnerRetired,
    RunnerUnavailable,
)
from service.registry.signature import check_inputs
from service.store.packed import unpacked_array

log = logging.getLogger(__name__)

DUPLICATE_KEY = 11000


@dataclass
class Job:
    """A claimed job with its inputs as arrays, ready to run."""

    id: ObjectId
    token: str
    model: dict
    arrays: dict[str, np.ndarray]
    count: int
    attempts: int
    tags: dict = field(default_factory=dict)
    owner: str | None = None  # carried onto its predictions
    done: int = 0  # instances whose predictions are stored
    # Whether this attempt is counted in its document: a claimed job's is when its
    # first batch starts (JobQueue.start); a job inserted leased is counted at insert.
    counted: bool = True
    # Its insert may or may not have landed (the database dropped): run only if stored.
    uncertain: bool = False
    started_at: datetime | None = None  # when its first batch began
    # Not yet in the database: its document, written once it ends (service/jobs/held.py).
    held: Held | None = None

    @classmethod
    def from_document(cls, document: dict, model: dict, max_instances: int) -> "Job":
        """Rebuild a job read back from MongoDB (worker processes, sweeps)."""
        arrays, count = check_inputs(
            unpacked_array(document["inputs"]), model["signature"]["inputs"], max_instances
        )
        return cls(
            id=document["_id"],
            token=document["lease"]["token"],
            model=model,
            arrays=arrays,
            count=count,
            attempts=document.get("attempts", 0),
            tags=document.get("tags") or {},
            owner=document.get("owner"),
            counted=False,
        )


class Arrivals(Protocol):
    """Jobs that come in while a run goes on: a lane's inbox, a worker's claims."""

    def take(self, model: dict) -> list[Job]:
        """The jobs of this model version waiting now, without waiting for more."""

    def recent(self) -> bool:
        """Whether jobs came in lately: then large jobs run in slices."""


class Engine:
    """Runs claimed jobs: batches per model, stores predictions, completes jobs."""

    def __init__(self, queue: JobQueue, config: dict, completions: Completions):
        self.store = queue.store
        self.queue = queue
        self.completions = completions
        self.max_batch_size = config["MAX_BATCH_SIZE"]
        self.fair_slice_rows = config["FAIR_SLICE_ROWS"]
        self.max_instances = config["MAX_INSTANCES_PER_JOB"]
        cache_dir = Path(config["MODEL_CACHE_DIR"])
        self.runners = RunnerPool(
            lambda model: model_store.local_copy(self.store, model, cache_dir),
            RunnerLimits.from_config(config),
            config["MODEL_CACHE_SIZE"],
        )
        self._model_documents: dict[ObjectId, dict] = {}
        self.leases = LeaseKeeper(queue)

    def stop(self) -> None:
        """Stop the model runners and the lease keeper."""
        self.runners.stop()
        self.leases.stop()

    def model_document(self, model_id: ObjectId) -> dict | None:
        """A model document by id (models never change once stored, so cache them)."""
        if model_id not in self._model_documents:
            document = self.store.models.find_one({"_id": model_id})
            if document is None:
                return None
            self._model_documents[model_id] = document
        return self._model_documents[model_id]

    def jobs_from_documents(self, documents: list[dict]) -> list[Job]:
        """Turn claimed job documents into runnable jobs; fail those that can never run
        (for good: another attempt would end the same)."""
        jobs = []
        for document in documents:
            model = self.model_document(document["model_ref"]["_id"])
            token, attempts = document["lease"]["token"], document.get("attempts", 0)
            if model is None:
                name = document["model_ref"]["name"]
                self._fail(document["_id"], token, attempts, "its model was deleted", name, True)
                continue
            try:
                jobs.append(Job.from_document(document, model, self.max_instances))
            except InputError as error:
                self._fail(document["_id"], token, attempts, str(error), model["name"], True)
        return jobs

    def run(self, jobs: list[Job], arrivals: Arrivals | None = None) -> None:
        """Run claimed jobs, grouped by model version. A held job left unwritten (the
        engine stopped before its write) is stored by its request when its wait ends.

        arrivals: jobs of the run's model versions that came in meanwhile.
        They make the next batch on their own, ahead of what remains of larger jobs,
        and while jobs keep coming a large job runs in slices of FAIR_SLICE_ROWS: a
        10,000-instance job holds a small one up for one short batch, not forty."""
        jobs = self._admitted(jobs)
        # Run again after the database dropped (dispatch.run_through_outages): a job
        # whose predictions are all stored only needs its success written.
        stored = [job for job in jobs if job.done == job.count]
        if stored:
            self._complete_stored(stored)
        groups: dict[ObjectId, list[Job]] = {}
        for job in jobs:
            if job.done < job.count:
                groups.setdefault(job.model["_id"], []).append(job)
        with self.leases.holding(jobs) as hold:
            for group in groups.values():
                self._run_group(group, arrivals, hold)

    def _admitted(self, jobs: list[Job]) -> list[Job]:
        return self._stored_if_uncertain([job for job in jobs if self._take(job)])

    def _complete_stored(self, jobs: list[Job]) -> None:
        succeeded = self.queue.succeed(jobs, utcnow())
        for job in jobs:
            if job.id not in succeeded:
                log.warning("lost the lease of job %s; leaving it to its new holder", job.id)
                self.completions.forget_predictions(job.id)

    @staticmethod
    def _take(job: Job) -> bool:
        """Whether to run the job: a held one its request already stored is an ordinary
        job from now on; one its request could not store is not run, unless the
        database dropped during that write (then it runs if it was stored)."""
        if job.held is None or not job.held.stored.is_set():
            return True
        lost, error = job.held.lost, job.held.error
        job.held = None
        job.uncertain = isinstance(error, ConnectionFailure)
        return job.uncertain or not lost

    def _stored_if_uncertain(self, jobs: list[Job]) -> list[Job]:
        """Jobs, less those whose insert may have failed and did: an uncertain job runs
        only if its document is there, active and still leased to it."""
        uncertain = [job for job in jobs if job.uncertain]
        if not uncertain:
            return jobs
        found = {
            (doc["_id"], doc["lease"]["token"])
            for doc in self.store.jobs.find(
                {"_id": {"$in": [job.id for job in uncertain]}, "status": {"$in": ACTIVE_STATUSES}},
                {"lease.token": 1},
            )
            if doc.get("lease")
        }
        for job in uncertain:
            job.uncertain = False
        missing = {id(job) for job in uncertain if (job.id, job.token) not in found}
        return [job for job in jobs if id(job) not in missing]

    def _run_group(
        self,
        jobs: list[Job],
        arrivals: Arrivals | None = None,
        hold: Callable[[list[Job]], None] | None = None,
    ) -> None:
        """Pack the jobs' instances into batches; a failing batch is retried job by job."""
        model = jobs[0].model
        pending = list(jobs)
        first = True
        while pending:
            # Arrivals are looked for between batches: a run's first is what it came with.
            looking = arrivals is not None and not first
            newcomers = self._admitted(arrivals.take(model)) if looking else []
            first = False
            if newcomers:
                hold(newcomers)
                pending[0:0] = newcomers
                batch = self._next_batch(newcomers)
            else:
                sliced = arrivals is not None and arrivals.recent()
                batch = self._next_batch(pending, self.fair_slice_rows if sliced else None)
            # A held job that will not finish in this batch is written as an ordinary one.
            partial = [job for job, _, stop in batch if job.held is not None and stop < job.count]
            if partial:
                self.queue.insert_held(partial)
            fresh = [job for job, _, _ in batch if not job.counted]
            rows = sum(stop - start for _, start, stop in batch)
            try:
                runner = self.runners.get(model)
                if fresh:
                    # A runner starting takes seconds: the attempt counts once it is up.
                    runner.start()
                began = utcnow()
                lost = self.queue.start(fresh, began) if fresh else []
                if lost:
                    gone = {id(job) for job in lost}
                    log.warning("lost the leases of %d jobs before they started", len(lost))
                    pending[:] = [job for job in pending if id(job) not in gone]
                    continue  # the batch again, without them
                for job, _, _ in batch:
                    job.started_at = job.started_at or began
                called = time.perf_counter()
                outputs = runner.predict(
                    self._concatenate(batch), self.runners.call_timeout_s(model, rows)
                )
            except RunnerRetired:
                continue  # evicted meanwhile: the same batch, on the pool's new runner
            except (ModelCallError, RunnerUnavailable) as error:
                culprits = [job for job, _, _ in batch]
                for job in culprits:
                    pending.remove(job)
                if isinstance(error, RunnerUnavailable):
                    # The attempt ended before its start was counted: count it, or jobs
                    # of a model that cannot be loaded would be claimed again for ever.
                    lost = {id(job) for job in self.queue.start(fresh, utcnow())} if fresh else ()
                    for job in culprits:
                        if id(job) not in lost:
                            self._fail_job(job, f"the model could not be loaded: {error}")
                    continue
                if len(culprits) == 1:
                    # A job that crashed or hung the runner on its own is not retried:
                    # another attempt would cost another runner for the same end.
                    self._fail_job(culprits[0], str(error), for_good=error.fatal)
                    continue
                # Someone's instances broke the batch: find out whose, one job at a time.
                for job in culprits:
                    self._run_group([job])
                continue
            version = f"{model['name']}@{model['version']}"
            MODEL_CALL_SECONDS.labels(version).observe(time.perf_counter() - called)
            BATCH_ROWS.labels(version).observe(rows)
            self._store(batch, outputs, pending)

    def _next_batch(
        self, pending: list[Job], slice_rows: int | None = None
    ) -> list[tuple[Job, int, int]]:
        """Up to max_batch_size rows from the head of the queue, as (job, start, stop);
        at most slice_rows of each job when given."""
        batch, room = [], self.max_batch_size
        for job in pending:
            take = min(room, job.count - job.done, slice_rows or room)
            batch.append((job, job.done, job.done + take))
            room -= take
            if room == 0:
                break
        return batch

    def _concatenate(self, batch: list[tuple[Job, int, int]]) -> dict[str, np.ndarray]:
        names = batch[0][0].arrays.keys()
        if len(batch) == 1:
            job, start, stop = batch[0]
            return {name: job.arrays[name][start:stop] for name in names}
        return {
            name: np.concatenate([job.arrays[name][start:stop] for job, start, stop in batch])
            for name in names
        }

    def _store(self, batch, outputs: np.ndarray, pending: list[Job]) -> None:
        """Write a batch's predictions, then record progress or completion of its jobs."""
        model_name = batch[0][0].model["name"]
        rows = outputs.reshape(len(outputs), -1)
        finite = np.isfinite(rows).all(axis=1)
        batch_id = ObjectId()
        batch_info = {"id": batch_id, "size": len(outputs)}
        now = utcnow()
        documents: dict[ObjectId, list[dict]] = {}
        offset, broken = 0, {}
        for job, start, stop in batch:
            job_finite = finite[offset : offset + stop - start]
            if job_finite.all():
                job_outputs = outputs[offset : offset + stop - start]
                documents[job.id] = self._predictions(job, start, job_outputs, batch_info, now)
            else:
                bad = start + int(np.argmin(job_finite))
                broken[job.id] = f"the model's output for inputs[{bad}] is not finite (NaN or Inf)"
            offset += stop - start
        # Held jobs that finished are written once, with their predictions.
        once = [job for job, _, _ in batch if job.held is not None and job.id in documents]
        if once:
            for job in once:
                self.completions.add_predictions(job.id, documents[job.id])
            written = self.queue.insert_succeeded(once, documents, now)
            for job in once:
                if job.id in written:
                    pending.remove(job)
                    del documents[job.id]
                else:  # stored by its request meanwhile: completed as an ordinary job
                    self.completions.forget_predictions(job.id)
            batch = [entry for entry in batch if entry[0].id not in written]
        overwritten = self._insert([row for rows in documents.values() for row in rows])
        PREDICTIONS.labels(model_name).inc(sum(map(len, documents.values())))
        for job_id, rows in documents.items():
            if job_id in overwritten:
                self.completions.forget_predictions(job_id)
            else:
                self.completions.add_predictions(job_id, rows)

        completed, lost = [], []
        for job, _, stop in batch:
            if job.id in broken:
                pending.remove(job)
                self._fail_job(job, broken[job.id])
                continue
            job.done = stop
            if job.done == job.count:
                pending.remove(job)
                completed.append(job)
            elif not self.queue.extend(job.id, job.token, job.done, job.started_at):
                pending.remove(job)
                lost.append(job)
        succeeded = self.queue.succeed(completed, utcnow())
        lost += [job for job in completed if job.id not in succeeded]
        for job in lost:
            self._withdraw(job, batch_id)

    def _withdraw(self, job: Job, batch_id: ObjectId) -> None:
        """The lease was lost while the batch ran: its rows of this job are not ours to keep."""
        log.warning("lost the lease of job %s; leaving it to its new holder", job.id)
        self.store.predictions.delete_many({"job": job.id, "batch.id": batch_id})
        self.completions.forget_predictions(job.id)

    def _predictions(
        self, job: Job, start: int, outputs: np.ndarray, batch_info: dict, now
    ) -> list[dict]:
        labels = job.model.get("labels")
        values = outputs.tolist()
        if labels and outputs.ndim == 2 and outputs.shape[1] == len(labels):
            best = outputs.argmax(axis=1).tolist()
            scores = outputs.max(axis=1).tolist()
        else:
            best = scores = None
        model_name, model_version = job.model["name"], job.model["version"]
        return [
            {
                "job": job.id,
                "model": model_name,
                "model_version": model_version,
                "index": start + i,
                "output": value,
                "label": labels[best[i]] if best else None,
                "score": scores[i] if best else None,
                "tags": job.tags,
                "owner": job.owner,
                "batch": batch_info,
                "attempt": job.attempts,
                "_created": now,
                "_updated": now,
            }
            for i, value in enumerate(values)
        ]

    def _insert(self, documents: list[dict]) -> set[ObjectId]:
        """insert_many; rows an earlier attempt stored are overwritten with this attempt's.

        Returns the ids of the jobs that had such rows.
        """
        if not documents:
            return set()
        try:
            self.store.predictions.insert_many(documents, ordered=False)
            return set()
        except BulkWriteError as error:
            errors = error.details["writeErrors"]
            if any(e["code"] != DUPLICATE_KEY for e in errors):
                raise
        overwritten = set()
        for failed in errors:
            row = {key: value for key, value in documents[failed["index"]].items() if key != "_id"}
            # Only an older attempt's row gives way; upsert: it may have just been
            # withdrawn by its stale writer. A newer attempt's row stays (duplicate).
            older = {"job": row["job"], "index": row["index"], "attempt": {"$lt": row["attempt"]}}
            try:
                self.store.predictions.replace_one(older, row, upsert=True)
            except DuplicateKeyError:
                continue
            overwritten.add(row["job"])
        return overwritten

    def _fail_job(self, job: Job, error: str, for_good: bool = False) -> None:
        if job.held is not None:
            self.queue.insert_held([job])  # a failure is recorded on a stored job
        self._fail(job.id, job.token, job.attempts, error, job.model["name"], for_good)

    def _fail(
        self,
        job_id: ObjectId,
        token: str,
        attempts: int,
        error: str,
        model: str,
        for_good: bool = False,
    ) -> None:
        """for_good: never retried (the model crashed or hung on this job alone)."""
        status = self.queue.fail_attempt(job_id, token, attempts, error, for_good)
        if status:
            JOBS.labels(model, "failed" if status == "failed" else "retried").inc()
        log.warning("job %s attempt %s: %s -> %s", job_id, attempts, error, status or "lease lost")
