"""The fault scenarios of `make reliability`: each runs a load, injects its fault
`trials` times at random moments, and returns `account`'s row plus what it observed.

size: "full" or "tiny" (make test runs each once at tiny size).
"""

import os
import random
import signal
import time

from bench.reliability.harness import Cluster, Load, account, wait_until
from bench.slow_clients import healthz_under_slow_clients

SIZES = {
    "full": {"trials": 20, "clients": 8, "pause": (1.0, 3.0), "max_seconds": 40, "max_jobs": 500},
    "tiny": {"trials": 2, "clients": 3, "pause": (0.3, 0.8), "max_seconds": 30, "max_jobs": 150},
}


def started_load(cluster, sizes: dict, tag: str, instances: tuple, wait_s: int = 0) -> Load:
    """A Load of the scenario's size on the cluster, started."""
    return Load(
        cluster.url,
        cluster.key,
        tag,
        sizes["clients"],
        instances,
        wait_s=wait_s,
        max_seconds=sizes["max_seconds"],
        max_jobs=sizes["max_jobs"],
    ).start()


def plain_and_waiting(cluster, sizes: dict, tag: str) -> list[Load]:
    """Plain POSTs of 1 or 20 instances, and ?wait= POSTs of 1 or 5 (held, written once)."""
    return [
        started_load(cluster, sizes, tag, (1, 20)),
        started_load(cluster, sizes, f"{tag}_wait", (1, 5), wait_s=10),
    ]


def worker_kill(folder, size: str) -> dict:
    """Workers mode, 3 workers, jobs of 1 to 600 instances: SIGKILL a worker mid-batch,
    start another. Every acknowledged job ends succeeded, one prediction per instance."""
    sizes = SIZES[size]
    cluster = Cluster(folder, {"SIBYL_INFERENCE": "workers"})
    try:
        for _ in range(3):
            cluster.start_worker()
        load = started_load(cluster, sizes, "worker_kill", (1, 10, 100, 600))
        rng = random.Random(1)
        for _ in range(sizes["trials"]):
            time.sleep(rng.uniform(*sizes["pause"]))
            victim = rng.choice(cluster.live_workers())
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            cluster.start_worker()
        load.stop()
        return {"trials": sizes["trials"], **account(cluster, [load])}
    finally:
        cluster.stop()


def stale_worker(folder, size: str) -> dict:
    """SIGSTOP a worker past its lease; another finishes its jobs; SIGCONT it: its late
    writes change nothing (no duplicate, no orphan)."""
    sizes = SIZES[size]
    cluster = Cluster(folder, {"SIBYL_INFERENCE": "workers", "SIBYL_LEASE_SECONDS": "2"})
    try:
        stale, _other = cluster.start_worker(), cluster.start_worker()
        load = started_load(cluster, sizes, "stale_worker", (1, 50, 300))
        rng = random.Random(2)
        for _ in range(sizes["trials"]):
            time.sleep(rng.uniform(*sizes["pause"]))
            stale.send_signal(signal.SIGSTOP)
            time.sleep(3)  # past its 2 s lease: the other worker takes its jobs back
            stale.send_signal(signal.SIGCONT)
        load.stop()
        return {"trials": sizes["trials"], **account(cluster, [load])}
    finally:
        cluster.stop()


def api_kill(folder, size: str) -> dict:
    """In-process mode, 2 gunicorn workers: SIGKILL one mid-load. Its clients get a
    dropped connection, never a wrong answer; its jobs finish after their lease."""
    sizes = SIZES[size]
    cluster = Cluster(folder, {"SIBYL_WEB_WORKERS": "2"})
    try:
        loads = plain_and_waiting(cluster, sizes, "api_kill")
        rng = random.Random(3)
        for _ in range(sizes["trials"]):
            time.sleep(rng.uniform(*sizes["pause"]))
            victim = rng.choice(cluster.api_workers())
            os.kill(victim, signal.SIGKILL)
            wait_until(
                lambda: len(cluster.api_workers()) == 2 and cluster.ready(), 60, "a new worker"
            )
        for load in loads:
            load.stop()
        return {"trials": sizes["trials"], **account(cluster, loads)}
    finally:
        cluster.stop()


def database_kill(folder, size: str) -> dict:
    """SIGKILL the embedded database under plain and ?wait= load: run.py serve restarts
    it; meanwhile 503s with Retry-After (a 503 that may have stored names the jobs);
    every acknowledged job finishes once afterwards."""
    sizes = SIZES[size]
    # Leases as long as by default: a database restart takes seconds, and leases that
    # run out meanwhile would send jobs to a new attempt each time (as designed).
    cluster = Cluster(folder, {"SIBYL_LEASE_SECONDS": "30"})
    try:
        loads = plain_and_waiting(cluster, sizes, "database_kill")
        rng = random.Random(4)
        for _ in range(sizes["trials"]):
            time.sleep(rng.uniform(*sizes["pause"]))
            os.kill(cluster.database_pid(), signal.SIGKILL)
            time.sleep(0.5)
            wait_until(cluster.ready, 60, "the database to be back")
        for load in loads:
            load.stop()
        return {"trials": sizes["trials"], **account(cluster, loads)}
    finally:
        cluster.stop()


def slow_client_flood(folder, size: str) -> dict:
    """100 slow heads, 24 dripping bodies and 50 idle connections while clients send
    jobs: /v1/healthz answered within 5 s throughout (each one not answered is a 5xx)."""
    sizes = SIZES[size]
    cluster = Cluster(folder)
    try:
        load = started_load(cluster, sizes, "slow_clients", (1, 10))
        seconds = 20 if size == "full" else 10
        health = healthz_under_slow_clients(cluster.url, cluster.api.port, seconds, timeout_s=5)
        load.stop()
        row = account(cluster, [load])
        unanswered = health["tries"] - health["answered"]
        return {"trials": health["tries"], **row, "5xx": row["5xx"] + unanswered}
    finally:
        cluster.stop()


def graceful_shutdown(folder, size: str) -> dict:
    """SIGTERM run.py serve under load: in-flight ?wait= answered, it exits within 30 s;
    started again on the same data, every acknowledged job finishes exactly once."""
    sizes = SIZES[size]
    trials = max(1, sizes["trials"] // 5)
    loads, exits = [], []
    for trial in range(trials):
        cluster = Cluster(folder)
        load = started_load(cluster, sizes, f"shutdown_{trial}", (1, 50), wait_s=5)
        wait_until(lambda load=load: len(load.acknowledged) >= 10, 60, "jobs acknowledged")
        began = time.monotonic()
        cluster.api.process.send_signal(signal.SIGTERM)
        code = cluster.api.process.wait(60)
        exits.append(round(time.monotonic() - began, 1))
        load.stop()
        cluster.stop()
        assert code == 0, f"run.py serve exited with {code}"
        loads.append(load)
    cluster = Cluster(folder)  # the jobs left queued run after the restart
    try:
        row = account(cluster, loads)
    finally:
        cluster.stop()
    return {
        "trials": trials,
        "exit_seconds": max(exits),
        **row,
        "5xx": row["5xx"] + sum(1 for seconds in exits if seconds > 30),
    }


SCENARIOS = {
    "worker SIGKILL mid-batch": worker_kill,
    "stale worker (SIGSTOP past its lease)": stale_worker,
    "API process SIGKILL": api_kill,
    "database down and back": database_kill,
    "slow clients": slow_client_flood,
    "graceful shutdown": graceful_shutdown,
}
