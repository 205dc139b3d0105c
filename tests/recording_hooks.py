"""Job hooks written as docs/EXTENDING.md shows them, for tests/test_job_hooks.py:
`register` is what hooks/job_events.py would hold. Each call is recorded in the
`hook_calls` collection, so a test sees the calls a worker process made too."""

import os

from service.jobs.events import JobEvents
from service.store.access import Store


def count_on_experiment(job: dict, store: Store) -> None:
    """An experiment, named in the job's tags, lists the jobs of it that succeeded;
    $addToSet, so that a second delivery of the same end changes nothing."""
    experiment = job["tags"].get("experiment")
    if experiment:
        store.db.experiments.update_one(
            {"owner": job.get("owner"), "name": experiment},
            {"$addToSet": {"succeeded": job["_id"]}},
            upsert=True,
        )


def record(job: dict, store: Store) -> None:
    store.db.hook_calls.insert_one(
        {"job": job["_id"], "status": job["status"], "document": job, "pid": os.getpid()}
    )


def explode(job: dict, store: Store) -> None:
    raise RuntimeError("a hook with a bug")


def register(events: JobEvents) -> None:
    events.on_job_succeeded += explode  # first: the hooks after it must still run
    events.on_job_succeeded += count_on_experiment
    events.on_job_succeeded += record
    events.on_job_failed += record
    events.on_job_cancelled += record
