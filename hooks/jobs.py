"""Hooks of the jobs resource: bookkeeping on insert, guards on update and delete."""

from datetime import UTC, datetime

from flask import abort

from schemas.common import FINISHED_STATUSES

# Fields a client may change after submitting a job.
PATCHABLE_FIELDS = {"tags"}


def on_insert_jobs(items: list[dict]) -> None:
    """Give each new job its initial status and bookkeeping before it is stored."""
    now = datetime.now(UTC)
    for job in items:
        total = len(job["inputs"]) if isinstance(job["inputs"], list) else None
        job.update(
            status="queued",
            attempts=0,
            lease=None,
            error=None,
            progress={"done": 0, "total": total},
            queued_at=now,
            started_at=None,
            finished_at=None,
            owner=None,
        )


def on_update_jobs(updates: dict, original: dict) -> None:
    """Refuse changes to what a job computes: only its tags may be edited."""
    frozen = sorted(set(updates) - PATCHABLE_FIELDS - {"_updated", "_etag"})
    if frozen:
        abort(422, description=f"{', '.join(frozen)}: a submitted job can only change its tags")


def on_delete_item_jobs(item: dict) -> None:
    """Refuse to delete a job that is still queued or running."""
    if item.get("status") not in FINISHED_STATUSES:
        abort(
            409, description=f"job is {item.get('status')}: it can be deleted once it has finished"
        )
