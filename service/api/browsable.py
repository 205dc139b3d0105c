"""The browsable API, as Django REST Framework's BrowsableAPIRenderer: the same views,
their JSON answer rendered as an HTML page when content negotiation chose HTML.

A page shows the answer (links clickable), breadcrumbs, a navigation bar of the
resources the visitor may read, the methods the visitor's role may use here, filter and
pagination controls, and forms built from the resource's schema (schemas/) for what the
role may do, beside a raw-JSON form. Navigation and forms are derived from DOMAIN, so a
resource added there has its pages without a change here; a resource may replace a
generic form with its own template (templates/browsable/forms/<resource>_create.html,
as the jobs' form with its model picker does). The visitor's key stays in the
browser (sessionStorage) and goes out as a bearer header: browsable.js fetches each
page with it and swaps it in, so a navigation without the key is answered as any
request without a key (401, with the key form). No cookies, so no CSRF surface; every
value from data is escaped, and the Content-Security-Policy allows scripts and styles
from Sibyl only.
"""

import json
from dataclasses import dataclass, field

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
    allowed = allowed_methods(identity)
    entry = current_app.config["DOMAIN"].get(resource)
    context = {
        "data": data,
        "status": status,
        "body": json_html(data),
        "crumbs": breadcrumbs(),
        "authenticated": may(identity, "browse"),
        "role": identity.role or "anyone (authentication off)",
        "allowed": allowed,
        "resource": resource if entry is not None else None,
        "kind": kind,
        "url": request.path,
        "args": request.args,
        "live": kind == "item_lookup"
        and resource == "jobs"
        and isinstance(data, dict)
        and data.get("status") not in (None, *FINISHED_STATUSES),
        "etag": data.get("_etag") if isinstance(data, dict) else None,
        "navigation": navigation(identity),
        "manages_keys": may(identity, "keys:manage"),
        "create_form": None,
        "change_form": None,
        # For the jobs' own form (forms/jobs_create.html), asked only when it is shown.
        "ready_models": lambda: ready_models(identity),
    }
    if entry is not None and kind == "resource" and "POST" in allowed:
        context["create_form"] = SchemaForm.to_create(entry)
    if entry is not None and kind == "item_lookup" and "PATCH" in allowed and status == 200:
        context["change_form"] = SchemaForm.to_change(entry, data)
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


def navigation(identity) -> list[tuple[str, str, str]]:
    """(name, URL, description) of each resource of DOMAIN the visitor may list."""
    prefix = current_app.api_prefix
    return [
        (name, f"{prefix}/{resource['url']}", resource.get("description", ""))
        for name, resource in current_app.config["DOMAIN"].items()
        if (right := right_needed(f"{name}|resource", "GET")) and may(identity, right)
    ]


@dataclass
class FormField:
    """One field of a form built from a Cerberus rule: the input that edits it."""

    name: str
    # text, number, checkbox, select, json (a textarea of JSON), file, datetime
    kind: str
    required: bool = False
    nullable: bool = False
    value: str = ""
    placeholder: str = ""
    options: list[tuple[str, str]] = field(default_factory=list)  # (value, label)
    attributes: dict[str, str] = field(default_factory=dict)  # min, max, step, maxlength

    @classmethod
    def of(cls, name: str, rule: dict, value=None) -> "FormField":
        """The input of a field (value: the document's, for a change)."""
        kind, default = rule.get("type"), rule.get("default")
        made = cls(name, "text", bool(rule.get("required")), bool(rule.get("nullable")))
        if "allowed" in rule:
            made.kind = "select"
            empty = [("", "—")] if made.nullable or not made.required else []
            made.options = empty + [(str(option), str(option)) for option in rule["allowed"]]
        elif kind in ("integer", "float", "number"):
            made.kind = "number"
            made.attributes["step"] = "1" if kind == "integer" else "any"
            for bound in ("min", "max"):  # the same names in Cerberus and HTML
                if bound in rule:
                    made.attributes[bound] = str(rule[bound])
        elif kind == "boolean":
            made.kind = "checkbox"
            made.value = "true" if (default if value is None else value) else ""
            return made
        elif kind == "media":
            made.kind = "file"
            return made
        elif kind == "datetime":
            made.kind = "datetime"
            made.placeholder = "2026-01-31T12:00:00Z"
        elif kind in ("list", "dict") or isinstance(kind, list):
            made.kind = "json"
            made.value = json.dumps(value) if value is not None else ""
            made.placeholder = json.dumps(default) if default is not None else ""
            return made
        if "maxlength" in rule and made.kind == "text":
            made.attributes["maxlength"] = str(rule["maxlength"])
        made.value = "" if value is None else str(value)
        if default is not None and not made.placeholder:
            made.placeholder = str(default)
        return made


@dataclass
class SchemaForm:
    """A form built from a resource's schema: create (POST) or change (PATCH) it."""

    action: str  # "create" or "change"
    title: str
    fields: list[FormField]

    @property
    def multipart(self) -> bool:
        return any(f.kind == "file" for f in self.fields)

    @classmethod
    def to_create(cls, entry: dict) -> "SchemaForm":
        """Every field a client may set (not read-only)."""
        schema = entry["schema"]
        fields = [FormField.of(f, rule) for f, rule in schema.items() if not rule.get("readonly")]
        return cls("create", f"New {entry['item_title']}", fields)

    @classmethod
    def to_change(cls, entry: dict, document) -> "SchemaForm":
        """The fields a PATCH may change (`changeable_fields`, else every writable one),
        filled with the document's values."""
        schema, values = entry["schema"], document if isinstance(document, dict) else {}
        names = entry.get("changeable_fields") or [
            f for f, rule in schema.items() if not rule.get("readonly")
        ]
        fields = [FormField.of(f, schema[f], values.get(f)) for f in names if f in schema]
        return cls("change", f"Change this {entry['item_title']}", fields)


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
