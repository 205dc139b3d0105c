"""Hooks of the models resource: version, stage and signature on upload, promotions,
guarded deletes."""

from eve.methods.common import payload
from flask import Request, g

from service.context import sibyl
from service.registry import model_store
from service.store.data import request_identity


def on_pre_POST_models(request: Request) -> None:
    """An upload does not choose its stage: refused before its file is inspected."""
    model_store.check_upload(payload())


def on_insert_models(items: list[dict]) -> None:
    """Number the version, record what the upload check learned about the file, and
    promote the first version of a name."""
    store = sibyl().store
    owner = request_identity().owner
    # Left by the `model_file` rule (service/api/validation.py), which ran in the
    # same request, one per uploaded document.
    inspected = g.pop("inspected_models", [])
    for model, inspection in zip(items, inspected, strict=True):
        model.update(
            version=model_store.next_version(store, model["name"]),
            format=inspection["format"],
            signature=inspection["signature"],
            test_call_ms=inspection["test_call_ms"],
            status="ready",
            **model_store.stage_of_new_version(store, model["name"], owner, model["_created"]),
        )
        model.setdefault("labels", None)
        model.setdefault("description", "")


def on_inserted_models(items: list[dict]) -> None:
    """New versions are visible to this process's jobs at once."""
    sibyl().models.forget()


def on_pre_PATCH_models(request: Request, lookup: dict) -> None:
    """A PATCH promotes: {"stage": "production"} and nothing else, checked before Eve
    validates it (a `file` in it would make Eve replace the model's file)."""
    model_store.check_promotion(payload())


def on_update_models(updates: dict, original: dict) -> None:
    """Eve's own write (fenced by If-Match) carries only `_updated` and the new ETag:
    the stage is written by the promotion, which must demote the production version
    in the same transaction (a second one is refused by a unique index)."""
    updates.pop("stage", None)


def on_updated_models(updates: dict, original: dict) -> None:
    """Promote the version; the answer shows what was written; this process's jobs see it
    at once."""
    store = sibyl().store.acting_as(request_identity())
    updates.update(model_store.promote(store, original, request_identity().owner))
    sibyl().models.forget()


def on_delete_item_models(item: dict) -> None:
    """Refuse to delete a model that queued or running jobs still need, or a production
    version while its name has others."""
    model_store.check_deletable(sibyl().store, item)


def on_deleted_item_models(item: dict) -> None:
    """A deleted version is no longer offered to this process's jobs."""
    sibyl().models.forget()
