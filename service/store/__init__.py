"""Data: the owner-scoped access layer, Eve's Mongo layer, media storage, the embedded database."""
