"""The settings of one app or worker, as a dict: settings.py's values, then overrides."""

import copy

import settings


def load_settings(overrides: dict | None = None) -> dict:
    """Return the upper-case names of settings.py as a fresh dict, updated with overrides."""
    values = {name: getattr(settings, name) for name in dir(settings) if name.isupper()}
    # Eve fills in the DOMAIN it is given: each app needs its own copy.
    config = copy.deepcopy(values)
    config.update(overrides or {})
    return config
