"""Who is calling, and may they: bearer keys checked before any route runs.

Two steps, with the rate limiter between them (service/app.py registers all three in
order), so that failed attempts are counted and slowed too:
- authenticate: the request's key → `g.identity` (service/store/access.py), which the
  data layer scopes every read and write by; nothing is refused yet;
- authorize: the route's right (service/api/roles.py) against the identity's role:
  401 without a valid key, 403 without the right (naming it), and every route not in
  the table refused (fail closed), with a 403 that says where its entry goes.
A missing, malformed, unknown or revoked key gets the same 401, in the same time
(service/store/keys.py). With SIBYL_AUTH=off every request is ANONYMOUS and may do
everything; the app logs a warning each time it starts so.
"""

import logging

from eve.endpoints import error_endpoint
from flask import Flask, abort, current_app, g, request
from werkzeug.exceptions import Forbidden, Unauthorized

from service.api.metrics import open_to_caller
from service.api.roles import PUBLIC, identity_of, rights
from service.context import sibyl
from service.store.access import ANONYMOUS

log = logging.getLogger(__name__)

CHALLENGE = 'Bearer realm="sibyl"'
NO_KEY = (
    "a valid API key is required: send the header `Authorization: Bearer <key>` "
    "(an admin makes keys with POST /v1/keys or `python run.py keys create`)"
)


def register_authentication(app: Flask) -> None:
    if not app.config["AUTH"]:
        log.warning(
            "AUTHENTICATION IS OFF (SIBYL_AUTH=off): anyone who reaches this API may read, "
            "change and delete everything"
        )
    app.before_request(authenticate)


def register_authorization(app: Flask) -> None:
    app.before_request(authorize)


def is_public(right: str | None) -> bool:
    """Whether the request needs no key: a public route, or /metrics from an allowed address."""
    return right == PUBLIC or (right == "metrics:read" and open_to_caller())


def authenticate() -> None:
    """Set g.identity from the request's key (left unset when there is no valid key)."""
    if not current_app.config["AUTH"]:
        g.identity = ANONYMOUS
        return
    right = rights().needed(request.endpoint, request.method)
    if is_public(right):
        return
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        presented = ""
    key = sibyl().keys.check(presented.strip(), fresh=right in rights().fresh)
    if key is not None:
        g.identity = identity_of(key.role, key.owner, key.id)


def authorize() -> None:
    """401 without a valid key, 403 without the route's right."""
    identity = g.get("identity")
    table = rights()
    right = table.needed(request.endpoint, request.method)
    if is_public(right):
        return
    if identity is None:
        # Before routing errors too: a caller without a key learns nothing of the routes.
        response = error_endpoint(Unauthorized(NO_KEY))
        response.headers["WWW-Authenticate"] = CHALLENGE
        abort(response)
    if request.routing_exception is not None:
        return  # Flask answers the 404 or 405 next
    if right is None:
        abort(error_endpoint(Forbidden(unlisted_route())))
    if not table.may(identity, right):
        role = identity.role or "anonymous"
        holders = ", ".join(table.holders(right)) or "no role"
        abort(
            error_endpoint(
                Forbidden(
                    f"the {role} role may not {request.method} {request.path} "
                    f"(it needs {right}, which {holders} hold)"
                )
            )
        )


def unlisted_route() -> str:
    """The 403 of a route no table gives a right: refused to everyone, and the developer
    who added it is told where to declare it."""
    return (
        f"{request.method} {request.path} is refused to everyone: its route "
        f"({request.endpoint!r}, {request.method!r}) has no entry in the rights table. "
        "A resource's routes take their rights from its `roles` in schemas/; a route of "
        "the service's own goes in SERVICE_ROUTES in service/api/roles.py"
    )
