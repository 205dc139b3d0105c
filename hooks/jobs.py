"""Hooks of the jobs resource: thin callers of the job service (service/jobs/service.py).

POST /v1/jobs is not Eve's: service/api/jobs.py hands it to the job service.
"""

from flask import Request

from service.api.jobs import wait_for_job
from service.context import sibyl
from service.store.data import request_identity
from service.store.packed import unpacked


def on_pre_GET_jobs(request: Request, lookup: dict) -> None:
    """GET /v1/jobs/<id>?wait=: hold the request until the job finished or the wait ends."""
    wait_for_job(lookup)


def on_fetched_resource_jobs(response: dict) -> None:
    """Inputs stored packed (service/store/packed.py) are answered as the lists sent."""
    for job in response.get("_items", []):
        on_fetched_item_jobs(job)


def on_fetched_item_jobs(job: dict) -> None:
    if "inputs" in job:
        job["inputs"] = unpacked(job["inputs"])


def on_update_jobs(updates: dict, original: dict) -> None:
    """Only a job's tags may change."""
    sibyl().jobs.check_update(updates)


def on_updated_jobs(updates: dict, original: dict) -> None:
    """Replaced tags are carried onto the job's predictions."""
    if "tags" in updates:
        sibyl().jobs.retagged(original["_id"], updates["tags"], request_identity())


def on_delete_item_jobs(item: dict) -> None:
    """Refuse to delete a job that is still queued or running."""
    sibyl().jobs.check_deletable(item)


def on_deleted_item_jobs(item: dict) -> None:
    """A deleted job takes its predictions with it."""
    sibyl().jobs.deleted(item["_id"])
