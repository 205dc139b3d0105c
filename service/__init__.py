"""Sibyl: TensorFlow inference jobs behind an Eve REST API, stored in MongoDB."""

from service.app import create_app

__all__ = ["create_app"]
