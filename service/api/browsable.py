"""The browsable API, as Django REST Framework's BrowsableAPIRenderer: the same views,
their JSON answer rendered as an HTML page when content negotiation chose HTML.

A page shows the answer (links clickable), breadcrumbs, the methods the visitor's role
may use here, filter and pagination controls, and forms built from the resource's
schema for what the role may do, beside a raw-JSON form. The visitor's key stays in the
browser (sessionStorage) and goes out as a bearer header: browsable.js fetches each
page with it and swaps it in, so a navigation without the key is answered as any
request without a key (401, with the key form). No cookies, so no CSRF surface; every
value from data is escaped, and the Content-Security-Policy allows scripts and styles
from Sibyl only.
"""

import json

from flask import Blueprint, Flask, Response, current_app, render_template, request
from markupsafe import Markup, escape

from schemas.common import FINISHED_STATUSES
from service.api.negotiation import renders_html
from service.api.roles import may, right_needed
from service.context import sibyl
from service.store.data import request_identity

browsable = Blueprint(
    "browsable",
    __name__,
    template_folder="templates",
    static_folder="static",
    static_url_path="/_browsable",
)

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
PAGE_HEADER = "X-Sibyl-Page"
METHOD_ORDER = ("GET", "POST", "PATCH", "DELETE")


def register(app: Flask) -> None:
    """The pages' assets under /v1/_browsable/, and the HTML renderer (registered before
    versioning's after_request, so that it renders what versioning made of the answer)."""
    app.register_blueprint(browsable, url_prefix=app.api_prefix)
    app.after_request(render_html)


def render_html(response: Response) -> Response:
    """A JSON answer as a page, when negotiation chose HTML (same status code)."""
    if not renders_html() or not response.is_json or response.direct_passthrough:
        return response
    data = response.get_json(silent=True)
    page = render_template("browsable/page.html", **page_context(data, response.status_code))
    response.set_data(page)
    response.mimetype = "text/html"
    # The JSON's ETag is not this page's; a page holds what the visitor's key may see.
    response.headers.pop("ETag", None)
    response.headers["Cache-Control"] = "no-store"
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.vary.add("Accept")
    response.headers[PAGE_HEADER] = "1"  # what browsable.js puts in place: nothing else
    return response


def page_context(data, status: int) -> dict:
    identity = request_identity()
    resource, _, kind = (request.endpoint or "").partition("|")
    domain = current_app.config["DOMAIN"]
    allowed = allowed_methods(identity)
    context = {
        "data": data,
        "status": status,
        "body": json_html(data),
        "crumbs": breadcrumbs(),
        "authenticated": may(identity, "browse"),
        "role": identity.role or "anyone (authentication off)",
        "allowed": allowed,
        "resource": resource if resource in domain else None,
        "kind": kind,
        "url": request.path,
        "args": request.args,
        "live": kind == "item_lookup"
        and resource == "jobs"
        and isinstance(data, dict)
        and data.get("status") not in (None, *FINISHED_STATUSES),
        "etag": data.get("_etag") if isinstance(data, dict) else None,
        "models": [],
    }
    if resource == "jobs" and kind == "resource" and "POST" in allowed:
        context["models"] = ready_models(identity)
    if resource == "jobs" and kind == "item_lookup" and isinstance(data, dict):
        context["predictions_url"] = f"{current_app.api_prefix}/predictions?where=" + escape(
            json.dumps({"job": data.get("_id")})
        )
    return context


def allowed_methods(identity) -> list[str]:
    """The methods of this URL the visitor's role may use (what DRF shows from Allow)."""
    if request.url_rule is None:
        return []
    methods = set()
    for rule in current_app.url_map.iter_rules():
        # (Eve's POST on an item URL only answers 405.)
        if rule.rule == request.url_rule.rule and not rule.endpoint.endswith("item_post_override"):
            for method in rule.methods or ():
                right = right_needed(rule.endpoint, method)
                if right is not None and (right == "public" or may(identity, right)):
                    methods.add(method)
    return [method for method in METHOD_ORDER if method in methods]


def ready_models(identity) -> list[dict]:
    """The models a job can name, with what the form shows of each."""
    store = sibyl().store.acting_as(identity)
    fields = {"name": 1, "version": 1, "stage": 1, "labels": 1, "signature": 1}
    found = store.models.find({"status": "ready"}, fields).sort([("name", 1), ("version", -1)])
    return [
        {
            "reference": f"{model['name']}@{model['version']}",
            "label": f"{model['name']}@{model['version']}"
            + (" (production)" if model.get("stage") == "production" else ""),
            "signature": json.dumps((model.get("signature") or {}).get("inputs", [])),
            "labels": ", ".join(model.get("labels") or []),
        }
        for model in found.limit(200)
    ]


def breadcrumbs() -> list[tuple[str, str]]:
    """(name, URL) of each step of the path: v1 › jobs › <id>."""
    parts = [part for part in request.path.split("/") if part]
    return [(part, "/" + "/".join(parts[: i + 1])) for i, part in enumerate(parts)]


def json_html(value, key: str | None = None, indent: int = 0) -> Markup:
    """Pretty-printed JSON as escaped HTML, with URLs and `_links` hrefs as links."""
    pad = "  " * indent
    if isinstance(value, dict):
        if not value:
            return Markup("{}")
        items = [
            Markup('{}  <span class="k">{}</span>: {}').format(
                pad, json.dumps(name), json_html(item, name, indent + 1)
            )
            for name, item in value.items()
        ]
        return Markup("{\n") + Markup(",\n").join(items) + Markup("\n{}}}").format(pad)
    if isinstance(value, list):
        if not value:
            return Markup("[]")
        if all(not isinstance(item, dict | list) for item in value):
            return Markup('<span class="n">{}</span>').format(json.dumps(value))
        items = [Markup("{}  {}").format(pad, json_html(item, None, indent + 1)) for item in value]
        return Markup("[\n") + Markup(",\n").join(items) + Markup("\n{}]").format(pad)
    if isinstance(value, str):
        href = link_for(key, value)
        text = json.dumps(value, ensure_ascii=False)
        if href:
            return Markup('<a class="s" href="{}">{}</a>').format(href, text)
        return Markup('<span class="s">{}</span>').format(text)
    return Markup('<span class="n">{}</span>').format(json.dumps(value))


def link_for(key: str | None, value: str) -> str | None:
    """Where a string leads: an API path, a `_links` href (relative to the API root),
    or the id of a related document."""
    prefix = current_app.api_prefix
    if value.startswith(prefix + "/"):
        return value
    if key == "href":
        return f"{prefix}/{value}" if value != "/" else f"{prefix}/"
    if key == "job" and len(value) == 24:
        return f"{prefix}/jobs/{value}"
    return None
