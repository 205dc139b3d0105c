"""GridFS media storage that takes back the files of a request that failed, and
serves every stored file as a download.

Eve stores an uploaded file before the document that points to it, and never
removes it when the insert then fails. Files put during a request are
remembered, and deleted again if the request ends with an error: nothing is
half-written.

Eve's media endpoint answers with the content type the uploader claimed: a model
"uploaded" as text/html would be served as a page of Sibyl's origin. Every file
is served as an attachment of bytes instead.
"""

import logging
import re

from eve.io.mongo.media import GridFSMediaStorage
from flask import Flask, Response, current_app, g, has_request_context, request
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


MEDIA_ENDPOINT = "media"  # the name Eve gives its media route
UNSAFE_FILENAME_CHARACTERS = re.compile(r"[^A-Za-z0-9._-]")


def serve_media_as_download(response: Response) -> Response:
    """Media files are bytes to save, whatever content type their uploader claimed."""
    if request.endpoint != MEDIA_ENDPOINT:
        return response
    response.headers["X-Content-Type-Options"] = "nosniff"
    if response.status_code < 300:
        response.headers["Content-Type"] = "application/octet-stream"
        response.headers["Content-Disposition"] = (
            f'attachment; filename="{download_name(request.view_args.get("_id"))}"'
        )
    return response


def download_name(file_id) -> str:
    """The stored file's name, reduced to characters safe in any header and file system."""
    stored = current_app.media.get(file_id)  # None when unreadable: Eve catches its errors
    name = UNSAFE_FILENAME_CHARACTERS.sub("_", getattr(stored, "filename", None) or "")
    name = name.lstrip("._")[:100]
    return name or f"model-{file_id}"


def register(app: Flask) -> None:
    app.after_request(discard_media_of_failed_request)
    app.after_request(serve_media_as_download)
