"""Test fixtures: one real SecantusDB server per session, apps served over real HTTP.

Each test starts from empty collections (indexes kept): the server grows slower
as state accumulates, and restarting it per test would cost seconds.
"""

import contextlib
import copy
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import gridfs
import pymongo
import pytest
import requests
from werkzeug import serving

import settings
from schemas import DOMAIN
from service.api.roles import identity_of
from service.app import create_app
from service.demo.models import ensure_demo_models, model_limits
from service.store.embedded_db import EmbeddedDatabase, free_port

ROOT = Path(__file__).resolve().parent.parent
TEST_DB_NAME = "sibyl_test"
# The queueing app has a database of its own, so that the in-process app's
# sweeps never run the jobs its tests expect to stay queued.
QUEUE_DB_NAME = "sibyl_queue_test"
# The app with the guide's new resource (docs/EXTENDING.md) has its own.
EXPERIMENTS_DB_NAME = "sibyl_experiments_test"
GUIDE = ROOT / "docs" / "EXTENDING.md"


class Api:
    """A tiny HTTP client bound to one server's /v1 prefix, sending one API key."""

    def __init__(self, base_url: str, key: str | None = None, headers: dict | None = None):
        self.base_url = base_url
        self.key = key
        self.session = requests.Session()
        if key is not None:
            self.session.headers["Authorization"] = f"Bearer {key}"
        self.session.headers.update(headers or {})

    def request(self, method: str, path: str, **kwargs) -> requests.Response:
        kwargs.setdefault("timeout", 60)
        return self.session.request(method, self.base_url + path, **kwargs)

    def get(self, path: str, **kwargs) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs) -> requests.Response:
        return self.request("POST", path, **kwargs)

    def patch(self, path: str, **kwargs) -> requests.Response:
        return self.request("PATCH", path, **kwargs)

    def delete(self, path: str, **kwargs) -> requests.Response:
        return self.request("DELETE", path, **kwargs)


class LiveServer:
    """A Sibyl app served by Werkzeug on a free port, in a background thread."""

    def __init__(self, app):
        self.app = app
        self.server = serving.make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self._keys: dict[tuple[str, str], str] = {}

    def key(self, role: str = "admin", name: str | None = None) -> str:
        """A key of this app's database with the role (made once per role and name;
        the per-test emptying of the database keeps keys)."""
        name = name or role
        if (role, name) not in self._keys:
            keys = self.app.extensions["sibyl"].keys
            self._keys[role, name] = keys.create(role, name, owner=name)[1]
        return self._keys[role, name]

    def api(self, role: str | None = "admin", name: str | None = None, **kwargs) -> Api:
        """A client with a key of the role (an admin by default); role=None: no key."""
        key = None if role is None else self.key(role, name)
        return Api(self.url + "/v1", key=key, **kwargs)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="session")
def database(tmp_path_factory) -> Iterator[EmbeddedDatabase]:
    """The session's database server, over a real socket."""
    server = EmbeddedDatabase(tmp_path_factory.mktemp("secantusdb")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def test_settings(database, tmp_path_factory) -> dict:
    """Settings every test app shares: the session database, quick polling."""
    return {
        "MONGO_URI": database.uri,
        "MONGO_DBNAME": TEST_DB_NAME,
        "MODEL_CACHE_DIR": str(tmp_path_factory.mktemp("models")),
        "POLL_SECONDS": 0.1,
    }


@pytest.fixture(scope="session")
def start_server(test_settings) -> Iterator[Callable[..., LiveServer]]:
    """Start extra servers with their own settings (closed at session end)."""
    servers: list[LiveServer] = []

    def start(overrides: dict | None = None, mongo_uri: str | None = None) -> LiveServer:
        config = dict(test_settings)
        if mongo_uri:
            config["MONGO_URI"] = mongo_uri
        config.update(overrides or {})
        server = LiveServer(create_app(config))
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
        server.app.extensions["sibyl"].close()


@pytest.fixture(scope="session")
def live_server(start_server) -> LiveServer:
    """The default app, served once for the whole session."""
    return start_server()


def emptied(database: EmbeddedDatabase, name: str) -> Iterator[pymongo.database.Database]:
    client = pymongo.MongoClient(database.uri, tz_aware=True)
    test_db = client[name]
    for collection in test_db.list_collection_names():
        if collection != "keys":  # made once per session (LiveServer.key)
            test_db[collection].delete_many({})
    yield test_db
    client.close()


@pytest.fixture
def db(database) -> Iterator[pymongo.database.Database]:
    """The test database, emptied before each test (indexes stay)."""
    yield from emptied(database, TEST_DB_NAME)


@pytest.fixture
def queue_db(database) -> Iterator[pymongo.database.Database]:
    """The queueing app's database, emptied before each test."""
    yield from emptied(database, QUEUE_DB_NAME)


@pytest.fixture
def unswept_db(database) -> Iterator[pymongo.database.Database]:
    """A database no app uses, emptied before each test: the session's in-process
    dispatchers sweep the default test database, and would claim or requeue the bare
    jobs a test leaves queued or expired there."""
    yield from emptied(database, "sibyl_unswept_test")


@pytest.fixture(scope="session")
def queueing_server(start_server) -> LiveServer:
    """An app in workers mode: it stores jobs and runs none (no worker is started)."""
    return start_server({"INFERENCE": "workers", "MONGO_DBNAME": QUEUE_DB_NAME})


@pytest.fixture
def api(live_server, db) -> Iterator[Api]:
    """An HTTP client of the default app (in-process inference), on an empty database.

    The test ends once its jobs have: none may write into the next test's database.
    """
    yield live_server.api()
    wait_until_idle(db)


def wait_until_idle(db: pymongo.database.Database, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while db.jobs.find_one({"status": {"$in": ["queued", "running"]}}, {"_id": 1}):
        assert time.monotonic() < deadline, "jobs still unfinished after the test"
        time.sleep(0.05)


def job_queue(
    db: pymongo.database.Database, worker_id: str, lease_seconds: float = 30, max_attempts: int = 3
):
    """A JobQueue on db for one runner identity: the tests' only way to build one,
    so a change of its constructor is a fix here."""
    from service.jobs.claims import JobQueue
    from service.store.access import Store

    return JobQueue(Store(db), worker_id, lease_seconds, max_attempts)


def guide_block(first_line: str) -> str:
    """The code block of docs/EXTENDING.md whose first line is first_line (a comment saying
    where it goes), without that line: the tests build what the guide shows."""
    for block in re.findall(r"```python\n(.*?)```", GUIDE.read_text(), re.DOTALL):
        head, _, code = block.partition("\n")
        if head.strip() == first_line:
            return code
    raise AssertionError(f"docs/EXTENDING.md has no code block starting {first_line!r}")


def guide_experiments() -> dict:
    """The guide's new resource, its module run as the guide writes it."""
    module: dict = {}
    exec(guide_block("# schemas/experiments.py"), module)
    return module["EXPERIMENTS"]


def domain_with(**resources: dict) -> dict:
    """A copy of schemas/' DOMAIN with more resources, for a test app's settings."""
    return {**copy.deepcopy(DOMAIN), **resources}


@pytest.fixture(scope="session")
def experiments_server(start_server) -> LiveServer:
    """An app whose DOMAIN has the guide's experiments, added as the guide says."""
    domain = domain_with(experiments=guide_experiments())
    return start_server({"DOMAIN": domain, "MONGO_DBNAME": EXPERIMENTS_DB_NAME})


@pytest.fixture
def experiments_db(database) -> Iterator[pymongo.database.Database]:
    """The experiments app's database, emptied before each test."""
    yield from emptied(database, EXPERIMENTS_DB_NAME)


def check_isolation(server: LiveServer, db: pymongo.database.Database, resource: str) -> None:
    """What a client may do to another client's document of the resource through Eve's
    routes: for an owned resource nothing (its item, lists, filters, changes and deletes
    all miss it); for a shared one read it, and change it only if clients write it."""
    entry = server.app.config["DOMAIN"][resource]
    rights = server.app.extensions["rights"]
    client = identity_of("client", "bob", "bobs-key")
    reads, writes = (rights.may(client, f"{resource}:{action}") for action in ("read", "write"))
    shared = entry["access"] == "shared"
    now = datetime.now(UTC).replace(microsecond=0)
    collection = db[entry["datasource"]["source"]]
    document_id = collection.insert_one({"owner": "alice", "_created": now, "_updated": now})
    document_id = document_id.inserted_id
    stored = collection.find_one({"_id": document_id})
    alice, bob = server.api("client", "alice"), server.api("client", "bob")
    url = "/" + entry["url"]
    item = f"{url}/{document_id}"
    etag = "none"
    if reads:  # its owner reads it: a miss for bob is about bob
        mine = alice.get(item)
        assert mine.status_code == 200, (resource, mine.text)
        etag = mine.json()["_etag"]
    # Reads: the item, the list, and filters naming it or its owner.
    read = bob.get(item)
    assert read.status_code == (200 if shared and reads else 404 if reads else 403), resource
    queries = [{}] + [
        {"where": json.dumps({field: value})}
        for field, value in (("_id", str(document_id)), ("owner", "alice"))
        if field in entry["allowed_filters"]
    ]
    for params in queries:
        listed = bob.get(url, params=params)
        if not reads:
            assert listed.status_code == 403, (resource, params)
            continue
        assert listed.status_code == 200, (resource, params, listed.text)
        found = str(document_id) in {item["_id"] for item in listed.json()["_items"]}
        assert found is shared, (resource, params)
    # Changes and deletes: refused, and nothing changed.
    for method, body in (("PATCH", {}), ("DELETE", None)):
        answer = bob.request(method, item, json=body, headers={"If-Match": etag})
        if method not in entry["item_methods"]:
            expected = 405
        elif not writes:
            expected = 403
        elif shared:
            continue  # every client may change a shared document its role writes
        else:
            expected = 404
        assert answer.status_code == expected, (resource, method, answer.text)
    assert collection.find_one({"_id": document_id}) == stored, resource


@pytest.fixture
def queue_api(queueing_server, queue_db) -> Api:
    """An HTTP client of an app whose jobs stay queued."""
    return queueing_server.api()


@pytest.fixture(scope="session")
def model_snapshot(database) -> dict:
    """The demo models, trained and registered once per session, kept aside."""
    client = pymongo.MongoClient(database.uri, tz_aware=True)
    template = client["sibyl_model_template"]
    ensure_demo_models(template, model_limits(settings))
    snapshot = {
        "models": list(template.models.find()),
        "counters": list(template.counters.find()),
        "files": [(f._id, f.filename, f.read()) for f in gridfs.GridFS(template).find()],
    }
    client.close()
    return snapshot


def restore_models(db: pymongo.database.Database, snapshot: dict) -> dict[str, dict]:
    files = gridfs.GridFS(db)
    for file_id, filename, data in snapshot["files"]:
        files.put(data, _id=file_id, filename=filename)
    db.models.insert_many([dict(model) for model in snapshot["models"]])
    db.counters.insert_many([dict(counter) for counter in snapshot["counters"]])
    return {model["name"]: model for model in snapshot["models"]}


@pytest.fixture
def demo_models(db, model_snapshot) -> dict[str, dict]:
    """The iris and digits models in the test database, by name (restored, not retrained)."""
    return restore_models(db, model_snapshot)


@pytest.fixture
def queue_demo_models(queue_db, model_snapshot) -> dict[str, dict]:
    """The demo models in the queueing app's database."""
    return restore_models(queue_db, model_snapshot)


def upload_model(
    api: Api, name: str, path, labels: list[str] | None = None, **fields
) -> requests.Response:
    """POST /v1/models as a client does: multipart, the file plus form fields."""
    data = {"name": name, **fields}
    if labels is not None:
        data["labels"] = json.dumps(labels)
    with open(path, "rb") as handle:
        return api.post("/models", data=data, files={"file": (Path(path).name, handle)})


@pytest.fixture
def run_py() -> Iterator[Callable[..., subprocess.Popen]]:
    """Start `python run.py <command>` processes as a user would; kill leftovers at the end."""
    processes: list[subprocess.Popen] = []

    def start(command: str, env: dict, script: str = "run.py", **popen_options):
        process = subprocess.Popen(
            [sys.executable, script, command],
            cwd=ROOT,
            env={**os.environ, **env},
            **popen_options,
        )
        processes.append(process)
        return process

    yield start
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.wait()


@pytest.fixture(scope="session")
def model_files(tmp_path_factory) -> dict[str, Path]:
    """Small real models of every kind the tests upload, built once."""
    import model_builders

    folder = tmp_path_factory.mktemp("model_files")
    return {
        "tiny": model_builders.tiny_classifier(folder / "tiny.keras"),
        "two_inputs": model_builders.two_input_model(folder / "two_inputs.keras"),
        "overflowing": model_builders.overflowing_model(folder / "overflowing.keras"),
        "embedding": model_builders.embedding_model(folder / "embedding.keras"),
        "lambda": model_builders.lambda_model(folder / "lambda.keras"),
        "fixed_batch": model_builders.fixed_batch_model(folder / "fixed_batch.keras"),
        "h5": model_builders.h5_model(folder / "legacy.h5"),
        "savedmodel": model_builders.savedmodel_zip(folder / "doubler.zip"),
    }


def child_processes() -> dict[int, list[int]]:
    """Every process's children, read from /proc: {parent pid: [child pids]}."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    return children


def wait_for(condition, timeout: float, what: str):
    """Poll condition until it returns something true; fail after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def start_worker(database, tmp_path, run_py):
    """Start `run.py worker` processes on the queueing app's database.

    Keyword arguments are settings (lease_seconds=2 sets SIBYL_LEASE_SECONDS); script:
    another entry point taking run.py's arguments. Each worker logs to a file, shown
    with the test's output if it fails.
    """
    logs = []

    def start(script: str = "run.py", **settings) -> subprocess.Popen:
        env = {
            "MONGO_URI": database.uri,
            "SIBYL_DB_NAME": QUEUE_DB_NAME,
            "SIBYL_MODEL_CACHE_DIR": str(tmp_path / "models"),
            "SIBYL_POLL_MS": "200",
            **{f"SIBYL_{key.upper()}": str(value) for key, value in settings.items()},
        }
        path = tmp_path / f"worker-{len(logs)}.log"
        with open(path, "wb") as log:
            process = run_py("worker", env, script, stdout=log, stderr=subprocess.STDOUT)
        process.log_path = path
        logs.append(path)
        return process

    yield start
    for path in logs:
        print(f"--- {path.name} ---\n{path.read_text()[-3000:]}")


def wait_until_healthy(url: str, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read()
        try:
            if requests.get(url + "/v1/healthz", timeout=5).status_code == 200:
                return
        except requests.RequestException:  # not listening yet, or slow on a loaded machine
            pass
        time.sleep(0.2)
    raise AssertionError("the service did not answer /v1/healthz in time")


def stop_serve(process: subprocess.Popen) -> None:
    """Stop run.py serve as an operator would (SIGTERM: gunicorn stops its workers and the
    embedded database); SIGKILL only if it hangs. A SIGKILLed master leaves its workers
    running, serving nobody, for the rest of the machine's life."""
    process.terminate()
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        for pid in child_processes().get(process.pid, []):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        process.kill()
        process.wait()


def start_serve(folder: Path, **settings) -> tuple[subprocess.Popen, str, str]:
    """run.py serve without demo models, its data under folder."""
    port = free_port()
    env = {
        **os.environ,
        "SIBYL_PORT": str(port),
        "SIBYL_DB_PATH": str(folder / "db"),
        "SIBYL_MODEL_CACHE_DIR": str(folder / "models"),
        "SIBYL_ADMIN_KEY_FILE": str(folder / "admin.key"),
        "SIBYL_METRICS_DIR": str(folder / "metrics"),
        "SIBYL_DEMO_MODELS": "0",
        "MONGO_URI": "",
        **{f"SIBYL_{name}": str(value) for name, value in settings.items()},
    }
    process = subprocess.Popen(
        [sys.executable, "run.py", "serve"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    wait_until_healthy(url, process)
    return process, url, (folder / "admin.key").read_text().strip()
