"""Model runners: what the operating system holds whatever a model does.

The attacks of issue 18, with their models built here (or in
bench/reliability/models.py, which make reliability uploads too): a model past the
scan that reads and writes host files, one that aborts its process, one that loops,
one that eats memory. Each ends with its own job failed while the API and every other job go
on; the static scan is switched off (STATIC_SCAN, tests only) where the point is
what the runner's confinement holds alone.
"""

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from bson import ObjectId
from conftest import ROOT, upload_model, wait_for
from model_builders import zip_folder

from bench.reliability.models import aborting, savedmodel_folder, trigger
from service.registry.runner import (
    MAX_OUTPUT_BYTES_PER_ROW,
    ModelRaised,
    ModelRunner,
    RunnerLimits,
    RunnerPool,
    RunnerRetired,
    RunnerUnavailable,
    storable,
)

SETOSA = [5.1, 3.5, 1.4, 0.2]


def when_triggered(x, action):
    """action() when an instance's first feature is above 0.5, else 0: zeros (the
    upload's test run) never trigger it."""
    return tf.cond(trigger(x) > 0.5, action, lambda: tf.constant(0.0))


@pytest.fixture
def host_files():
    """A secret any user may read and a folder any user may write: only the runner's
    confinement, not file permissions, can keep a model from them."""
    folder = Path(tempfile.mkdtemp(prefix="sibyl-host-"))
    os.chmod(folder, 0o777)
    secret = folder / "secret.txt"
    secret.write_text("the host's secret")
    os.chmod(secret, 0o644)
    yield secret, folder / "canary.txt"
    for item in folder.iterdir():
        item.unlink()
    folder.rmdir()


def file_thief(tmp_path: Path, secret: Path, canary: Path) -> Path:
    def steal():
        data = tf.io.read_file(str(secret))
        with tf.control_dependencies([tf.io.write_file(str(canary), data)]):
            return tf.cast(tf.strings.length(data), tf.float32)

    return savedmodel_folder(tmp_path / "thief", lambda x: when_triggered(x, steal))


def test_a_model_past_the_scan_can_neither_read_nor_write_host_files(tmp_path, host_files):
    secret, canary = host_files
    folder = file_thief(tmp_path, secret, canary)
    trigger = {"x": np.array([[1.0, 0.0, 0.0]], np.float32)}

    # Loaded here, unconfined, the model does both: the attack is real.
    from service.registry.runtime import CompiledModel

    stolen = CompiledModel(str(folder), "savedmodel", static_scan=False).predict(trigger)
    assert stolen[0, 0] == 2.0 + len("the host's secret")
    assert canary.read_text() == "the host's secret"
    canary.unlink()

    runner = ModelRunner(folder, "savedmodel", RunnerLimits(static_scan=False))
    try:
        assert runner.start()["inputs"][0]["name"] == "x"
        assert runner.unconfined == []
        with pytest.raises(ModelRaised, match="(?i)permission denied"):
            runner.predict(trigger, timeout_s=30)
        assert not canary.exists()
        # The runner still serves what the model may do.
        assert runner.predict({"x": np.zeros((2, 3), np.float32)}, 30).tolist() == [[0.0] * 3] * 2
    finally:
        runner.stop()


CONFINED_PROBE = """
import json, os, socket, sys
sys.path.insert(0, {root!r})
from service.registry import confine
confine.confine({model!r}, 4096, required=True)
seen = {{}}
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=5)
    seen["connect"] = "connected"
except OSError as error:
    seen["connect"] = error.strerror
for name, path, mode in (("read", {secret!r}, "r"), ("write", {canary!r}, "w"),
                         ("model", {model_file!r}, "r"),
                         ("through /proc", "/proc/self/root" + {secret!r}, "r"),
                         ("parent's environment", f"/proc/{{os.getppid()}}/environ", "r")):
    try:
        with open(path, mode) as handle:
            seen[name] = handle.read() if mode == "r" else handle.write("x")
    except OSError as error:
        seen[name] = error.strerror
def refused(name, attempt):
    try:
        attempt()
        seen[name] = "allowed"
    except OSError as error:
        seen[name] = error.strerror
refused("socketpair", lambda: socket.socketpair())
refused("fork", os.fork)
refused("setsid", os.setsid)
if os.uname().machine == "x86_64":  # io_uring_setup(2) opens sockets without socket(2)
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    params = ctypes.create_string_buffer(120)
    if libc.syscall(425, 8, params) < 0:
        seen["io_uring"] = os.strerror(ctypes.get_errno())
    else:
        seen["io_uring"] = "allowed"
import threading
done = []
thread = threading.Thread(target=lambda: done.append(1))
thread.start()
thread.join()
seen["thread"] = bool(done)
print(json.dumps(seen))
"""


def test_a_confined_runner_cannot_connect_anywhere(tmp_path, host_files):
    """What confine() does to a runner before it imports TensorFlow, probed directly:
    no connection (to a server listening on this host), no host file read or
    written, and the model's own folder readable."""
    secret, canary = host_files
    model = Path(tempfile.mkdtemp(prefix="sibyl-model-"))
    (model / "weights").write_text("the model's own file")
    with socket.create_server(("127.0.0.1", 0)) as server:
        code = CONFINED_PROBE.format(
            root=str(ROOT),
            model=str(model),
            port=server.getsockname()[1],
            secret=str(secret),
            canary=str(canary),
            model_file=str(model / "weights"),
        )
        probe = subprocess.run(
            [sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=60
        )
    assert probe.returncode == 0, probe.stderr
    seen = json.loads(probe.stdout)
    assert seen["connect"] != "connected"
    assert seen["read"] == "Permission denied"
    assert seen["write"] == "Permission denied"
    assert not canary.exists()
    assert seen["model"] == "the model's own file"
    assert seen["through /proc"] == "Permission denied"
    assert seen["parent's environment"] == "Permission denied"
    for way in ("socketpair", "fork", "setsid", "io_uring"):
        assert seen.get(way, "Operation not permitted") == "Operation not permitted", way
    assert seen["thread"] is True  # TensorFlow's threads still start


# --- through the API: a crashing, a looping and a memory-hungry model -------------------


def looping_model(tmp_path: Path) -> Path:
    """trigger * 1e8 steps of a while loop: nothing at upload, tens of seconds at 0.12."""

    def body(x):
        steps = tf.cast(trigger(x) * 1e8, tf.int64)
        _, total = tf.while_loop(
            lambda i, _: i < steps, lambda i, t: (i + 1, t + 1.0), (tf.constant(0, tf.int64), 0.0)
        )
        return 0.0 * total

    return zip_folder(savedmodel_folder(tmp_path / "looping", body), tmp_path / "looping.zip")


def hungry_model(tmp_path: Path) -> Path:
    """trigger * 1.5e8 floats (600 MB at 1.0) filled and summed."""

    def body(x):
        values = tf.fill(tf.cast(tf.reshape(trigger(x) * 1.5e8, [1]), tf.int64), 1.0)
        return 0.0 * tf.reduce_sum(values)

    return zip_folder(savedmodel_folder(tmp_path / "hungry", body), tmp_path / "hungry.zip")


def huge_unsigned_model(tmp_path: Path) -> Path:
    """An ordinary-looking model (it passes the scan) answering uint64 values past 2**63,
    which BSON cannot hold, once triggered: the job, and any batched with it, once
    answered 500 and were lost."""

    class Module(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")])
        def serve(self, x):
            scale = tf.cast(tf.cast(x[:, :1] > 0.5, tf.float32) * 1.8e19, tf.uint64)
            return {"y": tf.cast(tf.abs(x) * 2.0, tf.uint64) + scale}

    module = Module()
    folder = tmp_path / "unsigned"
    tf.saved_model.save(module, str(folder), signatures={"serving_default": module.serve})
    return zip_folder(folder, tmp_path / "unsigned.zip")


def uploaded(server, path: Path, name: str) -> dict:
    answer = upload_model(server.api("admin"), name, path)
    assert answer.status_code == 201, answer.text
    return answer.json()


def job_status(db, job_id: str) -> dict | None:
    return db.jobs.find_one({"_id": ObjectId(job_id)})


def finished(db, job_id: str) -> dict | None:
    job = job_status(db, job_id)
    return job if job and job["status"] in ("succeeded", "failed") else None


def test_a_job_that_aborts_its_runner_fails_alone_and_the_api_stays_up(
    start_server, db, demo_models, tmp_path
):
    server = start_server()
    # It passes the scan: Conv2DBackpropInput is an inference op, whose oneDNN kernel
    # aborts the process when asked for a negative size.
    uploaded(server, aborting(tmp_path / "aborting.zip"), "aborting")
    client = server.api("client")
    engine = server.app.extensions["sibyl"].dispatcher.engine
    iris = client.post("/jobs?wait=30", json={"model": "iris", "inputs": [SETOSA]})
    iris_runner = engine.runners.get(demo_models["iris"]).pid

    bodies = [{"model": "aborting", "inputs": [[0.1, 0.0, 0.0]]} for _ in range(3)]
    bodies.insert(1, {"model": "aborting", "inputs": [[1.0, 0.0, 0.0]]})
    answer = client.post("/jobs?wait=60", json=bodies)
    assert answer.status_code == 201, answer.text
    items = answer.json()["_items"]
    assert [item["status"] for item in items] == ["succeeded", "failed", "succeeded", "succeeded"]
    crashed = job_status(db, items[1]["_id"])
    assert "the model crashed while running this job (SIGABRT)" in crashed["error"]
    assert crashed["attempts"] == 1  # not retried: it crashed its runner alone
    assert db.predictions.count_documents({"job": ObjectId(items[1]["_id"])}) == 0
    # A new runner serves the model; other models' runners never stopped.
    ok = client.post("/jobs?wait=30", json={"model": "aborting", "inputs": [[0.2, 0.0, 0.0]]})
    assert ok.json()["status"] == "succeeded"
    iris = client.post("/jobs?wait=30", json={"model": "iris", "inputs": [SETOSA]})
    assert iris.json()["status"] == "succeeded"
    assert engine.runners.get(demo_models["iris"]).pid == iris_runner


def test_a_looping_model_fails_its_job_and_holds_nobody(start_server, db, demo_models, tmp_path):
    server = start_server({"MODEL_CALL_TIMEOUT_S": 3.0, "MAX_WAITING_REQUESTS": 4})
    model = uploaded(server, looping_model(tmp_path), "looping")
    assert db.models.find_one({"_id": ObjectId(model["_id"])})["test_call_ms"] > 0
    client, other = server.api("client", "looper"), server.api("client", "bystander")
    other.post("/jobs?wait=30", json={"model": "iris", "inputs": [SETOSA]})  # warm

    began = time.monotonic()
    holder = {}
    thread = threading.Thread(
        target=lambda: holder.update(
            answer=client.post("/jobs?wait=5", json={"model": "looping", "inputs": [[0.12, 0, 0]]})
        )
    )
    thread.start()
    # Meanwhile another client's jobs go on as usual.
    for _ in range(3):
        started = time.monotonic()
        iris = other.post("/jobs?wait=30", json={"model": "iris", "inputs": [SETOSA]})
        assert iris.json()["status"] == "succeeded"
        assert time.monotonic() - started < 2.5
    assert server.api().get("/healthz").status_code == 200
    thread.join(60)
    answer = holder["answer"]
    assert answer.status_code == 201, answer.text
    assert time.monotonic() - began < 5 + 2.5  # the wait, plus a margin on a loaded machine
    assert answer.json()["status"] in ("queued", "running")
    job = wait_for(lambda: finished(db, answer.json()["_id"]), 60, "the looping job to end")
    assert job["status"] == "failed"
    assert "took longer than" in job["error"] and "SIBYL_MODEL_CALL_TIMEOUT_MS" in job["error"]
    assert job["attempts"] == 1


def test_a_job_held_past_its_lease_is_stored_still_leased(start_server, db, tmp_path):
    """A ?wait= longer than the lease, on a job still running when the wait ends: the
    request stores it leased from then on (it was stored with the lease it got when
    accepted, long run out; a sweep took it back and it ran a second attempt)."""
    server = start_server({"LEASE_SECONDS": 2, "MODEL_CALL_TIMEOUT_S": 8.0})
    uploaded(server, looping_model(tmp_path), "looping")

    answer = server.api().post("/jobs?wait=4", json={"model": "looping", "inputs": [[1, 0, 0]]})

    assert answer.json()["status"] in ("queued", "running"), answer.text
    stored = job_status(db, answer.json()["_id"])
    assert stored["lease"]["until"] > datetime.now(UTC)
    job = wait_for(lambda: finished(db, answer.json()["_id"]), 60, "the looping job to end")
    assert "took longer than" in job["error"]
    assert job["attempts"] == 1


def test_waiting_requests_never_take_every_thread(start_server, db, demo_models, tmp_path):
    """Past MAX_WAITING_REQUESTS, a ?wait= waits at most a second, then answers with
    the job as stored."""
    server = start_server({"MODEL_CALL_TIMEOUT_S": 8.0, "MAX_WAITING_REQUESTS": 2})
    uploaded(server, looping_model(tmp_path), "looping")
    client = server.api("client")
    answers, times = [], []

    def wait_on_loop():
        started = time.monotonic()
        answers.append(
            client.post("/jobs?wait=6", json={"model": "looping", "inputs": [[0.12, 0, 0]]})
        )
        times.append(time.monotonic() - started)

    threads = [threading.Thread(target=wait_on_loop) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert [a.status_code for a in answers] == [201] * 5
    assert all(a.json()["status"] in ("queued", "running") for a in answers)
    quick = [t for t in times if t < 3]
    assert len(quick) >= 3, times  # at most 2 waited their 6 s


def test_memory_a_job_took_goes_back(start_server, db, demo_models, tmp_path):
    """The 600 MB a job takes are the runner's, never the API's, and gone after the job:
    freed by TensorFlow, or with the runner, which is restarted past RUNNER_RECYCLE_MB."""
    # A runner holds ~600 MB once TensorFlow is imported.
    server = start_server({"RUNNER_RECYCLE_MB": 1000, "MODEL_CALL_TIMEOUT_S": 30.0})
    model = uploaded(server, hungry_model(tmp_path), "hungry")
    client = server.api("client")
    engine = server.app.extensions["sibyl"].dispatcher.engine
    api_before = rss_mb(os.getpid())

    answer = client.post("/jobs?wait=60", json={"model": "hungry", "inputs": [[1.0, 0, 0]]})
    assert answer.json()["status"] == "succeeded", answer.text
    runner = engine.runners.get(db.models.find_one({"_id": ObjectId(model["_id"])}))
    assert runner.rss_mb() < 1000  # 0 when it was restarted
    assert rss_mb(os.getpid()) - api_before < 300


def test_a_runner_that_cannot_be_made_says_why_and_leaves_nothing(tmp_path):
    """Its model's copy not made (here: the file is gone; a full disk alike): the call
    fails with the reason, no path of the server, and no process or folder is left."""
    runner = ModelRunner(tmp_path / "gone.keras", "keras", RunnerLimits())
    before = set(Path(tempfile.gettempdir()).glob("sibyl-runner-*"))
    with pytest.raises(RunnerUnavailable) as refused:
        runner.predict({"features": np.zeros((1, 4), np.float32)}, 30)
    assert str(refused.value) == "the model runner could not be started: No such file or directory"
    assert runner.pid is None
    assert set(Path(tempfile.gettempdir()).glob("sibyl-runner-*")) == before


def test_a_runner_past_its_memory_threshold_is_restarted(model_files):
    runner = ModelRunner(model_files["tiny"], "keras", RunnerLimits(recycle_mb=100))
    batch = {"features": np.zeros((1, 4), np.float32)}
    try:
        first = runner.start() and runner.pid
        assert runner.predict(batch, 30).shape == (1, 3)
        assert runner.pid is None  # it held more than 100 MB after the call
        assert runner.predict(batch, 30).shape == (1, 3)  # a fresh one
        assert runner.pid is None and first is not None
    finally:
        runner.stop()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_outputs_the_database_cannot_hold_never_lose_a_job(live_server, db, demo_models, tmp_path):
    uploaded(live_server, huge_unsigned_model(tmp_path), "unsigned")
    answer = live_server.api("client").post(
        "/jobs?wait=30",
        json=[
            {"model": "unsigned", "inputs": [[1.0, 1.0, 1.0]]},
            {"model": "unsigned", "inputs": [[0.2, 1.0, 1.0]]},
        ],
    )
    assert answer.status_code == 201, answer.text
    items = answer.json()["_items"]
    assert [item["status"] for item in items] == ["succeeded", "succeeded"]
    assert items[0]["predictions"][0]["output"][0] == pytest.approx(1.8e19, rel=1e-6)
    assert items[1]["predictions"][0]["output"] == [0.0, 2.0, 2.0]


def test_an_output_too_large_to_store_is_the_models_error():
    with pytest.raises(ModelRaised, match="bytes per instance"):
        storable(np.zeros((2, MAX_OUTPUT_BYTES_PER_ROW // 4 + 1), np.float32), rows=2)
    with pytest.raises(ModelRaised, match="for a batch of 3 rows"):
        storable(np.zeros((2, 3), np.float32), rows=3)


def test_the_uploader_cannot_buy_an_endless_call_time_limit():
    pool = RunnerPool(lambda model: Path("."), RunnerLimits(call_timeout_s=5.0), capacity=1)
    assert pool.call_timeout_s({"test_call_ms": 0.2}, rows=256) == pytest.approx(5.256)
    # A model slow on purpose at its upload's test call: 59 s for 2 rows.
    assert pool.call_timeout_s({"test_call_ms": 59_000}, rows=256) == 15.0


def test_an_evicted_runner_stops_for_good_and_the_pool_starts_another(model_files):
    """Past SIBYL_MODEL_CACHE_SIZE the least recently used runner is stopped (in the
    background: another lane may be in its call) and never starts a process again."""
    pool = RunnerPool(lambda model: model_files["tiny"], RunnerLimits(), capacity=1)
    first, second = {"_id": "a", "format": "keras"}, {"_id": "b", "format": "keras"}
    batch = {"features": np.zeros((1, 4), np.float32)}
    try:
        evicted = pool.get(first)
        assert evicted.predict(batch, 30).shape == (1, 3)
        pid = evicted.pid
        pool.get(second)
        wait_for(lambda: evicted.pid is None, 30, "the evicted runner to stop")
        assert not Path(f"/proc/{pid}").exists()  # killed and reaped
        with pytest.raises(RunnerRetired):
            evicted.predict(batch, 30)
        assert evicted.pid is None
        assert pool.get(first) is not evicted
    finally:
        pool.stop()
