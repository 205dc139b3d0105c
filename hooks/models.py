"""Hooks of the models resource: version and signature on upload, guarded deletes."""

from flask import g

from service.context import sibyl
from service.registry import model_store


def on_insert_models(items: list[dict]) -> None:
    """Number the version and record what the upload check learned about the file."""
    store = sibyl().store
    # Left by the `model_file` rule (service/api/validation.py), which ran in the
    # same request, one per uploaded document.
    inspected = g.pop("inspected_models", [])
    for model, inspection in zip(items, inspected, strict=True):
        model.update(
            version=model_store.next_version(store, model["name"]),
            format=inspection["format"],
            signature=inspection["signature"],
            status="ready",
        )
        model.setdefault("labels", None)
        model.setdefault("description", "")


def on_inserted_models(items: list[dict]) -> None:
    """New versions are visible to this process's jobs at once."""
    sibyl().models.forget()


def on_delete_item_models(item: dict) -> None:
    """Refuse to delete a model that queued or running jobs still need."""
    model_store.check_unused(sibyl().store, item)


def on_deleted_item_models(item: dict) -> None:
    """A deleted version is no longer offered to this process's jobs."""
    sibyl().models.forget()
