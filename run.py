"""Sibyl's command line.

python run.py [serve]     the API under gunicorn (default); starts the embedded
                          database first when MONGO_URI is unset
"""

import argparse
import logging
import re

from gunicorn.app.base import BaseApplication

import settings
from service.embedded_db import EmbeddedDatabase

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
        from service import create_app

        return create_app(self.overrides)


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
        log.info("embedded SecantusDB at %s, data in %s", mongo_uri, database.path.resolve())
    else:
        log.info("MongoDB at %s", redact(mongo_uri))
    log.info("Sibyl API at http://%s:%s/v1/", settings.HOST, settings.PORT)
    options = {
        "bind": f"{settings.HOST}:{settings.PORT}",
        "workers": settings.WEB_WORKERS,
        "threads": settings.WEB_THREADS,
        "worker_class": "gthread",
        # Requests may hold up to ?wait= seconds for a job to finish.
        "timeout": 120,
        "graceful_timeout": 10,
        "errorlog": "-",
        "loglevel": "info",
    }
    try:
        # Gunicorn's master handles SIGINT/SIGTERM: it stops the workers, then
        # exits with SystemExit, which lands in the finally below.
        ApiServer({"MONGO_URI": mongo_uri}, options).run()
    finally:
        if database is not None:
            log.info("stopping the embedded database")
            database.stop()


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    parser = argparse.ArgumentParser(
        prog="run.py", description="Sibyl: TensorFlow inference over REST"
    )
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="run the API (default)").set_defaults(func=serve)
    args = parser.parse_args(argv)
    getattr(args, "func", serve)(args)


if __name__ == "__main__":
    main()
