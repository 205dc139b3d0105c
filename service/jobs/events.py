"""Job events in this process: a job ended, or went back to the queue.

Raised by service/jobs/claims.py wherever a job's state changes that way
(success, failure, failure once its last lease expired, deletion); `?wait=`
waiters subscribe today, completion webhooks can tomorrow.
"""

from collections.abc import Callable
from dataclasses import dataclass, field

from bson import ObjectId


@dataclass(frozen=True)
class JobEnded:
    """A job reached an end: "succeeded", "failed", "cancelled" or "deleted".

    fields: what the job's document became, as written by the change that
    ended it (empty for a deletion).
    """

    job_id: ObjectId
    status: str
    fields: dict = field(default_factory=dict)


class JobEvents:
    """Subscribers to job events; callbacks run in the thread that made the change."""

    def __init__(self):
        self._ended: list[Callable[[JobEnded], None]] = []
        self._requeued: list[Callable[[ObjectId], None]] = []

    def on_ended(self, callback: Callable[[JobEnded], None]) -> None:
        self._ended.append(callback)

    def on_requeued(self, callback: Callable[[ObjectId], None]) -> None:
        self._requeued.append(callback)

    def ended(self, event: JobEnded) -> None:
        for callback in self._ended:
            callback(event)

    def requeued(self, job_id: ObjectId) -> None:
        for callback in self._requeued:
            callback(job_id)
