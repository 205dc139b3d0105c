"""A 201 survives a crash of the database: every write Sibyl makes asks for the journal."""

import threading
import time

import pymongo
import pytest
import requests
from bson import ObjectId
from conftest import LiveServer, restore_models

import run
import settings
from service.app import create_app
from service.store.access import Store
from service.store.embedded_db import EmbeddedDatabase, free_port

SETOSA = [5.1, 3.5, 1.4, 0.2]
JOURNALED = {"w": 1, "j": True}  # the default SIBYL_WRITE_CONCERN


def test_every_client_and_collection_asks_for_the_journal(test_settings):
    assert settings.WRITE_CONCERN == "journaled"
    app = create_app(test_settings)
    try:
        with app.test_request_context():
            # Eve's own writes (POST, PATCH, DELETE) use a collection of their own.
            for resource in ("jobs", "models", "predictions"):
                collection = app.data.get_collection_with_write_concern(resource, resource)
                assert collection.write_concern.document == JOURNALED, resource
            # GridFS uploads, the job service and the engine use Eve's client as it is.
            assert app.data.pymongo().db.write_concern.document == JOURNALED
            store = app.extensions["sibyl"].store
            for scoped in (store.jobs, store.predictions, store.models):
                assert scoped.collection.write_concern.document == JOURNALED
            assert store.counters.write_concern.document == JOURNALED
    finally:
        app.extensions["sibyl"].close()
    # run.py's clients: the demo models and `run.py worker`.
    worker_db = run.database_of(test_settings["MONGO_URI"])
    assert worker_db.write_concern.document == JOURNALED
    worker_db.client.close()


@pytest.fixture
def start_database(tmp_path):
    """Start this test's own database: one data directory, one port, so that it can
    come back after a kill where its clients expect it."""
    port = free_port()
    started: list[EmbeddedDatabase] = []

    def start() -> EmbeddedDatabase:
        started.append(EmbeddedDatabase(tmp_path / "db", port).start())
        return started[-1]

    yield start
    for server in started:
        server.stop()


def post_until(url: str, key: str, stop: threading.Event, outcomes: dict):
    """One client: POST single-instance jobs, recording the id of every 201, the ids a
    503 says may have been stored, and every other refusal."""
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {key}"
    while not stop.is_set():
        try:
            response = session.post(url, json={"model": "iris", "inputs": [SETOSA]}, timeout=15)
        except requests.RequestException as error:
            outcomes["refused"].append(repr(error))
            continue
        if response.status_code == 201:
            outcomes["acknowledged"].append(response.json()["_id"])
            continue
        outcomes["refused"].append(response.status_code)
        if response.status_code == 503:
            assert response.headers["Retry-After"]
            outcomes["maybe"] += response.json().get("_jobs", [])


def test_acknowledged_jobs_survive_a_database_crash(
    start_database, test_settings, model_snapshot, tmp_path
):
    database = start_database()
    client = pymongo.MongoClient(database.uri, tz_aware=True)
    db = client["sibyl_durability"]
    restore_models(db, model_snapshot)
    config = {
        **test_settings,
        "MONGO_URI": database.uri,
        "MONGO_DBNAME": db.name,
        "MODEL_CACHE_DIR": str(tmp_path / "models"),
        # Far longer than the test: jobs cut short by the crash must run again as soon
        # as the database is back, not when their leases expire (stranded meanwhile,
        # they counted against their owner's quota: 429s).
        "LEASE_SECONDS": 300,
    }
    server = LiveServer(create_app(config))
    try:
        url = server.url + "/v1/jobs"
        key = server.key("client")
        warm = server.api("client").post(
            "/jobs?wait=30", json={"model": "iris", "inputs": [SETOSA]}, timeout=40
        )
        assert warm.json()["status"] == "succeeded"  # the model is loaded

        outcomes: dict[str, list] = {"acknowledged": [], "refused": [], "maybe": []}
        acknowledged, refused = outcomes["acknowledged"], outcomes["refused"]
        stop = threading.Event()
        # Plain POSTs and ?wait= POSTs (held and written once, in a transaction).
        clients = [
            threading.Thread(target=post_until, args=(url + wait, key, stop, outcomes))
            for wait in ["", "?wait=5"] * 4
        ]
        for thread in clients:
            thread.start()
        deadline = time.monotonic() + 10
        while len(acknowledged) < 200 and time.monotonic() < deadline:
            time.sleep(0.01)
        database.process.kill()  # SIGKILL mid-stream, requests in flight
        database.process.wait()
        time.sleep(0.2)  # requests reaching a dead database are refused (503)
        stop.set()
        for thread in clients:
            thread.join(30)
        assert len(acknowledged) >= 100, refused[:5]
        assert refused, "the database was killed after the clients had stopped"

        # The same data directory, the same port: the app's client reconnects.
        start_database()
        acknowledged_ids = {ObjectId(job_id) for job_id in acknowledged}
        stored = {job["_id"] for job in db.jobs.find({"_id": {"$in": list(acknowledged_ids)}})}
        lost = acknowledged_ids - stored
        assert not lost, f"{len(lost)} of {len(acknowledged)} acknowledged jobs lost"
        # Nothing is stored that its client was not told about: a 503 either stored
        # nothing or named the jobs that may have been stored.
        told = acknowledged_ids | {ObjectId(job_id) for job_id in outcomes["maybe"]}
        told.add(ObjectId(warm.json()["_id"]))
        untold = {job["_id"] for job in db.jobs.find({}, {"_id": 1})} - told
        assert not untold, f"{len(untold)} jobs stored after a 503 that did not name them"

        # Jobs cut short by the crash run again, each exactly once, long before their
        # leases would have expired.
        deadline = time.monotonic() + 60
        while unfinished := list(
            db.jobs.find({"status": {"$in": ["queued", "running"]}}, {"inputs": 0}).limit(3)
        ):
            assert time.monotonic() < deadline, f"jobs still unfinished: {unfinished}"
            time.sleep(0.1)
        assert db.jobs.count_documents({"status": {"$ne": "succeeded"}}) == 0
        per_job = {
            row["_id"]: row["n"]
            for row in db.predictions.aggregate([{"$group": {"_id": "$job", "n": {"$sum": 1}}}])
        }
        assert all(per_job.get(job_id) == 1 for job_id in acknowledged_ids)
    finally:
        server.stop()
        server.app.extensions["sibyl"].close()
        client.close()


def plain_insert(store: Store, document: dict) -> None:
    store.jobs.insert_one(document)


def transaction_insert(store: Store, document: dict) -> None:
    store.in_transaction(lambda session: store.jobs.insert_many([document], session=session))


@pytest.mark.parametrize("write", [plain_insert, transaction_insert])
def test_each_write_path_is_durable_when_it_returns(start_database, write):
    """SIGKILL the database the moment a write returns: after a restart on the same data,
    the write is there. Both of Sibyl's write paths, a few times each: a transaction's
    commit once returned before its journal reached the disk (SecantusDB ignores `j` on
    commitTransaction), and ?wait= answers written in one were lost."""
    for trial in range(3):
        database = start_database()
        client = pymongo.MongoClient(database.uri, tz_aware=True, **settings.MONGO_WRITE_CONCERN)
        store = Store(client["sibyl_durability"])
        document = {"_id": ObjectId(), "trial": trial, "payload": "x" * 1000}
        write(store, document)
        database.process.kill()
        database.process.wait()
        client.close()
        database = start_database()
        client = pymongo.MongoClient(database.uri)
        assert client["sibyl_durability"].jobs.find_one({"_id": document["_id"]}), trial
        client.close()
        database.stop()
