"""Sibyl's command line.

python run.py [serve]   the API under gunicorn (default); starts the embedded
                        database first when MONGO_URI is unset, and trains the
                        demo models on an empty database
python run.py worker    a worker process running queued jobs (any number; with
                        SIBYL_INFERENCE=workers the API only queues)
python run.py keys create --role client --name alice   make an API key (shown once)
python run.py keys list | keys revoke <id>              list or revoke keys
python run.py status [--json]   queue depth, oldest queued job, runners, models
python run.py fill-defaults     give stored documents the default of a field added since
"""

import argparse
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pymongo
from gunicorn.app.base import BaseApplication

import settings
from service import logs
from service.store.access import Store
from service.store.embedded_db import EmbeddedDatabase
from service.store.keys import ROLES, Keys

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
    worker.flask_app.extensions["sibyl"].warm_up()


def close(server, worker) -> None:
    """Gunicorn worker_exit: let the dispatcher finish its batch."""
    worker.flask_app.extensions["sibyl"].close()


def forget_metrics(server, worker) -> None:
    """Gunicorn child_exit: a dead worker's live gauges leave /metrics (its counts stay)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def metrics_folder() -> None:
    """Where every API process keeps its counts, emptied, before gunicorn forks them
    (prometheus_client's multiprocess mode reads it when first imported)."""
    folder = Path(settings.METRICS_DIR)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder.resolve())


# Gunicorn manages the processes; each runs the front (service/api/front.py), which
# reads whole requests in an event loop before one of WEB_THREADS threads takes them.
FRONT = {"worker_class": "service.api.front.FrontWorker"}


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


def ensure_admin_key(mongo_uri: str) -> None:
    """First start: make an admin key, print it once and keep it in ADMIN_KEY_FILE (0600).

    SIBYL_ADMIN_KEY, when set, is the admin key instead (created if not stored yet).
    """
    keys = Keys(database_of(mongo_uri).keys)
    chosen = os.environ.get("SIBYL_ADMIN_KEY", "").strip()
    if chosen:
        if keys.check(chosen) is None:
            try:
                keys.create("admin", "admin", owner="admin", key=chosen)
            except ValueError as error:
                raise SystemExit(f"SIBYL_ADMIN_KEY: {error}") from None
            log.info("admin key from SIBYL_ADMIN_KEY stored")
        return
    if keys.has_admin():
        return
    document, key = keys.create("admin", "admin", owner="admin")
    path = Path(settings.ADMIN_KEY_FILE)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(key + "\n")
    if settings.LOG_FORMAT == "json":
        # Lines that go to a log shipper: where the key is, never the key.
        log.info("first start: admin API key %s created in %s (mode 0600)", document["_id"], path)
        return
    # Printed once, to the terminal that started Sibyl; never logged again.
    print(
        f"\nFirst start: admin API key {document['_id']} created (shown once, also in "
        f"{path}, mode 0600):\n\n    {key}\n",
        flush=True,
    )


def manage_keys(args: argparse.Namespace) -> None:
    """keys create | list | revoke, straight on the database."""
    mongo_uri = database_uri()
    keys = Keys(database_of(mongo_uri).keys)
    if args.action == "create":
        try:
            document, key = keys.create(args.role, args.name, args.owner)
        except ValueError as error:
            raise SystemExit(str(error)) from None
        print(json.dumps({"id": document["_id"], "role": args.role, "owner": document["owner"]}))
        print(key)
    elif args.action == "list":
        for key in keys.list():
            state = f"revoked {key['revoked_at']:%Y-%m-%d %H:%M}" if key["revoked"] else "active"
            print(f"{key['_id']}  {key['role']:<8} {key['name']:<20} owner={key['owner']}  {state}")
    elif not keys.revoke(args.id):
        raise SystemExit(f"no active key with id {args.id}")
    else:
        print(
            f"revoked {args.id} (other API processes stop accepting it within "
            f"{settings.KEY_CACHE_SECONDS:g} s)"
        )


def show_status(args: argparse.Namespace) -> None:
    """The queue, the runners holding jobs and the models: text, or JSON with --json."""
    from service.jobs.status import job_status

    mongo_uri = database_uri()
    try:
        report = job_status(database_of(mongo_uri))
    except pymongo.errors.PyMongoError as error:
        raise SystemExit(f"cannot read the database at {redact(mongo_uri)}: {error}") from None
    print(json.dumps(report, indent=2) if args.json else status_text(report))


def fill_defaults(db: pymongo.database.Database, domain: dict) -> dict[str, int]:
    """Set each top-level field that has a `default` in its schema on the documents stored
    before it existed; {resource.field: documents changed}.

    New documents get the default when they are validated; older ones lack the field
    until this runs, and `where` and sorts do not see them. Each field costs one scan
    of its collection (run it once, after adding the field)."""
    filled = {}
    for name, resource in domain.items():
        collection = db[resource.get("datasource", {}).get("source") or name]
        for field, rule in resource["schema"].items():
            if "default" not in rule:
                continue
            # The stored ETag no longer describes the document: Eve computes one on read.
            update = {"$set": {field: rule["default"]}, "$unset": {"_etag": ""}}
            changed = collection.update_many({field: {"$exists": False}}, update).modified_count
            if changed:
                filled[f"{name}.{field}"] = changed
    return filled


def fill_defaults_command(args: argparse.Namespace) -> None:
    filled = fill_defaults(database_of(database_uri()), settings.DOMAIN)
    for field, count in filled.items():
        print(f"{field}: {count} documents given the default")
    if not filled:
        print("every stored document has every field that has a default")


def status_text(report: dict) -> str:
    """`run.py status` for a person: a count per line, details indented below it."""
    queued = f"{report['queued']:,}{'+' if report['queued_capped'] else ''} jobs"
    if oldest := report["oldest_queued"]:
        queued += f", oldest {oldest['id']} ({oldest['model']}) waiting {oldest['age_s']:,.0f} s"
    runners, models = report["runners"], report["models"]
    lines = [
        f"queued    {queued}",
        f"runners   {len(runners)} holding jobs, {len(report['live_runners'])} live",
    ]
    width = max((len(runner["worker"]) for runner in runners), default=0)
    for runner in runners:
        left = runner["lease_left_s"]
        lease = f"{left:,.0f} s left" if runner["live"] else f"expired {-left:,.0f} s ago"
        lines.append(
            f"          {runner['worker']:<{width}}  running {runner['running']:<5} "
            f"claimed {runner['claimed']:<5} lease {lease}"
        )
    lines.append(f"models    {len(models)}")
    width = max((len(model["name"]) for model in models), default=0)
    for model in models:
        lines.append(
            f"          {model['name']:<{width}}  v{model['version']!s:<3} "
            f"{model['stage'] or '-':<11} {model['status']}"
        )
    return "\n".join(lines)


def database_uri() -> str:
    """MONGO_URI, or the URI of the embedded database `serve` runs on this machine."""
    if settings.MONGO_URI:
        return settings.MONGO_URI
    if not EMBEDDED_URI_FILE.exists():
        raise SystemExit(
            "MONGO_URI is not set and no embedded database is running here: "
            "start `make run` first, or set MONGO_URI to the API's database"
        )
    return EMBEDDED_URI_FILE.read_text().strip()


def check_confinement() -> None:
    """Say at start-up what confines the model runners here; stop when one is missing
    and SIBYL_RUNNER_CONFINEMENT is required (no model could load)."""
    from service.registry import confine

    missing = {name: why for name, why in confine.support().items() if why is not True}
    if not missing:
        log.info("model runners confined by Landlock, seccomp and a network namespace")
        return
    lacking = "; ".join(f"{name}: {why}" for name, why in missing.items())
    if settings.RUNNER_CONFINEMENT == "required":
        raise SystemExit(
            f"this machine cannot confine model runners ({lacking}); "
            "set SIBYL_RUNNER_CONFINEMENT=best-effort to run models with what it offers "
            "(README, Hostile models)"
        )
    log.warning("model runners are not confined by: %s", lacking)


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
        database.supervise()
        mongo_uri = database.uri
        EMBEDDED_URI_FILE.write_text(mongo_uri)
        log.info("embedded SecantusDB at %s, data in %s", mongo_uri, database.path.resolve())
    else:
        log.info("MongoDB at %s", redact(mongo_uri))
    log.info("inference: %s", settings.INFERENCE)
    check_confinement()
    metrics_folder()
    options = {
        "bind": f"{settings.HOST}:{settings.PORT}",
        "workers": settings.WEB_WORKERS,
        **FRONT,
        # Requests may hold up to ?wait= seconds for a job to finish.
        "timeout": 120,
        "graceful_timeout": 10,
        "keepalive": 5,
        "errorlog": "-",
        "loglevel": "info",
        "logconfig_dict": logs.gunicorn_logging(settings.LOG_FORMAT) or {},
        "when_ready": announce,
        "post_worker_init": warm_up,
        "worker_exit": close,
        "child_exit": forget_metrics,
    }
    try:
        if settings.AUTH:
            ensure_admin_key(mongo_uri)
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
    from hooks import job_events
    from service.config import load_settings
    from service.jobs.dispatch import Worker
    from service.jobs.events import JobEvents

    mongo_uri = database_uri()
    log.info("worker on %s", redact(mongo_uri))
    check_confinement()
    if settings.METRICS_PORT:
        from prometheus_client import start_http_server

        start_http_server(settings.METRICS_PORT, addr="127.0.0.1")
        log.info("worker metrics at http://127.0.0.1:%s/metrics", settings.METRICS_PORT)
    store = Store(database_of(mongo_uri))
    # The developers' job hooks, delivered by this worker too (hooks/job_events.py).
    events = JobEvents(store)
    job_events.register(events)
    runner = Worker(store, load_settings(), events)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: runner.stop())
    runner.run_forever()


def main(argv: list[str] | None = None) -> None:

    logs.configure(settings.LOG_FORMAT)
    parser = argparse.ArgumentParser(
        prog="run.py", description="Sibyl: TensorFlow inference over REST"
    )
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="run the API (default)").set_defaults(func=serve)
    commands.add_parser("worker", help="run queued jobs").set_defaults(func=worker)
    keys = commands.add_parser("keys", help="make, list and revoke API keys")
    keys.set_defaults(func=manage_keys)
    actions = keys.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="make a key and print it (once)")
    create.add_argument("--role", required=True, choices=ROLES)
    create.add_argument("--name", required=True, help="who or what the key is for")
    create.add_argument("--owner", help="the owner its jobs belong to (default: the name)")
    actions.add_parser("list", help="every key, revoked ones too (never the secrets)")
    revoke = actions.add_parser("revoke", help="stop a key from working")
    revoke.add_argument("id")
    status = commands.add_parser("status", help="the queue, the runners and the models")
    status.add_argument("--json", action="store_true", help="as one JSON document")
    status.set_defaults(func=show_status)
    commands.add_parser(
        "fill-defaults", help="give stored documents the default of a field added since"
    ).set_defaults(func=fill_defaults_command)
    args = parser.parse_args(argv)
    getattr(args, "func", serve)(args)


if __name__ == "__main__":
    main()
