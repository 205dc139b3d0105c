"""The app factory: Eve configured from settings.py, hooks and extra routes wired."""

import copy

from eve import Eve

import hooks
import settings
from service import errors, media, request_checks
from service.context import Sibyl
from service.data import SibylMongo
from service.health import health
from service.media import RequestScopedGridFS
from service.validation import SibylValidator


def load_settings() -> dict:
    """Return the upper-case names of settings.py as a fresh dict."""
    values = {name: getattr(settings, name) for name in dir(settings) if name.isupper()}
    # Eve fills in the DOMAIN it is given: each app needs its own copy.
    return copy.deepcopy(values)


def create_app(overrides: dict | None = None) -> Eve:
    """Build the Eve app: defaults from settings.py (the environment), then overrides."""
    config = load_settings()
    config.update(overrides or {})
    if not config["MONGO_URI"]:
        raise RuntimeError(
            "MONGO_URI is not set: start Sibyl with `python run.py` (which starts the "
            "embedded database) or set MONGO_URI to a MongoDB"
        )
    app = Eve(
        settings=config,
        data=SibylMongo,
        validator=SibylValidator,
        media=RequestScopedGridFS,
    )
    app.extensions["sibyl"] = Sibyl(app)
    errors.register(app)
    request_checks.register(app)
    media.register(app)
    hooks.register(app)
    app.register_blueprint(health, url_prefix=app.api_prefix)
    return app
