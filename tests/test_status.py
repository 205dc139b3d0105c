"""`python run.py status`: the queue, the runners holding jobs and the models, read
through indexes only, against the session's real database server."""

import json
import os
import re
import subprocess
import sys
from datetime import timedelta

import pymongo
import pytest
from conftest import ROOT
from pymongo import monitoring

from schemas.jobs import JOBS
from schemas.models import MODELS
from service.jobs.claims import utcnow
from service.jobs.status import job_status

RUNNER_A = "host-a:101:worker"
RUNNER_B = "host-b:202:api"
GONE = "host-c:303:worker"  # its lease ran out: it stopped renewing


@pytest.fixture
def db(unswept_db):
    """No app's dispatcher sweeps this database (it would requeue the expired lease),
    so no app made its indexes either: made here as Eve makes them."""
    for collection, resource in ((unswept_db.jobs, JOBS), (unswept_db.models, MODELS)):
        for name, index in resource["mongo_indexes"].items():
            keys, options = index if isinstance(index, tuple) else (index, {})
            collection.create_index(keys, name=name, **options)
    return unswept_db


def queued(db, model: str, age_s: float, lease: dict | None = None):
    job = {"model": model, "status": "queued", "lease": lease, "_created": ago(age_s)}
    return db.jobs.insert_one(job).inserted_id


def running(db, worker: str, lease_left_s: float):
    lease = {"worker": worker, "token": "t", "until": utcnow() + timedelta(seconds=lease_left_s)}
    job = {"model": "iris", "status": "running", "lease": lease, "_created": ago(300)}
    return db.jobs.insert_one(job).inserted_id


def ago(seconds: float):
    return utcnow() - timedelta(seconds=seconds)


def fill(db) -> dict:
    """Three free queued jobs, one claimed; runners A (live, 2 running and the claim),
    B (live, 1 running) and GONE (expired, 1 running); finished jobs; three models."""
    ids = {
        "newest": queued(db, "iris", 5),
        "oldest": queued(db, "digits@2", 120),
        "middle": queued(db, "iris", 30),
    }
    claim = {"worker": RUNNER_A, "token": "c", "until": utcnow() + timedelta(seconds=600)}
    ids["claimed"] = queued(db, "iris", 60, lease=claim)
    running(db, RUNNER_A, 600)
    running(db, RUNNER_A, 300)
    running(db, RUNNER_B, 600)
    running(db, GONE, -60)
    db.jobs.insert_many(
        [
            {"model": "iris", "status": status, "lease": None, "_created": ago(900)}
            for status in ("succeeded", "failed", "cancelled")
        ]
    )
    db.models.insert_many(
        [
            {"name": "iris", "version": 1, "stage": None, "status": "ready"},
            {"name": "digits", "version": 1, "stage": "production", "status": "ready"},
            {"name": "iris", "version": 2, "stage": "production", "status": "ready"},
            {"name": "digits", "version": 2, "stage": None, "status": "rejected"},
        ]
    )
    return ids


MODEL_ROWS = [
    {"name": "digits", "version": 2, "stage": None, "status": "rejected"},
    {"name": "digits", "version": 1, "stage": "production", "status": "ready"},
    {"name": "iris", "version": 2, "stage": "production", "status": "ready"},
    {"name": "iris", "version": 1, "stage": None, "status": "ready"},
]


def test_status_counts_the_queue_and_groups_held_jobs_by_runner(db):
    ids = fill(db)
    report = job_status(db)
    # Every queued job counts, the claimed one too: it has not started.
    assert (report["queued"], report["queued_capped"]) == (4, False)
    oldest = report["oldest_queued"]
    assert (oldest["id"], oldest["model"]) == (str(ids["oldest"]), "digits@2")
    assert 120 <= oldest["age_s"] < 180
    by_worker = {runner["worker"]: runner for runner in report["runners"]}
    assert [runner["worker"] for runner in report["runners"]] == sorted(by_worker)
    counts = {w: (r["running"], r["claimed"], r["live"]) for w, r in by_worker.items()}
    assert counts == {RUNNER_A: (2, 1, True), RUNNER_B: (1, 0, True), GONE: (1, 0, False)}
    # A runner's lease is its latest: it renews them all while it lives.
    assert 500 < by_worker[RUNNER_A]["lease_left_s"] <= 600
    assert -120 < by_worker[GONE]["lease_left_s"] <= -60
    assert (by_worker[RUNNER_A]["kind"], by_worker[RUNNER_B]["kind"]) == ("worker", "api")
    assert report["live_runners"] == [RUNNER_A, RUNNER_B]
    assert report["runners_capped"] is False
    assert report["models"] == MODEL_ROWS
    json.dumps(report)  # JSON-ready as it is


def test_an_empty_database_has_an_empty_status(db):
    report = job_status(db)
    assert (report["queued"], report["oldest_queued"]) == (0, None)
    assert (report["runners"], report["live_runners"], report["models"]) == ([], [], [])


def test_counts_stop_at_the_limit_and_say_so(db):
    ids = fill(db)
    for age in range(6):
        queued(db, "iris", age)
    report = job_status(db, count_limit=3)
    assert (report["queued"], report["queued_capped"]) == (3, True)
    # The oldest is found among jobs the count did not reach too.
    assert report["oldest_queued"]["id"] == str(ids["oldest"])
    assert report["runners_capped"] is True  # RUNNER_A, B and GONE hold 4 running jobs
    assert job_status(db, count_limit=100)["queued_capped"] is False


class Reads(monitoring.CommandListener):
    """The reads a client sends."""

    def __init__(self):
        self.sent: list[dict] = []

    def started(self, event):
        if event.command_name in ("find", "getMore", "aggregate", "count", "distinct"):
            self.sent.append(dict(event.command))

    def succeeded(self, event):
        pass

    def failed(self, event):
        pass


def test_status_reads_through_indexes_only(db, database):
    fill(db)
    reads = Reads()
    client = pymongo.MongoClient(database.uri, tz_aware=True, event_listeners=[reads])
    try:
        job_status(client[db.name], count_limit=3)  # capped: the sorted query for the oldest too
    finally:
        client.close()
    # Finds only (5: the count, the oldest, two statuses held, the models), each one
    # planned on an index; SecantusDB would read every document for one that is not.
    assert [next(iter(command)) for command in reads.sent] == ["find"] * 5
    driver_fields = {"lsid", "$db", "$clusterTime", "$readPreference", "txnNumber"}
    for command in reads.sent:
        asked = {key: value for key, value in command.items() if key not in driver_fields}
        plan = json.dumps(db.command("explain", asked)["queryPlanner"]["winningPlan"], default=str)
        assert "IXSCAN" in plan and "COLLSCAN" not in plan, (asked, plan)


def test_the_status_module_imports_neither_eve_nor_tensorflow():
    probe = (
        "import sys, service.jobs.status; "
        "print(' '.join(m for m in ('eve', 'hooks', 'tensorflow', 'flask') if m in sys.modules))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert loaded == []


def run_status(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "run.py", "status", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_run_py_status_prints_text_and_json(db, database, tmp_path):
    ids = fill(db)
    # MONGO_URI, as a worker finds the database when it is set.
    done = run_status({"MONGO_URI": database.uri, "SIBYL_DB_NAME": db.name}, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["queued"], report["oldest_queued"]["id"]) == (4, str(ids["oldest"]))
    assert report["live_runners"] == [RUNNER_A, RUNNER_B]
    assert [runner["worker"] for runner in report["runners"]] == [RUNNER_A, RUNNER_B, GONE]
    assert report["models"] == MODEL_ROWS

    # Without MONGO_URI: the URI file `run.py serve` leaves next to its embedded database.
    (tmp_path / "uri").write_text(database.uri)
    env = {"MONGO_URI": "", "SIBYL_DB_PATH": str(tmp_path), "SIBYL_DB_NAME": db.name}
    done = run_status(env)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    oldest = rf"queued    4 jobs, oldest {ids['oldest']} \(digits@2\) waiting 1[2-7]\d s"
    assert re.fullmatch(oldest, lines[0]), lines[0]
    assert lines[1] == "runners   3 holding jobs, 2 live"
    assert re.fullmatch(rf" +{RUNNER_A} +running 2 +claimed 1 +lease \d{{3}} s left", lines[2])
    assert re.fullmatch(rf" +{RUNNER_B} +running 1 +claimed 0 +lease \d{{3}} s left", lines[3])
    assert re.fullmatch(rf" +{GONE} +running 1 +claimed 0 +lease expired \d+ s ago", lines[4])
    assert lines[5] == "models    4"
    assert [line.split() for line in lines[6:]] == [
        ["digits", "v2", "-", "rejected"],
        ["digits", "v1", "production", "ready"],
        ["iris", "v2", "production", "ready"],
        ["iris", "v1", "-", "ready"],
    ]
    # The columns line up.
    assert len({line.index("running") for line in lines[2:5]}) == 1
    assert len({line.index(" v") for line in lines[6:]}) == 1


def test_run_py_status_without_a_database_says_where_to_find_one(tmp_path):
    done = run_status({"MONGO_URI": "", "SIBYL_DB_PATH": str(tmp_path)})
    assert done.returncode != 0
    assert "MONGO_URI is not set and no embedded database is running here" in done.stderr
