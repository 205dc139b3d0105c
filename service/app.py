"""The app factory: Eve configured from settings.py, hooks and extra routes wired."""

from eve import Eve

import hooks
from service.api import (
    auth,
    browsable,
    errors,
    jobs,
    metrics,
    negotiation,
    openapi,
    rate_limits,
    request_checks,
    request_ids,
    versioning,
)
from service.api.health import health
from service.api.keys import keys
from service.api.roles import Rights
from service.api.validation import SibylValidator
from service.config import load_settings
from service.context import Sibyl
from service.store import media
from service.store.access import declared_access
from service.store.data import SibylMongo
from service.store.media import RequestScopedGridFS


def create_app(overrides: dict | None = None) -> Eve:
    """Build the Eve app: defaults from settings.py (the environment), then overrides."""
    config = load_settings(overrides)
    if not config["MONGO_URI"]:
        raise RuntimeError(
            "MONGO_URI is not set: start Sibyl with `python run.py` (which starts the "
            "embedded database) or set MONGO_URI to a MongoDB"
        )
    # Each resource's declarations (schemas/), checked before anything starts: a
    # resource that does not say who owns it, or who may use it, stops the start.
    declared_access(config["DOMAIN"])
    rights = Rights(config["DOMAIN"])
    app = Eve(
        settings=config,
        data=SibylMongo,
        validator=SibylValidator,
        media=RequestScopedGridFS,
    )
    app.extensions["rights"] = rights
    app.extensions["sibyl"] = Sibyl(app)
    browsable.register(app)
    errors.register(app)  # after the pages: its answers are rendered as pages too
    versioning.register(app)
    negotiation.register(app)
    auth.register_authentication(app)
    rate_limits.register(app)
    auth.register_authorization(app)
    request_checks.register(app)
    media.register(app)
    hooks.register(app)
    jobs.register(app)
    app.register_blueprint(health, url_prefix=app.api_prefix)
    app.register_blueprint(keys, url_prefix=app.api_prefix)
    metrics.register(app)
    request_ids.register(app)  # the outermost WSGI layer: every answer carries the id
    openapi.register(app)  # last: it describes every route registered before it
    return app
