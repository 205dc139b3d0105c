"""What each role may do, and which right every route needs: the one table of both.

A route that is not in ROUTE_RIGHTS is refused to everyone (fail closed), and a test
walks the app's URL map and fails on any route missing here. Which documents a
right reaches (a client's own jobs, an analyst's all) is the data layer's business
(service/store/access.py), not this table's.
"""

from service.store.access import Identity

# The README's roles table says the same in words.
RIGHTS: dict[str, frozenset[str]] = {
    "admin": frozenset(
        {
            "browse",
            "jobs:read",
            "jobs:submit",
            "jobs:change",
            "predictions:read",
            "models:read",
            "models:download",
            "models:manage",
            "keys:manage",
            "metrics:read",
        }
    ),
    "client": frozenset(
        {"browse", "jobs:read", "jobs:submit", "jobs:change", "predictions:read", "models:read"}
    ),
    "analyst": frozenset(
        {"browse", "jobs:read", "predictions:read", "models:read", "models:download"}
    ),
}
# Answered to anyone, without a key: load balancers' probes.
PUBLIC = "public"
# Rights whose requests check the key against the database every time, not against
# the per-process memory of valid keys: a revoked admin key can do nothing at all.
FRESH_RIGHTS = frozenset({"keys:manage", "models:manage"})

# (endpoint, method) -> the right it needs. HEAD and OPTIONS need what GET needs.
ROUTE_RIGHTS: dict[tuple[str, str], str] = {
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
    ("jobs|resource", "GET"): "jobs:read",
    ("jobs|resource", "POST"): "jobs:submit",
    ("jobs|item_lookup", "GET"): "jobs:read",
    ("jobs|item_lookup", "PATCH"): "jobs:change",
    ("jobs|item_lookup", "DELETE"): "jobs:change",
    ("jobs|item_post_override", "POST"): "jobs:change",
    ("jobs.cancel_job", "POST"): "jobs:change",
    ("predictions|resource", "GET"): "predictions:read",
    ("predictions|item_lookup", "GET"): "predictions:read",
    ("models|resource", "GET"): "models:read",
    ("models|resource", "POST"): "models:manage",
    ("models|item_lookup", "GET"): "models:read",
    ("models|item_lookup", "PATCH"): "models:manage",
    ("models|item_lookup", "DELETE"): "models:manage",
    ("models|item_post_override", "POST"): "models:manage",
    ("keys.list_keys", "GET"): "keys:manage",
    ("keys.create_key", "POST"): "keys:manage",
    ("keys.get_key", "GET"): "keys:manage",
    ("keys.revoke_key", "DELETE"): "keys:manage",
    # Also without a key from SIBYL_METRICS_ADDRESSES (service/api/metrics.py).
    ("metrics.scrape", "GET"): "metrics:read",
}


def right_needed(endpoint: str | None, method: str) -> str | None:
    """The right a request needs; None when the route is not in the table (refused)."""
    if method in ("HEAD", "OPTIONS"):
        method = "GET"
    return ROUTE_RIGHTS.get((endpoint or "", method))


def may(identity: Identity, right: str) -> bool:
    """Whether an authenticated identity holds a right (every right with auth off)."""
    if identity.role is None:
        return identity.sees_all  # authentication off: ANONYMOUS may do everything
    return right in RIGHTS.get(identity.role, frozenset())


def identity_of(role: str, owner: str, key_id: str) -> Identity:
    """The identity a key acts as: clients see their own documents, others all of them."""
    return Identity(owner=owner, sees_all=role != "client", role=role, key_id=key_id)
