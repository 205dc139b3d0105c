"""Content negotiation, as Django REST Framework does it: one point picks what an answer
is rendered as, from `?format=` or else the Accept header.

The API renders JSON, and HTML for a client that prefers it (a browser: the browsable
API, service/api/browsable.py); JSON comes first, so `*/*` (curl, requests) gets JSON
as before. Eve's XML renderer is off (settings.RENDERERS): it wrote field
names as tag names unescaped, so its output could be malformed. An Accept the API
cannot produce (`text/csv`, `application/xml`) is a 406 naming what it can, rather than
JSON under a 200 the client did not ask for. Routes that serve files of their own type
(a model's file, the API docs' assets) are not negotiated.
"""

from flask import Flask, Response, abort, request
from werkzeug.datastructures import MIMEAccept
from werkzeug.http import parse_accept_header, parse_options_header

from service.errors import echoed

# What ?format= may name, and the media type each renders; the first is the default.
FORMATS = {"json": "application/json", "html": "text/html"}
MEDIA_TYPE = "sibyl.media_type"  # environ: the media type chosen
# Endpoints (or blueprints) that answer with their own media types.
NOT_NEGOTIATED = {"media", "static", "docs", "browsable"}
PARSED_ACCEPT = "sibyl.accept"  # environ: accept_header()'s result


def register(app: Flask) -> None:
    app.before_request(negotiate)
    app.after_request(mark_negotiated)


def mark_negotiated(response: Response) -> Response:
    """Say that an answer depends on Accept (caches keep a page and its JSON apart), and
    that its Content-Type is meant: a browser sniffs no JSON string into a page."""
    if not (request.endpoint in NOT_NEGOTIATED or request.blueprint in NOT_NEGOTIATED):
        response.vary.add("Accept")
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def negotiate() -> None:
    """Choose the answer's media type; 406 when neither ?format= nor the Accept header
    names one the API renders."""
    if request.endpoint in NOT_NEGOTIATED or request.blueprint in NOT_NEGOTIATED:
        return
    chosen = request.args.get("format")
    if chosen is not None:
        if chosen not in FORMATS:
            abort(406, description=f"format={echoed(chosen)}: the API renders {_offered()}")
        request.environ[MEDIA_TYPE] = FORMATS[chosen]
        return
    accept, _ = accept_header()
    if not accept:
        return
    best = accept.best_match(FORMATS.values())
    if best is None:
        abort(
            406,
            description=f"Accept: {echoed(request.headers['Accept'])} names nothing the API "
            f"renders; it renders {', '.join(FORMATS.values())} (or ask with {_offered()})",
        )
    request.environ[MEDIA_TYPE] = best


def renders_html() -> bool:
    return request.environ.get(MEDIA_TYPE) == FORMATS["html"]


def accept_header() -> tuple[MIMEAccept, set[str]]:
    """The Accept header's media ranges without their parameters (matched on type alone:
    `application/json; charset=utf-8` is JSON), and the versions they ask for
    (service/api/versioning.py); parsed once."""
    parsed = request.environ.get(PARSED_ACCEPT)
    if parsed is None:
        parsed = request.environ[PARSED_ACCEPT] = _parse_accept(request.headers.get("Accept"))
    return parsed


def _parse_accept(header: str | None) -> tuple[MIMEAccept, set[str]]:
    ranges, versions = [], set()
    for value, quality in parse_accept_header(header):
        mimetype, options = parse_options_header(value)
        if "version" in options:
            versions.add(options["version"])
        ranges.append((mimetype, quality))
    return MIMEAccept(ranges), versions


def _offered() -> str:
    return " or ".join(f"format={name}" for name in FORMATS)
