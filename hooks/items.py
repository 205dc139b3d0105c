"""Hooks shared by every resource's items."""

from flask import Request, abort, current_app


def on_pre_DELETE(resource: str, request: Request, lookup: dict) -> None:
    """Deleting an item the caller cannot see is a 404, as a GET of it is.

    Eve answers 204 when the item is not found: harmless (nothing is deleted, and an
    item of another owner is not found through the scoped data layer), but a client
    should learn that its DELETE named nothing.
    """
    if lookup and current_app.data.find_one(resource, None, **lookup) is None:
        abort(404)
