"""The fault scenarios of `make reliability`: each runs a load, injects its fault
`trials` times at random moments, and returns `account`'s row plus what it observed.

size: "full" or "tiny" (make test runs each once at tiny size).
"""

import os
import random
import signal
import time

from bench.reliability import models
from bench.reliability.harness import (
    Cluster,
    FillableDisk,
    Load,
    account,
    wait_for_end,
    wait_until,
)
from bench.run import register_model
from bench.slow_clients import healthz_under_slow_clients

SIZES = {
    "full": {"trials": 20, "clients": 8, "pause": (1.0, 3.0), "max_seconds": 40, "max_jobs": 500},
    "tiny": {"trials": 2, "clients": 3, "pause": (0.3, 0.8), "max_seconds": 30, "max_jobs": 150},
}


def started_load(
    cluster, sizes: dict, tag: str, instances: tuple, wait_s: int = 0, **options
) -> Load:
    """A Load of the scenario's size on the cluster, started; options: Load's fields."""
    bounds = {
        "clients": sizes["clients"],
        "max_seconds": sizes["max_seconds"],
        "max_jobs": sizes["max_jobs"],
    }
    return Load(
        cluster.url, cluster.key, tag, sizes=instances, wait_s=wait_s, **{**bounds, **options}
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


def uploaded(cluster, build, folder) -> str:
    """The id of a model of bench/reliability/models.py, built once per folder and
    uploaded as an admin does (the scan and the test run at upload pass it)."""
    path = folder / "built" / f"{build.__name__}.zip"
    if not path.exists():
        path.parent.mkdir(exist_ok=True)
        build(path)
    return register_model(cluster.api, build.__name__, path)["_id"]


def hostile_loads(cluster, sizes: dict, tag: str, build, folder, **fails) -> list[Load]:
    """For a model that misbehaves on models.TRIGGER: a client's good jobs of it (1 or
    3 instances), and trials / 2 jobs of one trigger each, posted at random moments,
    each failing as `fails` (Load's fails_with, fails_after_attempts) says; all with
    ?wait=, so that the answer of a job that ended is checked too."""
    model = uploaded(cluster, build, folder)
    good = {"models": (model,), "instance": models.HARMLESS, "clients": 1, "wait_s": 10}
    bad = {**good, "instance": models.TRIGGER, "pause": sizes["pause"], **fails}
    return [
        started_load(cluster, sizes, f"{tag}_good", (1, 3), **good),
        started_load(cluster, sizes, tag, (1,), max_jobs=sizes["trials"] // 2, **bad),
    ]


def misbehaving_models(cluster, sizes: dict, folder, cases: dict) -> dict:
    """Iris clients (plain and ?wait=) and, per model of cases ({build: fails}), the
    hostile_loads; once every bad job is posted, the loads stop and are accounted."""
    hostile = [
        hostile_loads(cluster, sizes, build.__name__, build, folder, **fails)
        for build, fails in cases.items()
    ]
    loads = plain_and_waiting(cluster, sizes, f"{'_'.join(b.__name__ for b in cases)}_iris")
    for _, bad in hostile:
        bad.finish(sizes["max_seconds"] + 30)
    loads += [load for pair in hostile for load in pair]
    for load in loads:
        load.stop()
    return {"trials": sum(bad.sent() for _, bad in hostile), **account(cluster, loads)}


def poison_jobs(folder, size: str) -> dict:
    """Jobs that make their model raise (a failed assertion) or answer NaN, among good
    jobs of the same models and iris clients: each fails after SIBYL_MAX_ATTEMPTS (3)
    with its error and no prediction; every other job succeeds."""
    cluster = Cluster(folder, {"SIBYL_MAX_ATTEMPTS": "3"})
    try:
        after_three = "failed after 3 attempts: "
        return misbehaving_models(
            cluster,
            SIZES[size],
            folder,
            {
                models.raising: {
                    "fails_with": after_three + "the model raised InvalidArgumentError: assertion",
                    "fails_after_attempts": 3,
                },
                models.not_a_number: {
                    "fails_with": after_three + "the model's output for inputs[0] is not finite",
                    "fails_after_attempts": 3,
                },
            },
        )
    finally:
        cluster.stop()


def runaway_models(folder, size: str) -> dict:
    """Jobs that make their model loop past its time limit (2 s) or abort its runner
    (SIGABRT), among good jobs of the same models and iris clients: the runner is
    killed or dies and is replaced; each such job fails at its first attempt, alone;
    every other job succeeds."""
    cluster = Cluster(folder, {"SIBYL_MODEL_CALL_TIMEOUT_MS": "2000"})
    try:
        return misbehaving_models(
            cluster,
            SIZES[size],
            folder,
            {
                models.looping: {
                    "fails_with": "the model call took longer than",
                    "fails_after_attempts": 1,
                },
                models.aborting: {
                    "fails_with": "the model crashed while running this job (SIGABRT)",
                    "fails_after_attempts": 1,
                },
            },
        )
    finally:
        cluster.stop()


def disk_pressure(folder, size: str) -> dict:
    """The model cache's filesystem full (FillableDisk) under iris clients: iris, loaded
    before, keeps serving; jobs of a model uploaded meanwhile, which cannot be copied
    into the cache, fail after SIBYL_MAX_ATTEMPTS (3) with an error naming the cache;
    once space is freed the same model serves. trials / 5 times, a new model each."""
    sizes = SIZES[size]
    cycles = max(1, sizes["trials"] // 5)
    seconds = sizes["max_seconds"] / 4
    disk = FillableDisk(folder / f"cache-{time.monotonic_ns()}")
    cluster = Cluster(folder, {"SIBYL_MODEL_CACHE_DIR": str(disk.path), "SIBYL_MAX_ATTEMPTS": "3"})
    loads: list[Load] = []
    try:
        for cycle in range(cycles):
            model = uploaded(cluster, models.plain, folder)  # a new version: not in the cache
            iris = plain_and_waiting(cluster, sizes, f"disk_{cycle}")
            wait_until(
                lambda iris=iris: cluster.db.jobs.find_one(
                    {"tags.run": {"$in": [load.tag for load in iris]}, "status": "succeeded"}
                ),
                60,
                "iris to serve",
            )
            good = {"models": (model,), "instance": models.HARMLESS, "clients": 2}
            disk.fill()
            try:
                full = started_load(
                    cluster,
                    sizes,
                    f"disk_full_{cycle}",
                    (1, 5),
                    wait_s=10,
                    max_seconds=seconds,
                    fails_with="failed after 3 attempts: the model could not be loaded: its "
                    "file could not be written to the model cache (SIBYL_MODEL_CACHE_DIR): ",
                    fails_after_attempts=3,
                    **good,
                )
                full.finish(seconds + 60)
                wait_for_end(cluster, [full], 60)
            finally:
                disk.free()
            freed = started_load(
                cluster,
                sizes,
                f"disk_freed_{cycle}",
                (1, 5),
                wait_s=10,
                max_seconds=seconds,
                **good,
            )
            freed.finish(seconds + 60)
            for load in iris:
                load.stop()
            loads += [*iris, full, freed]
        return {"trials": cycles, **account(cluster, loads)}
    finally:
        cluster.stop()
        disk.remove()


SCENARIOS = {
    "worker SIGKILL mid-batch": worker_kill,
    "stale worker (SIGSTOP past its lease)": stale_worker,
    "API process SIGKILL": api_kill,
    "database down and back": database_kill,
    "slow clients": slow_client_flood,
    "graceful shutdown": graceful_shutdown,
    "poison jobs (raise, NaN)": poison_jobs,
    "runaway and crashing models": runaway_models,
    "model cache disk full": disk_pressure,
}
