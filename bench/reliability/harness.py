"""What every fault scenario shares: Sibyl started as `make run` starts it, a steady
stream of jobs from several clients, and the accounting of what became of them.

A scenario starts a Cluster (run.py serve, and run.py worker processes in workers
mode), runs a Load while it injects its fault, stops the load, lets the service
drain, and calls `account`: jobs acknowledged and finished, predictions expected and
stored, duplicates, orphans, jobs stored that their client was not told about, 5xx,
and jobs failed: only a poison Load's (a scenario's misbehaving inputs), each with
the error and after the attempts its Load expects.
Every process is started here and stopped by its id; every loop is bounded in count
and in time.
"""

import errno
import functools
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pymongo
import requests
from bson import ObjectId

from bench.servers import ROOT, Server, command_line, process_tree, start_sibyl
from service.demo.models import load_digits, load_iris

DRAIN_SECONDS = 120  # after the load: every acknowledged job must end within this


@functools.cache
def demo_instance(model: str) -> list:
    """The first instance of a demo model's data: a setosa's measurements, a handwritten 0."""
    return {"iris": load_iris, "digits": load_digits}[model]()[0][0].tolist()


def wait_until(condition, seconds: float, what: str):
    """Poll condition() until it is truthy (returned) or seconds pass (AssertionError)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {seconds} s waiting for {what}")


class Cluster:
    """Sibyl on one data folder: `run.py serve` (gunicorn, its embedded database, the
    demo models trained on the folder's first start) and, in workers mode, `run.py
    worker` processes. env: settings for all of them."""

    def __init__(self, folder: Path, env: dict | None = None, admin_key: str = ""):
        self.folder = folder
        self.env = {
            # Leases short enough that a scenario sees them expire.
            "SIBYL_LEASE_SECONDS": "5",
            "SIBYL_POLL_MS": "200",
            "SIBYL_RATE_LIMITS": "off",
            **(env or {}),
        }
        self.api: Server = start_sibyl(folder, self.env, admin_key=admin_key)
        self.api.wait_until_healthy()
        self.url = self.api.url
        self.key = self.api.admin_key
        self.workers: list[subprocess.Popen] = []
        uri = (folder / "db" / "uri").read_text().strip()
        self.db = pymongo.MongoClient(uri, tz_aware=True)["sibyl"]

    def start_worker(self) -> subprocess.Popen:
        """A `run.py worker` on the cluster's database, logging beside it."""
        log = open(self.folder / f"worker-{len(self.workers)}.log", "wb")  # noqa: SIM115
        env = {
            **os.environ,
            **self.env,
            "MONGO_URI": (self.folder / "db" / "uri").read_text().strip(),
            "SIBYL_MODEL_CACHE_DIR": str(self.folder / "models"),
        }
        worker = subprocess.Popen(
            [sys.executable, "run.py", "worker"], cwd=ROOT, env=env, stdout=log, stderr=log
        )
        self.workers.append(worker)
        return worker

    def live_workers(self) -> list[subprocess.Popen]:
        return [worker for worker in self.workers if worker.poll() is None]

    def database_pid(self) -> int:
        (pid,) = [p for p in process_tree(self.api.process.pid) if "secantus" in command_line(p)]
        return pid

    def api_workers(self) -> list[int]:
        """The gunicorn workers (children of the master running run.py serve)."""
        return [
            pid
            for pid in process_tree(self.api.process.pid)[1:]
            if "run.py serve" in command_line(pid)
        ]

    def ready(self) -> bool:
        try:
            return requests.get(self.url + "/v1/readyz", timeout=5).status_code == 200
        except requests.RequestException:
            return False

    def stop(self) -> None:
        for worker in self.workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        for worker in self.workers:
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
        self.db.client.close()
        self.api.stop()


class FillableDisk:
    """A folder that can be made full, and freed: a tmpfs of its own filled to the last
    byte (as root, where mounting is allowed), else made unwritable by its mode (which
    binds every user but root). A real full filesystem, not a simulated error."""

    def __init__(self, path: Path, megabytes: int = 4):
        path.mkdir()
        self.path = path
        mount = ["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "sibyl-reliability", path]
        mounted = (
            subprocess.run(mount, capture_output=True, text=True) if os.geteuid() == 0 else None
        )
        self.mounted = mounted is not None and mounted.returncode == 0
        if os.geteuid() == 0 and not self.mounted:
            path.rmdir()
            raise RuntimeError(f"cannot fill a disk here: {mounted.stderr.strip()}")

    def fill(self) -> None:
        if not self.mounted:
            self.path.chmod(0o555)
            return
        with open(self.path / "filler", "wb", buffering=0) as filler:
            try:
                for _ in range(100_000):  # 6.5 GB at most; a tmpfs of megabytes is full long before
                    filler.write(bytes(65536))
            except OSError as error:
                if error.errno != errno.ENOSPC:
                    raise
                return
        raise AssertionError(f"{self.path} never filled up")

    def free(self) -> None:
        if self.mounted:
            (self.path / "filler").unlink()
        else:
            self.path.chmod(0o755)

    def remove(self) -> None:
        if self.mounted:
            subprocess.run(["umount", self.path], check=True)
        shutil.rmtree(self.path, ignore_errors=True)


@dataclass
class Load:
    """clients threads POSTing jobs of `sizes` copies of `instance` (a demo model's
    first instance when None) to one of `models` (size and model picked at random each
    time), plain or with ?wait=, tagged {"run": tag}, `pause` seconds apart (a random
    time within it), until stop() or max_jobs or max_seconds.

    Closed loop by default: a client sends its next job once the last is answered. At
    rate_per_s, open loop: the jobs are due on a fixed schedule, each sent by whichever
    client is free, and a job's latency counts from when it was due, so a service that
    falls behind shows it in the latencies (rather than in fewer jobs sent).

    fails_with: every job of the load must fail with an error holding this text, after
    fails_after_attempts attempts (a scenario's poison); empty: every job must succeed."""

    url: str
    key: str
    tag: str
    clients: int = 8
    sizes: tuple[int, ...] = (1,)
    models: tuple[str, ...] = ("iris",)
    rate_per_s: float = 0.0
    wait_s: int = 0
    max_jobs: int = 100_000
    max_seconds: float = 120.0
    instance: list | None = None
    pause: tuple[float, float] = (0.0, 0.0)
    fails_with: str = ""
    fails_after_attempts: int = 0
    acknowledged: dict[str, int] = field(default_factory=dict)  # id -> instances
    maybe: dict[str, int] = field(default_factory=dict)  # 503 naming them: may be stored
    statuses: Counter = field(default_factory=Counter)
    dropped: int = 0  # connections reset or timed out (a killed process)
    wrong: list = field(default_factory=list)  # answers that contradict the request
    # (seconds from start to when the job was due, milliseconds until it was answered)
    latencies: list[tuple[float, float]] = field(default_factory=list)

    def __post_init__(self):
        self._due = 0  # open loop: the next job of the schedule
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._client, args=(i,), daemon=True)
            for i in range(self.clients)
        ]

    def start(self) -> "Load":
        self._began = time.monotonic()
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.finish(60)

    def finish(self, seconds: float) -> None:
        """Wait for the clients to end by themselves (max_jobs or max_seconds)."""
        for thread in self._threads:
            thread.join(seconds)

    def sent(self) -> int:
        return sum(self.statuses.values()) + self.dropped

    def _client(self, number: int) -> None:
        rng = random.Random(f"{self.tag}:{number}")
        http = requests.Session()
        http.headers["Authorization"] = f"Bearer {self.key}"
        url = self.url + "/v1/jobs" + (f"?wait={self.wait_s}" if self.wait_s else "")
        while not self._stop.is_set():
            due = self._next_due()
            if due is None or self._stop.wait(max(0.0, due - time.monotonic())):
                return
            if self.pause[1] and self._stop.wait(rng.uniform(*self.pause)):
                return
            model, size = rng.choice(self.models), rng.choice(self.sizes)
            body = {
                "model": model,
                "inputs": [self.instance or demo_instance(model)] * size,
                "tags": {"run": self.tag},
            }
            try:
                answer = http.post(url, json=body, timeout=self.wait_s + 30)
            except requests.RequestException:
                with self._lock:
                    self.dropped += 1
                time.sleep(0.05)
                continue
            self._record(answer, size, due)

    def _next_due(self) -> float | None:
        """When the client's next job is due (time.monotonic()): now in a closed loop, the
        schedule's next in an open one; None once the load is over."""
        if self.sent() >= self.max_jobs or time.monotonic() - self._began > self.max_seconds:
            return None
        if not self.rate_per_s:
            return time.monotonic()
        with self._lock:
            due = self._began + self._due / self.rate_per_s
            self._due += 1
        return due if due - self._began <= self.max_seconds else None

    def _record(self, answer: requests.Response, size: int, due: float) -> None:
        with self._lock:
            self.latencies.append((due - self._began, (time.monotonic() - due) * 1000))
            self.statuses[answer.status_code] += 1
            if answer.status_code == 201:
                job = answer.json()
                self.acknowledged[job["_id"]] = size
                if job["status"] == "succeeded" and len(job.get("predictions", [])) != size:
                    self.wrong.append(job["_id"])
                # A ?wait= answer of a poison job that ended says how, as stored.
                ended = job["status"] in ("succeeded", "failed")
                if self.fails_with and ended and not failed_as_expected(job, self):
                    self.wrong.append(job["_id"])
            elif answer.status_code == 503:
                if "Retry-After" not in answer.headers:
                    self.wrong.append("503 without Retry-After")
                for job_id in answer.json().get("_jobs", []):
                    self.maybe[job_id] = size
        if answer.status_code >= 500:
            time.sleep(0.2)  # as a client told to retry later would


def undocumented_5xx(load: Load) -> int:
    """5xx answers other than the documented 503 (database down, with Retry-After)."""
    return sum(n for status, n in load.statuses.items() if status >= 500 and status != 503)


def wait_for_end(cluster: Cluster, loads: list[Load], seconds: float = DRAIN_SECONDS) -> None:
    """Until every job of the loads has ended (AssertionError past seconds)."""
    active = {
        "tags.run": {"$in": [load.tag for load in loads]},
        "status": {"$in": ["queued", "running"]},
    }
    wait_until(
        lambda: cluster.ready() and not cluster.db.jobs.find_one(active, {"_id": 1}),
        seconds,
        "every job to end",
    )


def failed_as_expected(job: dict, load: Load) -> bool:
    """A job of a poison load ended as the load says it must."""
    return (
        job["status"] == "failed"
        and load.fails_with in (job.get("error") or "")
        and job.get("attempts") == load.fails_after_attempts
    )


def account(cluster: Cluster, loads: list[Load]) -> dict:
    """Once every job of the loads has ended (DRAIN_SECONDS at most): what became of them."""
    tags = [load.tag for load in loads]
    db = cluster.db
    wait_for_end(cluster, loads)
    acknowledged = {ObjectId(i): n for load in loads for i, n in load.acknowledged.items()}
    poison = {ObjectId(i): load for load in loads if load.fails_with for i in load.acknowledged}
    told = set(acknowledged) | {ObjectId(i) for load in loads for i in load.maybe}
    jobs = {job["_id"]: job for job in db.jobs.find({"tags.run": {"$in": tags}}, {"inputs": 0})}
    per_job: Counter = Counter()
    indexes: dict[ObjectId, set] = {}
    ids = list(jobs)
    for start in range(0, len(ids), 1000):
        for row in db.predictions.find(
            {"job": {"$in": ids[start : start + 1000]}}, {"job": 1, "index": 1}
        ):
            per_job[row["job"]] += 1
            indexes.setdefault(row["job"], set()).add(row["index"])
    succeeded = [i for i, job in jobs.items() if job["status"] == "succeeded"]
    failed = [i for i in acknowledged if jobs.get(i, {}).get("status") == "failed"]
    expected = sum(jobs[i]["progress"]["total"] for i in succeeded)
    return {
        "jobs_acknowledged": len(acknowledged),
        "jobs_finished": sum(1 for i in acknowledged if i in succeeded),
        "lost": sum(1 for i in acknowledged if i not in jobs),
        "failed": len(failed),
        "failed_as_expected": sum(
            1 for i in failed if i in poison and failed_as_expected(jobs[i], poison[i])
        ),
        "failed_unrun": sum(1 for i in failed if not per_job[i]),
        "predictions_expected": expected,
        "predictions_stored": sum(per_job[i] for i in succeeded),
        "duplicates": sum(per_job[i] - len(indexes.get(i, ())) for i in jobs),
        "orphans": sum(per_job[i] for i in jobs if jobs[i]["status"] != "succeeded"),
        "stored_untold": sum(1 for i in jobs if i not in told),
        "wrong_answers": sum(len(load.wrong) for load in loads),
        "5xx": sum(undocumented_5xx(load) for load in loads),
        "503": sum(load.statuses[503] for load in loads),
        "dropped": sum(load.dropped for load in loads),
        "expected_failed": len(poison),
    }


def passed(row: dict) -> bool:
    """Nothing lost, duplicated, orphaned, hidden, wrong or failed unexpectedly; every
    poison job failed as its load says."""
    return (
        row["lost"] == 0
        and row["duplicates"] == 0
        and row["orphans"] == 0
        # A job stored for a request whose connection dropped (its process killed)
        # could not be told: at most one per dropped request.
        and row["stored_untold"] <= row["dropped"]
        and row["wrong_answers"] == 0
        and row["5xx"] == 0
        and row["failed"] == row["failed_as_expected"] == row["expected_failed"]
        and row["predictions_stored"] == row["predictions_expected"]
        and row["jobs_acknowledged"] > 0
    )
