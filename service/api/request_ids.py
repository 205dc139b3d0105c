"""Request ids: every request gets one, and every answer, log line and job it makes
carries it.

A client's `X-Request-ID` is kept when it is 1 to 64 characters of letters, digits
and `._:-` (a proxy's or a caller's own trace id); any other value, and no header,
get a fresh uuid4 hex. The id is chosen by a WSGI middleware around the whole app, so
that every answer says it in `X-Request-ID` (errors, 404s of no route and Eve's own
endpoints too) and every record logged while the request is served carries it
(service/logs.py `REQUEST_ID`, read by the log filter and by the job service, which
stores it on the jobs the request creates). Views and hooks read it as `g.request_id`.
"""

import re
import uuid

from flask import Flask, g, request, request_started

from service.logs import request_scope

HEADER = "X-Request-ID"
ENVIRON_KEY = "sibyl.request_id"
# Nothing that could split a header or a log line, and short enough to log on every line.
WELL_FORMED = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def register(app: Flask) -> None:
    """Give every request of the app an id, from the WSGI call on."""
    app.wsgi_app = RequestIds(app.wsgi_app)
    request_started.connect(expose, app)


def accepted(sent: str | None) -> str | None:
    """The client's id if it is well-formed, else None."""
    if sent is not None and WELL_FORMED.fullmatch(sent):
        return sent
    return None


class RequestIds:
    """WSGI middleware: the request's id chosen, set for the thread while the app serves
    it, and put on the answer's headers (in place of any the app set)."""

    def __init__(self, wsgi_app):
        self.wsgi_app = wsgi_app

    def __call__(self, environ, start_response):
        request_id = accepted(environ.get("HTTP_X_REQUEST_ID")) or uuid.uuid4().hex
        environ[ENVIRON_KEY] = request_id

        def start_with_id(status, headers, exc_info=None):
            headers = [(name, value) for name, value in headers if name.lower() != "x-request-id"]
            headers.append((HEADER, request_id))
            return start_response(status, headers, exc_info)

        with request_scope(request_id):
            return self.wsgi_app(environ, start_with_id)


def expose(app: Flask, **extra) -> None:
    """Flask's request_started (before every before_request function): `g.request_id`."""
    g.request_id = request.environ.get(ENVIRON_KEY)
