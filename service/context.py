"""What the hooks and routes need beyond Eve, one per app: the store, the job service,
waiters, the dispatcher."""

import logging
import threading

from eve import Eve
from flask import current_app

from schemas.common import PRODUCTION
from service.jobs.completions import Completions
from service.jobs.events import JobEvents
from service.jobs.service import JobService
from service.registry.model_store import ModelLookup, promote_unstaged
from service.store.access import SYSTEM, Store
from service.store.keys import Keys

log = logging.getLogger(__name__)


class Sibyl:
    """Per-app services; the dispatcher thread starts with the first job."""

    def __init__(self, app: Eve):
        self.config = app.config
        # Eve's own client, reused outside requests (the dispatcher thread).
        with app.app_context():
            self.store = Store(app.data.driver.db, SYSTEM, app.data.access)
        self.keys = Keys(self.store.db.keys, app.config["KEY_CACHE_SECONDS"])
        # Developers' job hooks are added by hooks.register(app).
        self.events = JobEvents(self.store)
        self.completions = Completions(self.events)
        self.models = ModelLookup(self.store, app.config["MODEL_LOOKUP_TTL_S"])
        # Models stored before stages existed keep serving their name.
        promote_unstaged(self.store)
        self._dispatcher = None
        self._lock = threading.Lock()
        self.jobs = JobService(
            self.store,
            self.models,
            self.config,
            self.completions,
            lambda: self.dispatcher if self.runs_jobs else None,
        )

    @property
    def runs_jobs(self) -> bool:
        return self.config["INFERENCE"] == "in-process"

    @property
    def dispatcher(self):
        with self._lock:
            if self._dispatcher is None:
                from service.jobs.dispatch import Dispatcher

                self._dispatcher = Dispatcher(self.store, self.config, self.completions)
            return self._dispatcher

    def warm_up(self) -> None:
        """Start the dispatcher and load the production version of each model (what jobs
        naming a model without a version run on), in the background."""
        if not self.runs_jobs:
            return
        threading.Thread(
            target=self._load_production_models, name="sibyl-warm-up", daemon=True
        ).start()

    def _load_production_models(self) -> None:
        engine = self.dispatcher.engine
        production = self.store.models.find({"status": "ready", "stage": PRODUCTION})
        for model in list(production)[: self.config["MODEL_CACHE_SIZE"]]:
            try:
                engine.runners.get(model).start()
            except Exception:
                log.exception("could not load model %s v%s", model["name"], model["version"])

    def close(self) -> None:
        if self._dispatcher is not None:
            self._dispatcher.stop()


def sibyl() -> Sibyl:
    """The services of the app handling the current request."""
    return current_app.extensions["sibyl"]
