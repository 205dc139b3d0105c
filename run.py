"""Sibyl's command line.

python run.py [serve]   the API under gunicorn (default); starts the embedded
                        database first when MONGO_URI is unset, and trains the
                        demo models on an empty database
python run.py worker    a worker process running queued jobs (any number; with
                        SIBYL_INFERENCE=workers the API only queues)
"""

import argparse
import logging
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pymongo
from gunicorn.app.base import BaseApplication

import settings
from service.store.access import Store
from service.store.embedded_db import EmbeddedDatabase

# Where `serve` leaves the embedded database's URI for workers on this machine.
EMBEDDED_URI_FILE = Path(settings.EMBEDDED_DB_PATH) / "uri"

log = logging.getLogger("sibyl")


class ApiServer(BaseApplication):
    """Gunicorn running the Sibyl app factory in each worker process."""

    def __init__(self, overrides: dict, options: dict):
        self.overrides = overrides
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self):
        from service.app import create_app

        return create_app(self.overrides)


def announce(server) -> None:
    """Gunicorn when_ready: say where the API is once it listens (not before)."""
    log.info("Sibyl API at http://%s:%s/v1/", settings.HOST, settings.PORT)


def warm_up(worker) -> None:
    """Gunicorn post_worker_init: load the models before the first job needs them."""
    worker.wsgi.extensions["sibyl"].warm_up()


def close(server, worker) -> None:
    """Gunicorn worker_exit: let the dispatcher finish its batch."""
    worker.wsgi.extensions["sibyl"].close()


def database_of(mongo_uri: str) -> pymongo.database.Database:
    client = pymongo.MongoClient(mongo_uri, tz_aware=True, **settings.MONGO_OPTIONS)
    return client.get_default_database(settings.MONGO_DBNAME)


def ensure_demo_models(mongo_uri: str) -> None:
    """Train and register the demo models, in a child so this process never loads TensorFlow."""
    models = Store(database_of(mongo_uri)).models
    if len(list(models.find({"name": {"$in": ["iris", "digits"]}}, {"_id": 1}).limit(2))) == 2:
        return
    log.info("training the demo models (once, about half a minute)")
    subprocess.run(
        [sys.executable, "-m", "service.demo.models"],
        env={**os.environ, "MONGO_URI": mongo_uri},
        check=True,
    )


def redact(uri: str) -> str:
    """Hide the password in a MongoDB URI before logging it."""
    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", uri)


def serve(args: argparse.Namespace) -> None:
    """Start the database if needed, then the API; stop both on Ctrl-C or SIGTERM."""
    database = None
    mongo_uri = settings.MONGO_URI
    if not mongo_uri:
        database = EmbeddedDatabase(settings.EMBEDDED_DB_PATH, settings.EMBEDDED_DB_PORT)
        database.start()
        mongo_uri = database.uri
        EMBEDDED_URI_FILE.write_text(mongo_uri)
        log.info("embedded SecantusDB at %s, data in %s", mongo_uri, database.path.resolve())
    else:
        log.info("MongoDB at %s", redact(mongo_uri))
    log.info("inference: %s", settings.INFERENCE)
    options = {
        "bind": f"{settings.HOST}:{settings.PORT}",
        "workers": settings.WEB_WORKERS,
        "threads": settings.WEB_THREADS,
        "worker_class": "gthread",
        # Requests may hold up to ?wait= seconds for a job to finish.
        "timeout": 120,
        "graceful_timeout": 10,
        # Gunicorn's request line limit is at most 8190 bytes (an HTML error past
        # it), or 0, unlimited: the app answers a JSON 414 past SIBYL_MAX_URL_BYTES.
        "limit_request_line": 0,
        "errorlog": "-",
        "loglevel": "info",
        "when_ready": announce,
        "post_worker_init": warm_up,
        "worker_exit": close,
    }
    try:
        if settings.DEMO_MODELS:
            ensure_demo_models(mongo_uri)
        # Gunicorn's master handles SIGINT/SIGTERM: it stops the workers, then
        # exits with SystemExit, which lands in the finally below.
        ApiServer({"MONGO_URI": mongo_uri}, options).run()
    finally:
        # Gunicorn forks its workers from this process: when one exits, it
        # unwinds through here too, and must leave the database alone.
        if database is not None and database.owned_here:
            log.info("stopping the embedded database")
            EMBEDDED_URI_FILE.unlink(missing_ok=True)
            database.stop()


def worker(args: argparse.Namespace) -> None:
    """Run queued jobs until SIGTERM or Ctrl-C, then finish the batch at hand."""
    from service.config import load_settings
    from service.jobs.dispatch import Worker

    mongo_uri = settings.MONGO_URI
    if not mongo_uri:
        if not EMBEDDED_URI_FILE.exists():
            raise SystemExit(
                "MONGO_URI is not set and no embedded database is running here: "
                "start `make run` first, or set MONGO_URI to the API's database"
            )
        mongo_uri = EMBEDDED_URI_FILE.read_text().strip()
    log.info("worker on %s", redact(mongo_uri))
    runner = Worker(Store(database_of(mongo_uri)), load_settings())
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: runner.stop())
    runner.run_forever()


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    parser = argparse.ArgumentParser(
        prog="run.py", description="Sibyl: TensorFlow inference over REST"
    )
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="run the API (default)").set_defaults(func=serve)
    commands.add_parser("worker", help="run queued jobs").set_defaults(func=worker)
    args = parser.parse_args(argv)
    getattr(args, "func", serve)(args)


if __name__ == "__main__":
    main()
