"""Developers' hooks on a job's life: the one place they are registered.

`register(events)` runs in every process that changes jobs: the API process (through
hooks.register(app)) and each `run.py worker`, so a hook hears of a job's end
whichever mode ran it. Add a hook with `events.on_job_succeeded += hook` (or
`on_job_failed`, `on_job_cancelled`); it is called as `hook(job, store)`, at least
once per end, after the end is stored, with the job's document as stored and Sibyl's
own store (it sees every owner's documents). See docs/EXTENDING.md, "React to a
job's life", and the guarantee in service/jobs/events.py.

This module is imported by worker processes: it must not import Eve, Flask or
TensorFlow.
"""

from service.jobs.events import JobEvents


def register(events: JobEvents) -> None:
    """Attach every developer hook on a job's life (none ship with Sibyl)."""
