"""What each role may do, and which right every route needs: the one table of both.

A resource's routes (Eve's, `<resource>|resource` and `<resource>|item_lookup`) need its
two rights, derived from its schemas/ entry: `<resource>:read` for GET (and HEAD,
OPTIONS), `<resource>:write` for POST, PATCH and DELETE; its `roles` say which roles hold
each (without `roles`: every role reads, an owned resource is written by admins and
clients, a shared one by admins). The service's own routes are listed in SERVICE_ROUTES
with the rights of SERVICE_RIGHTS. A route that is in neither is refused to everyone
(fail closed), and a test walks the app's URL map and fails on any route without a
right. Which documents a right reaches (a client's own jobs, an analyst's all) is the
data layer's business (service/store/access.py), not this table's.
"""

from flask import current_app

from schemas.common import OWNED, ROLES
from service.store.access import Identity

# Answered to anyone, without a key: load balancers' probes.
PUBLIC = "public"
# What each role may do besides reading and writing resources. The README's roles
# table says the same in words.
SERVICE_RIGHTS: dict[str, frozenset[str]] = {
    "admin": frozenset({"browse", "models:download", "keys:manage", "metrics:read"}),
    "client": frozenset({"browse"}),
    "analyst": frozenset({"browse", "models:download"}),
}
# The service's own routes: (endpoint, method) -> the right it needs. HEAD and OPTIONS
# need what GET needs.
SERVICE_ROUTES: dict[tuple[str, str], str] = {
    ("health.healthz", "GET"): PUBLIC,
    ("health.readyz", "GET"): PUBLIC,
    ("home", "GET"): "browse",
    ("static", "GET"): "browse",
    # The browsable API's stylesheet and script: a page without a key needs them too.
    ("browsable.static", "GET"): PUBLIC,
    # The API's description: what the routes are is no secret.
    ("openapi.openapi_document", "GET"): PUBLIC,
    ("docs.docs_page", "GET"): PUBLIC,
    ("docs.docs_asset", "GET"): PUBLIC,
    ("media", "GET"): "models:download",
    ("jobs.cancel_job", "POST"): "jobs:write",
    ("keys.list_keys", "GET"): "keys:manage",
    ("keys.create_key", "POST"): "keys:manage",
    ("keys.get_key", "GET"): "keys:manage",
    ("keys.revoke_key", "DELETE"): "keys:manage",
    # Also without a key from SIBYL_METRICS_ADDRESSES (service/api/metrics.py).
    ("metrics.scrape", "GET"): "metrics:read",
}
# Who reads and writes a resource whose entry has no `roles`.
DEFAULT_ROLES = {
    "owned": {"read": ROLES, "write": ["admin", "client"]},
    "shared": {"read": ROLES, "write": ["admin"]},
}
ACTIONS = ("read", "write")


class Rights:
    """The rights table of one app: each role's rights and each route's, from its DOMAIN."""

    def __init__(self, domain: dict):
        self.resources = set(domain)
        rights = {role: set(SERVICE_RIGHTS[role]) for role in ROLES}
        for name, resource in domain.items():
            for action, roles in declared_roles(name, resource).items():
                for role in roles:
                    rights[role].add(f"{name}:{action}")
        self.rights = {role: frozenset(held) for role, held in rights.items()}
        # Rights only admins hold (managing keys, models): requests needing one check the
        # key against the database every time, not against the per-process memory of
        # valid keys, so a revoked admin key can do none of it.
        others = set().union(*(held for role, held in self.rights.items() if role != "admin"))
        self.fresh = self.rights["admin"] - others

    def needed(self, endpoint: str | None, method: str) -> str | None:
        """The right a request needs; None when the route is in no table (refused)."""
        if method in ("HEAD", "OPTIONS"):
            method = "GET"
        right = SERVICE_ROUTES.get((endpoint or "", method))
        if right is None:
            resource, generated, _ = (endpoint or "").partition("|")
            if generated and resource in self.resources:
                right = f"{resource}:{'read' if method == 'GET' else 'write'}"
        return right

    def may(self, identity: Identity, right: str) -> bool:
        """Whether an authenticated identity holds a right (every right with auth off)."""
        if identity.role is None:
            return identity.sees_all  # authentication off: ANONYMOUS may do everything
        return right in self.rights.get(identity.role, frozenset())

    def holders(self, right: str) -> list[str]:
        """The roles that hold a right."""
        return sorted(role for role, held in self.rights.items() if right in held)


def declared_roles(name: str, resource: dict) -> dict[str, list[str]]:
    """A resource's `roles` ({"read": [...], "write": [...]}), or its access's default;
    SystemExit at start-up naming a wrong one."""
    roles = resource.get("roles")
    if roles is None:
        return DEFAULT_ROLES["owned" if resource.get("access") == OWNED else "shared"]
    if not isinstance(roles, dict) or set(roles) - set(ACTIONS):
        raise SystemExit(
            f'resource {name!r}: "roles" must be {{"read": [roles], "write": [roles]}}, '
            f"got {roles!r}"
        )
    for action, holders in roles.items():
        if not isinstance(holders, list | tuple) or set(holders) - set(ROLES):
            raise SystemExit(
                f'resource {name!r}: "roles"[{action!r}] must list roles among '
                f"{', '.join(ROLES)}, got {holders!r}"
            )
    return {action: list(roles.get(action, ())) for action in ACTIONS}


def rights() -> Rights:
    """The rights table of the app handling the request (built by create_app)."""
    return current_app.extensions["rights"]


def right_needed(endpoint: str | None, method: str) -> str | None:
    """The right a request needs; None when the route is in no table (refused)."""
    return rights().needed(endpoint, method)


def may(identity: Identity, right: str) -> bool:
    """Whether an authenticated identity holds a right (every right with auth off)."""
    return rights().may(identity, right)


def identity_of(role: str, owner: str, key_id: str) -> Identity:
    """The identity a key acts as: clients see their own documents, others all of them."""
    return Identity(owner=owner, sees_all=role != "client", role=role, key_id=key_id)
