"""GridFS media storage that takes back the files of a request that failed.

Eve stores an uploaded file before the document that points to it, and never
removes it when the insert then fails. Files put during a request are
remembered, and deleted again if the request ends with an error: nothing is
half-written.
"""

import logging

from eve.io.mongo.media import GridFSMediaStorage
from flask import Flask, Response, current_app, g, has_request_context
from pymongo.errors import PyMongoError

log = logging.getLogger(__name__)


class RequestScopedGridFS(GridFSMediaStorage):
    """GridFS media storage remembering the files each request stored."""

    def put(self, content, filename=None, content_type=None, resource=None):
        file_id = super().put(content, filename, content_type, resource)
        if has_request_context():
            g.setdefault("stored_media", []).append((file_id, resource))
        return file_id


def discard_media_of_failed_request(response: Response) -> Response:
    """After a failed request, delete the files it stored."""
    stored = g.pop("stored_media", [])
    if response.status_code >= 400:
        for file_id, resource in stored:
            try:
                current_app.media.delete(file_id, resource)
            except PyMongoError:
                log.exception("could not delete file %s of a failed request", file_id)
    return response


def register(app: Flask) -> None:
    app.after_request(discard_media_of_failed_request)
