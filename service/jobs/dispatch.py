"""Getting jobs to the engine: a dispatcher thread per API process, or worker processes.

In-process mode (the default), the job service inserts each accepted job already
leased to this process and hands it, inputs checked, to the Dispatcher, whose lane
for the job's model version (a thread per model version) gathers jobs for up to
MAX_WAIT_MS into batches. In workers mode the API
only queues, and any number of `python run.py worker` processes claim jobs
from MongoDB, woken by a change stream. Both also sweep up queued jobs nobody
holds and jobs whose lease expired.
"""

import functools
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable

from bson import ObjectId
from pymongo.errors import ConnectionFailure, PyMongoError

from service.jobs.claims import JobQueue
from service.jobs.completions import Completions
from service.jobs.engine import Engine, Job
from service.jobs.events import JobEvents
from service.metrics import DATABASE_ERRORS
from service.store.access import Store

log = logging.getLogger(__name__)

# Jobs within this long of each other share a runner: large ones run in slices.
RECENT_ARRIVALS_S = 1.0


def worker_id(kind: str) -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{kind}"


def run_through_outages(
    run: Callable[[list[Job]], None], jobs: list[Job], stopping: threading.Event, wait_s: float
) -> None:
    """run(jobs); if the database drops meanwhile, run them again once it answers.

    They are still leased to this runner: dropped, they would wait for their leases to
    expire, counted against their owners' quotas all the while (a database restart once
    cost 85 to 176 needless 429s). Runs are idempotent: a batch stored before the outage
    is not stored twice."""
    while True:
        try:
            return run(jobs)
        except ConnectionFailure as error:
            DATABASE_ERRORS.labels("engine").inc()
            log.warning(
                "database unreachable (%s); %d jobs run again when it answers", error, len(jobs)
            )
            if stopping.wait(wait_s):
                return None


class Runner:
    """Claims jobs and runs them through the engine: what both modes share."""

    def __init__(self, store: Store, config: dict, completions: Completions, kind: str):
        self.queue = JobQueue(
            store,
            worker_id(kind),
            config["LEASE_SECONDS"],
            config["MAX_ATTEMPTS"],
            completions.events,
        )
        self.engine = Engine(self.queue, config, completions)
        self.max_batch_size = config["MAX_BATCH_SIZE"]
        self.poll_seconds = config["POLL_SECONDS"]
        self.stopping = threading.Event()

    def sweep(self, run: Callable[[list[Job]], None]) -> int:
        """Claim queued jobs nobody holds, after freeing those whose lease expired (and
        delivering the job hooks a dead process left undelivered), and run(jobs) them."""
        self.queue.requeue_expired()
        self.queue.events.redeliver()
        claimed, jobs = self.claim()
        if claimed:
            run(jobs)
        return claimed

    def claim(self, model_id: ObjectId | None = None) -> tuple[int, list[Job]]:
        """Claim the oldest free jobs (of one model version, if given) that start in one
        batch: how many were claimed, and those of them that can run."""
        ids = self.queue.queued(self.max_batch_size, model_id)
        if not ids:
            return 0, []
        token, claimed = self.queue.claim(ids)
        documents = self.queue.claimed_documents(token, claimed)
        return len(claimed), self.engine.jobs_from_documents(documents)

    def stop(self) -> None:
        self.stopping.set()


class Lane:
    """The jobs of one model version, batched and run by a thread of their own, so that
    a slow or hanging model holds up only its own jobs, never another model's."""

    def __init__(self, engine: Engine, config: dict, stopping: threading.Event, name: str):
        self.engine = engine
        self.max_batch_size = config["MAX_BATCH_SIZE"]
        self.max_wait_s = config["MAX_WAIT_MS"] / 1000
        self.poll_seconds = config["POLL_SECONDS"]
        self.stopping = stopping
        self.inbox: queue.SimpleQueue[Job] = queue.SimpleQueue()
        self.last_arrival = float("-inf")  # when jobs last joined a run (or came together)
        self.thread = threading.Thread(target=self._loop, name=f"sibyl-lane-{name}", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stopping.is_set():
            try:
                jobs = self._collect()
                if not jobs:
                    continue
                run = functools.partial(self.engine.run, arrivals=LaneArrivals(self, jobs))
                run_through_outages(run, jobs, self.stopping, self.poll_seconds)
            except PyMongoError as error:
                # Jobs stay queued or leased in MongoDB; a later sweep runs them.
                log.warning("dispatcher: database error (%s); retrying shortly", error)
                self.stopping.wait(self.poll_seconds)
            except Exception:
                log.exception("dispatcher: unexpected error; continuing")
                self.stopping.wait(self.poll_seconds)

    def drain(self) -> list[Job]:
        """Every job left in the inbox."""
        jobs = []
        while True:
            try:
                jobs.append(self.inbox.get_nowait())
            except queue.Empty:
                return jobs

    def arrivals(self) -> list[Job]:
        """Jobs waiting now (up to a batch of rows), without waiting for more."""
        jobs, rows = [], 0
        while rows < self.max_batch_size:
            try:
                job = self.inbox.get_nowait()
            except queue.Empty:
                break
            jobs.append(job)
            rows += job.count
        if jobs:
            self.last_arrival = time.monotonic()
        return jobs

    def _collect(self) -> list[Job]:
        """Wait for a job, then gather more for up to MAX_WAIT_MS or a full batch."""
        try:
            first = self.inbox.get(timeout=self.poll_seconds)
        except queue.Empty:
            return []
        jobs, rows = [first], first.count
        deadline = time.monotonic() + self.max_wait_s
        while rows < self.max_batch_size:
            remaining = deadline - time.monotonic()
            try:
                job = (
                    self.inbox.get(timeout=remaining) if remaining > 0 else self.inbox.get_nowait()
                )
            except queue.Empty:
                break
            jobs.append(job)
            rows += job.count
        if len(jobs) > 1:
            self.last_arrival = time.monotonic()
        return jobs


class LaneArrivals:
    """What joins a lane's run while it goes. Run again after an outage, the run
    includes those that joined it (they are added to its jobs)."""

    def __init__(self, lane: Lane, jobs: list[Job]):
        self.lane = lane
        self.jobs = jobs

    def take(self, model: dict) -> list[Job]:
        if self.lane.stopping.is_set():
            return []  # left in the inbox: released when the dispatcher stops
        newcomers = self.lane.arrivals()
        self.jobs.extend(newcomers)
        return newcomers

    def recent(self) -> bool:
        return time.monotonic() - self.lane.last_arrival < RECENT_ARRIVALS_S


class ClaimedArrivals:
    """What a worker claims between two batches of a run: queued jobs of the model
    version it is running (one query per batch, only in runs of several batches)."""

    def __init__(self, runner: Runner, jobs: list[Job]):
        self.runner = runner
        self.jobs = jobs
        self.last_arrival = float("-inf")

    def take(self, model: dict) -> list[Job]:
        if self.runner.stopping.is_set():
            return []
        _, newcomers = self.runner.claim(model["_id"])
        if newcomers:
            self.last_arrival = time.monotonic()
            self.jobs.extend(newcomers)
        return newcomers

    def recent(self) -> bool:
        return time.monotonic() - self.last_arrival < RECENT_ARRIVALS_S


class Dispatcher(Runner):
    """In-process mode: the jobs this API process accepted, run by one lane per model
    version; a thread of its own sweeps up left-behind and expired jobs."""

    def __init__(self, store: Store, config: dict, completions: Completions):
        super().__init__(store, config, completions, "api")
        self.config = config
        self._lanes: dict = {}
        self._lanes_lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="sibyl-dispatcher", daemon=True)
        self._thread.start()

    def submit(self, jobs: list[Job]) -> None:
        """Jobs leased to this process, inputs checked: no claim needed. Their leases
        are kept alive while they wait for their lane."""
        self.engine.leases.hold(jobs)
        for job in jobs:
            self._lane(job.model).inbox.put(job)

    def _lane(self, model: dict) -> Lane:
        with self._lanes_lock:
            lane = self._lanes.get(model["_id"])
            if lane is None:
                name = f"{model['name']}@{model['version']}"
                lane = Lane(self.engine, self.config, self.stopping, name)
                self._lanes[model["_id"]] = lane
            return lane

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the runs under way (up to timeout), give back the jobs still waiting
        in the lanes, then stop the runners."""
        super().stop()
        for thread in [self._thread, *(lane.thread for lane in self._lanes.values())]:
            thread.join(timeout)
        waiting = [job for lane in self._lanes.values() for job in lane.drain()]
        try:
            released = self.queue.release(waiting)
            log.info("stopping: %d waiting jobs released to other runners", released)
        except PyMongoError as error:
            log.warning("stopping: jobs wait for their leases (%s)", error)
        self.engine.stop()

    def _loop(self) -> None:
        while not self.stopping.is_set():
            try:
                self.sweep(self.submit)
            except PyMongoError as error:
                log.warning("dispatcher: database error (%s); retrying shortly", error)
            except Exception:
                log.exception("dispatcher: unexpected error; continuing")
            self.stopping.wait(self.poll_seconds)


class JobSignal:
    """Wakes a worker when a job becomes queued: a change stream, else polling."""

    PIPELINE = [
        {
            "$match": {
                "$or": [
                    {"operationType": "insert"},
                    {"updateDescription.updatedFields.status": "queued"},
                ]
            }
        }
    ]

    def __init__(self, store: Store, max_wait_s: float):
        self.store = store
        self.max_wait_s = max_wait_s
        self.backoff_s = 0.05
        self.stream = None
        self._open()

    def _open(self) -> None:
        try:
            self.stream = self.store.jobs.watch(
                self.PIPELINE, max_await_time_ms=int(self.max_wait_s * 1000)
            )
        except PyMongoError as error:
            log.info("no change stream (%s): polling for jobs instead", error)
            self.stream = None

    def wait(self) -> None:
        """Return when a job may be waiting, or after at most max_wait_s."""
        if self.stream is not None:
            try:
                self.stream.try_next()
                return
            except PyMongoError as error:
                log.info("change stream closed (%s): polling for jobs instead", error)
                self.stream = None
        time.sleep(self.backoff_s)
        self.backoff_s = min(self.backoff_s * 2, self.max_wait_s)

    def reset_backoff(self) -> None:
        self.backoff_s = 0.05


class Worker(Runner):
    """Workers mode: a process claiming jobs from MongoDB until it is told to stop."""

    def __init__(self, store: Store, config: dict, events: JobEvents | None = None):
        """events: carrying the developers' hooks (run.py worker registers them)."""
        # Nobody waits in a worker process: its completions only carry the events.
        events = events or JobEvents(store)
        super().__init__(store, config, Completions(events), "worker")
        self.signal = JobSignal(store, self.poll_seconds)

    def _run(self, jobs: list[Job]) -> None:
        run = functools.partial(self.engine.run, arrivals=ClaimedArrivals(self, jobs))
        run_through_outages(run, jobs, self.stopping, self.poll_seconds)

    def run_forever(self) -> None:
        log.info("worker %s waiting for jobs", self.queue.worker_id)
        try:
            while not self.stopping.is_set():
                try:
                    if self.sweep(self._run):
                        self.signal.reset_backoff()
                        continue
                except PyMongoError as error:
                    log.warning("worker: database error (%s); retrying shortly", error)
                    self.stopping.wait(self.poll_seconds)
                    continue
                except Exception:
                    # Its jobs are freed when their leases expire; the worker goes on.
                    log.exception("worker: unexpected error; continuing")
                    self.stopping.wait(self.poll_seconds)
                    continue
                self.signal.wait()
        finally:
            self.engine.stop()
