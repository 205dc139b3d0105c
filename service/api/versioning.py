"""API versions, chosen as Django REST Framework's URL-path, Accept-header and
query-parameter versioning do, all three at once.

Eve serves one set of routes under /v1, the canonical URL: the stored documents and
the hooks speak version 1. Another version is a view of them, declared in settings
(API_VERSIONS): top-level fields it names differently, per resource, and whether it
is deprecated. A request picks its version with
- `?version=2` or `Accept: application/json; version=2` (they must agree), else
- its URL: /v2/jobs is served by the /v1 routes as version 2;
an unknown version is a 404 (URL, query) or a 406 (header) naming those served.
`request.api_version` holds the version for hooks and views; every answer says it in
`API-Version`, and a deprecated version's answers carry `Deprecation` (RFC 9745) and
`Sunset` (RFC 8594).
"""

import ast
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from urllib.parse import urljoin

from flask import Flask, Response, abort, current_app, request
from werkzeug.datastructures import ImmutableMultiDict

from service.api.negotiation import accept_header
from service.errors import Rejected, echoed

URL_VERSION = "sibyl.url_version"  # environ: the version a /vN/ URL named
API_VERSION = "sibyl.api_version"  # environ: the version the request is served as
SENT_PATH = "sibyl.sent_path"  # environ: the path as sent, before /v2/ became /v1/
AS_SENT = "sibyl.issues_as_sent"  # environ: the answer's _issues name fields as sent
VERSIONED_PATH = re.compile(r"^/v(?P<version>[^/]+)(?P<rest>/.*)?$")
JSON_BODY_METHODS = ("POST", "PUT", "PATCH")


@dataclass(frozen=True)
class ApiVersion:
    """One served version: fields renamed from version 1, per resource; deprecation."""

    name: str
    renamed: dict[str, dict[str, str]] = field(default_factory=dict)
    deprecated: datetime | None = None
    sunset: datetime | None = None

    def names(self, resource: str) -> dict[str, str]:
        """Version 1's field names → this version's, for the resource."""
        return self.renamed.get(resource, {})

    def headers(self) -> dict[str, str]:
        headers = {"API-Version": self.name}
        if self.deprecated is not None:
            headers["Deprecation"] = f"@{int(self.deprecated.timestamp())}"
        if self.sunset is not None:
            headers["Sunset"] = format_datetime(self.sunset, usegmt=True)
        return headers


def versions_from(config: dict) -> dict[str, ApiVersion]:
    """settings.API_VERSIONS as ApiVersions; SystemExit at start-up on a bad entry."""
    canonical = config["API_VERSION"].removeprefix("v")
    declared = config["API_VERSIONS"]
    if canonical not in declared:
        raise SystemExit(f"API_VERSIONS must declare {canonical!r}, the version Eve serves")
    versions = {}
    for name, entry in declared.items():
        unknown = set(entry) - {"renamed", "deprecated", "sunset"}
        if unknown:
            raise SystemExit(f"API_VERSIONS[{name!r}]: unknown keys {sorted(unknown)}")
        if name == canonical and entry.get("renamed"):
            raise SystemExit(
                f"API_VERSIONS[{name!r}] is the stored representation: it renames nothing"
            )
        versions[name] = ApiVersion(
            name=name,
            renamed=entry.get("renamed", {}),
            deprecated=_date(name, entry.get("deprecated")),
            sunset=_date(name, entry.get("sunset")),
        )
    return versions


def _date(name: str, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value).replace(tzinfo=UTC)
    except ValueError:
        raise SystemExit(f"API_VERSIONS[{name!r}]: {value!r} is not an ISO 8601 date") from None


def register(app: Flask) -> None:
    """Serve every version from Eve's /v1 routes (first of all before_request functions,
    so that even a 401 says its version)."""
    versions = versions_from(app.config)
    canonical = app.config["API_VERSION"].removeprefix("v")
    app.extensions["api_versions"] = versions
    app.wsgi_app = PathVersions(app.wsgi_app, canonical, set(versions))
    app.before_request_funcs.setdefault(None, []).insert(0, select_version)
    app.after_request(present_version)


class PathVersions:
    """WSGI middleware: /v2/... is routed as /v1/..., remembering that the URL said 2."""

    def __init__(self, wsgi_app, canonical: str, served: set[str]):
        self.wsgi_app, self.canonical, self.served = wsgi_app, canonical, served

    def __call__(self, environ, start_response):
        match = VERSIONED_PATH.match(environ.get("PATH_INFO", ""))
        if match:
            version = match["version"]
            environ[URL_VERSION] = version
            if version != self.canonical and version in self.served:
                environ[SENT_PATH] = environ["PATH_INFO"]
                environ["PATH_INFO"] = f"/v{self.canonical}{match['rest'] or ''}"
        return self.wsgi_app(environ, start_response)


def served_versions() -> dict[str, ApiVersion]:
    return current_app.extensions["api_versions"]


def select_version() -> None:
    """Pick the request's version; 404/406/400 for versions not served or disagreeing."""
    versions = served_versions()
    listed = ", ".join(versions)
    url_version = request.environ.get(URL_VERSION)
    if url_version is not None and url_version not in versions:
        abort(404, f"API version {echoed(url_version)} is not served; versions: {listed}")
    if len(request.args.getlist("version")) > 1:
        abort(400, description="?version= is given more than once")
    asked = request.args.get("version")
    if asked is not None and asked not in versions:
        abort(404, description=f"version={echoed(asked)} is not served; versions: {listed}")
    _, in_header = accept_header()
    unknown = sorted(in_header - set(versions))
    if unknown:
        abort(406, f"Accept: version={echoed(unknown[0])} is not served; versions: {listed}")
    if len(in_header) > 1 or (asked is not None and in_header and in_header != {asked}):
        abort(400, description="the version asked for in ?version= and Accept disagree")
    chosen = asked or next(iter(in_header), None) or url_version
    if SENT_PATH in request.environ and chosen != url_version:
        # /v1/ is the canonical URL, which ?version= or Accept may serve as another
        # version; a /v2/ URL names its version, and nothing else may say otherwise.
        abort(400, description=f"the URL names version {url_version}, the request {chosen}")
    if chosen is None:
        return  # not an API route (/static)
    request.environ[API_VERSION] = chosen
    version = versions[chosen]
    resource = _resource()
    if version.names(resource):
        _translate_request(version.names(resource))


def _resource() -> str:
    """The resource the request is for: Eve's endpoints are `jobs|item_lookup`, a
    resource's own blueprint routes `jobs.cancel_job` ("" for Sibyl's other routes)."""
    return re.split(r"[|.]", request.endpoint or "")[0]


def _translate_request(names: dict[str, str]) -> None:
    """The version's field names in the body and in where, projection and sort → v1's."""
    to_stored = {new: old for old, new in names.items()}
    if request.method in JSON_BODY_METHODS and request.is_json:
        body = request.get_json(silent=True)
        documents = body if isinstance(body, list) else [body]
        # A field under its version-1 name is not a field of this version.
        issues = [
            (position, old, f"unknown field (version {request.api_version} calls it {new})")
            for position, document in enumerate(documents)
            if isinstance(document, dict)
            for old, new in names.items()
            if old in document and old not in to_stored
        ]
        if issues:
            request.environ[AS_SENT] = True
            raise Rejected(issues)
        for document in documents:
            if isinstance(document, dict):
                _rename(document, to_stored)
    args = request.args.to_dict(flat=False)
    query_names = QueryNames(
        to_stored, {old: new for old, new in names.items() if old not in to_stored}
    )
    for name, translate in (("where", _where), ("projection", _keys), ("sort", _sort)):
        if name in args:
            query_names.argument = name
            args[name] = [translate(value, query_names) for value in args[name]]
    request.__dict__["args"] = ImmutableMultiDict(args)


def _rename(document: dict, names: dict[str, str]) -> None:
    """Rename top-level fields in place, keeping their order ("tags.x" is in "tags")."""
    renamed = {key: _renamed(key, names) for key in document}
    if all(key == new for key, new in renamed.items()):
        return
    items = [(renamed[key], value) for key, value in document.items()]
    document.clear()
    document.update(items)


class QueryNames(dict):
    """A version's names → version 1's, for a query: a version-1 name that this version
    calls otherwise is refused (400), as it is in a body (422)."""

    def __init__(self, to_stored: dict[str, str], refused: dict[str, str]):
        super().__init__(to_stored)
        self.refused, self.argument = refused, ""


def _renamed(key: str, names: dict[str, str]) -> str:
    field, dot, rest = key.partition(".")
    refused = getattr(names, "refused", {})
    if field in refused:
        abort(
            400,
            f"{names.argument}: unknown field {echoed(field)} "
            f"(version {request.api_version} calls it {refused[field]})",
        )
    return names[field] + dot + rest if field in names else key


def _where(value: str, names: dict[str, str]) -> str:
    """A JSON `where` with its fields renamed (also inside $and, $or, $nor); other
    forms are left for the request checks to judge."""
    try:
        query = json.loads(value)
    except ValueError:
        return value
    stack = [query]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            _rename(node, names)
            for key in ("$and", "$or", "$nor"):
                if isinstance(node.get(key), list):  # any other value: the checks' 400
                    stack += node[key]
    return json.dumps(query)


def _keys(value: str, names: dict[str, str]) -> str:
    try:
        document = json.loads(value)
    except ValueError:
        return value
    if isinstance(document, dict):
        _rename(document, names)
    return json.dumps(document)


def _sort(value: str, names: dict[str, str]) -> str:
    """`-a,b` or `[("a", -1)]` with the fields renamed."""
    if value.lstrip().startswith("["):
        try:
            pairs = ast.literal_eval(value)
            return repr([(_renamed(str(name), names), *rest) for name, *rest in pairs])
        except (ValueError, SyntaxError, TypeError, AttributeError, MemoryError, RecursionError):
            return value
    fields = []
    for name in value.split(","):
        sign, bare = ("-", name[1:]) if name.startswith("-") else ("", name)
        fields.append(sign + _renamed(bare, names))
    return ",".join(fields)


def present_version(response: Response) -> Response:
    """Say the version; in a version that renames fields, rename them in the answer."""
    chosen = request.environ.get(API_VERSION)
    if chosen is None:
        return response
    version = served_versions()[chosen]
    response.headers.update(version.headers())
    names = version.names(_resource())
    if names and response.is_json and not response.direct_passthrough:
        body = response.get_json(silent=True)
        if isinstance(body, dict):
            for document in [body, *body.get("_items", [])]:
                if isinstance(document, dict):
                    _rename(document, names)
                    issues = document.get("_issues")
                    if isinstance(issues, dict) and AS_SENT not in request.environ:
                        _rename(issues, names)
            response.set_data(json.dumps(body))
    # Eve's Location is relative: resolved against the /v1 path the request was routed
    # as, it would lead a client of /v2/ URLs back to version 1.
    sent_path = request.environ.get(SENT_PATH)
    if sent_path and "Location" in response.headers:
        sent_url = request.host_url.rstrip("/") + sent_path
        response.headers["Location"] = urljoin(sent_url, response.headers["Location"])
    return response
