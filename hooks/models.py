"""Hooks of the models resource: version and signature on upload, guarded deletes."""

from flask import abort, g

from service.context import sibyl
from service.registry import model_store


def on_insert_models(items: list[dict]) -> None:
    """Number the version and record what the upload check learned about the file."""
    db = sibyl().db
    inspected = g.pop("inspected_models", [])
    for model, inspection in zip(items, inspected, strict=True):
        model.update(
            version=model_store.next_version(db, model["name"]),
            format=inspection["format"],
            signature=inspection["signature"],
            status="ready",
            owner=None,
        )
        model.setdefault("labels", None)
        model.setdefault("description", "")


def on_inserted_models(items: list[dict]) -> None:
    """New versions are visible to this process's jobs at once."""
    sibyl().models.forget()


def on_deleted_item_models(item: dict) -> None:
    """A deleted version is no longer offered to this process's jobs."""
    sibyl().models.forget()


def on_delete_item_models(item: dict) -> None:
    """Refuse to delete a model that queued or running jobs still need."""
    busy = sibyl().db.jobs.find_one(
        {"status": {"$in": ["queued", "running"]}, "model_ref._id": item["_id"]}, {"_id": 1}
    )
    if busy is not None:
        abort(409, description="the model has queued or running jobs: delete it once they finish")
