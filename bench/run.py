"""`make bench`: Sibyl against three baselines and the in-process limit, in one run.

The baselines (bench/baselines/), served like Sibyl under gunicorn and loaded by the
same closed-loop client: "tutorial" (Flask, `model.predict` per request), "fast, no
record" (Flask, a compiled model call per request) and "same work" (the same, plus the
job and its predictions stored in Sibyl's database with Sibyl's write concern). Models:
Sibyl's two tiny demo models, and an expensive CNN built in code (bench/cnn.py) and
registered through POST /v1/models.

Sibyl runs as configured by default, access control on: the load sends a client key
(rate limits are counted, set far above the load); the cost of that is measured against
the same load on SIBYL_AUTH=off.

    python -m bench.run [--quick]

Every figure is reported next to its baseline from the same run, as a ratio.
Results go to bench/results/<timestamp>.json and a markdown table on stdout.
--quick runs every part at a tiny size (make test does, to keep this working).
"""

import argparse
import functools
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pymongo
import requests
from bson import json_util

from bench import cnn, limits
from bench.loadgen import LoadResult, run_load
from bench.servers import BASELINES, ROOT, Server, start_baseline, start_sibyl
from bench.slow_clients import healthz_under_slow_clients
from service.demo.models import load_digits, load_iris

RESULTS = ROOT / "bench" / "results"

# Every load is bounded by requests and by seconds; the expensive model's only by time.
FULL = {
    "concurrency": [1, 8, 32],
    "max_requests": 3000,
    "max_seconds": 8.0,
    "cnn": "full",
    "cnn_concurrency": 32,
    "cnn_max_requests": 100_000,
    "cnn_seconds": 15.0,
    "bulk_instances": 10_000,
    "analyst_sizes": [1_000, 100_000],
    "analyst_requests": 200,
    "analyst_seconds": 30.0,
    "limit_seconds": 2.0,
    "runner_calls": 300,
    "access_concurrency": 32,
    "access_turns": 4,
    "slow_seconds": 20.0,
    "fair_concurrency": 4,
}
QUICK = {
    "concurrency": [1, 4],
    "max_requests": 20,
    "max_seconds": 5.0,
    "cnn": "quick",
    "cnn_concurrency": 4,
    "cnn_max_requests": 12,
    "cnn_seconds": 3.0,
    "bulk_instances": 300,
    "analyst_sizes": [100, 1_000],
    "analyst_requests": 10,
    "analyst_seconds": 5.0,
    "limit_seconds": 0.2,
    "runner_calls": 30,
    "access_concurrency": 4,
    "access_turns": 2,
    "slow_seconds": 8.0,
    "fair_concurrency": 2,
}
CNN = "cnn"  # the expensive model's name in Sibyl
# The servers of the end-to-end table, same work first: the comparison that matters.
LABELS = {
    "same_work": "same work",
    "fast_no_record": "fast, no record",
    "tutorial": "tutorial",
    "sibyl": "Sibyl",
}


@functools.cache
def sample_inputs() -> dict[str, list]:
    features, _ = load_iris()
    images, _ = load_digits()
    return {"iris": features.tolist(), "digits": images[:200].tolist()}


def iris_body(i: int) -> dict:
    features = sample_inputs()["iris"]
    return {"model": "iris", "inputs": [features[i % len(features)]]}


def succeeded(status: int, body: bytes) -> bool:
    return status == 201 and b'"status": "succeeded"' in body


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def make_key(sibyl, role: str, name: str = "") -> str:
    """A new API key of the role (its owner: name), made with Sibyl's admin key."""
    created = requests.post(
        sibyl.url + "/v1/keys",
        json={"role": role, "name": name or f"bench {role}"},
        headers=bearer(sibyl.admin_key),
        timeout=10,
    )
    created.raise_for_status()
    return created.json()["key"]


def check_access_control(sibyl, key: str) -> None:
    """Measure nothing on a misconfigured server: keys required, rate limits counted."""
    without = requests.get(sibyl.url + "/v1/models", timeout=10)
    assert without.status_code == 401, f"Sibyl answered {without.status_code} without a key"
    keyed = requests.get(sibyl.url + "/v1/models", headers=bearer(key), timeout=10)
    assert keyed.status_code == 200 and "RateLimit-Limit" in keyed.headers, keyed.headers


def register_model(sibyl, name: str, path: Path, labels: list[str] | None = None) -> dict:
    """Upload a model as an admin does; Sibyl checks it like any upload. The stored model."""
    with open(path, "rb") as upload:
        created = requests.post(
            sibyl.url + "/v1/models",
            data={"name": name, **({"labels": json.dumps(labels)} if labels else {})},
            files={"file": (path.name, upload, "application/octet-stream")},
            headers=bearer(sibyl.admin_key),
            timeout=300,
        )
    assert created.status_code == 201, created.text[:1000]
    return created.json()


def loaded(server: Server, sibyl: Server, path: str, body, bounds: dict, **options) -> tuple:
    """Load a server; return the result and the CPU seconds its API (or app) processes
    and the database (Sibyl's child, whoever writes to it) used for the measured
    requests (after the warm-up)."""
    before = {}

    def read_counters() -> None:
        before.update(api=server.cpu_by_role()["app"], database=sibyl.cpu_by_role()["db"])

    result = run_load(server.url + path, body, **bounds, **options, on_started=read_counters)
    cpu = {
        "api": server.cpu_by_role()["app"] - before["api"],
        "database": sibyl.cpu_by_role()["db"] - before["database"],
    }
    return result, cpu


def per_job(cpu_seconds: dict, jobs: int) -> dict:
    """CPU ms per job of each role."""
    return {role: round(seconds * 1000 / max(jobs, 1), 2) for role, seconds in cpu_seconds.items()}


def tiny_model_loads(sizes: dict) -> list[dict]:
    """Each tiny model at each concurrency, bounded by requests and by time."""
    loads = []
    for model, instances in sample_inputs().items():
        for concurrency in sizes["concurrency"]:

            def body(i, model=model, instances=instances):
                return {"model": model, "inputs": [instances[i % len(instances)]]}

            bounds = dict(
                concurrency=concurrency,
                max_requests=sizes["max_requests"],
                max_seconds=sizes["max_seconds"],
            )
            loads.append({"model": model, "body": body, "bounds": bounds, "warmup": 5})
    return loads


def expensive_model_load(sizes: dict, side: int) -> dict:
    """The CNN at one concurrency, bounded by time; its bodies (side x side x 3 pixels
    each) encoded once."""
    images = cnn.sample_images(8, side)
    bodies = [json.dumps({"model": CNN, "inputs": [image]}).encode() for image in images]
    bounds = dict(
        concurrency=sizes["cnn_concurrency"],
        max_requests=sizes["cnn_max_requests"],
        max_seconds=sizes["cnn_seconds"],
    )
    return {"model": CNN, "body": lambda i: bodies[i % len(bodies)], "bounds": bounds, "warmup": 1}


def end_to_end(sibyl: Server, baselines: dict, loads: list[dict], key: str) -> list[dict]:
    """Single-instance jobs through every server, one after the other for each load:
    the baselines (POST /predict) and Sibyl (POST /v1/jobs?wait=, with the key). Sibyl
    and the same-work app, which share the database, take turns going first from one
    load to the next (the database slows as jobs accumulate), the same-work app first."""
    rows = []
    for turn, load in enumerate(loads):
        pair = ["same_work", "sibyl"]
        order = ["tutorial", "fast_no_record", *(pair[::-1] if turn % 2 else pair)]
        row = {"model": load["model"], "concurrency": load["bounds"]["concurrency"]}
        for name in order:
            if name == "sibyl":
                server, path = sibyl, "/v1/jobs?wait=30"
                options = {"is_success": succeeded, "headers": bearer(key)}
            else:
                server, path, options = baselines[name], "/predict", {}
            result, cpu = loaded(
                server, sibyl, path, load["body"], load["bounds"], warmup=load["warmup"], **options
            )
            row[name] = {**result.summary(), "cpu_ms_per_job": per_job(cpu, result.requests)}
        row["sibyl_against"] = {name: ratios(row[name], row["sibyl"]) for name in BASELINES}
        rows.append(row)
        against = ", ".join(
            f"{row['sibyl_against'][name]['throughput_ratio']}x {LABELS[name]}"
            for name in LABELS
            if name != "sibyl"
        )
        print(f"  {row['model']} c={row['concurrency']}: Sibyl jobs/s {against}", flush=True)
    return rows


def observed_batches(db, model: str) -> dict:
    """The sizes of the model calls that produced the model's stored predictions."""
    calls = {
        doc["batch"]["id"]: doc["batch"]["size"]
        for doc in db.predictions.find({"model": model}, {"batch": 1})
    }
    if not calls:
        return {"calls": 0, "mean_size": None, "max_size": None}
    sizes = list(calls.values())
    return {
        "calls": len(sizes),
        "mean_size": round(statistics.fmean(sizes), 1),
        "max_size": max(sizes),
    }


def expensive_model_limit(path: Path, db, sizes: dict, batches: dict, sibyl_row: dict) -> dict:
    """The in-process limit for the CNN at Sibyl's batch sizes (compiled call +
    insert_many, no HTTP), against Sibyl's jobs/s on it."""
    import settings

    concurrency = sizes["cnn_concurrency"]
    batch_sizes = {1, concurrency, settings.MAX_BATCH_SIZE}
    if batches["mean_size"]:
        batch_sizes.add(max(1, round(batches["mean_size"])))
    limit = limits.single_instance_limit(
        str(path), sorted(batch_sizes), sizes["limit_seconds"], db, 8 * concurrency
    )
    sibyl_jobs = sibyl_row["sibyl"]["throughput_per_s"]
    fractions = {size: round(sibyl_jobs / jobs, 3) for size, jobs in limit["jobs_per_s"].items()}
    return {
        **limit,
        "batches_in_sibyl": batches,
        "concurrency": concurrency,
        "sibyl_jobs_per_s": sibyl_jobs,
        "sibyl_fraction_of_limit": fractions,
    }


@contextmanager
def second_api(
    sibyl: Server, workdir: Path, name: str, env: dict, key: str, script: str = "run.py"
):
    """A second Sibyl API with env on the same database, warmed with one job."""
    folder = workdir / name
    folder.mkdir()
    mongo_uri = (workdir / "db" / "uri").read_text().strip()
    other = start_sibyl(folder, env, mongo_uri=mongo_uri, admin_key=sibyl.admin_key, script=script)
    try:
        other.wait_until_healthy()
        requests.post(
            other.url + "/v1/jobs?wait=30", json=iris_body(0), headers=bearer(key), timeout=40
        )
        yield other
    finally:
        other.stop()


def alternating_turn(sibyl: Server, pair: list, turn: int, bounds: dict, key: str) -> dict:
    """Single-instance iris jobs through each (name, server) of pair, one after the
    other, each going first in every other turn (the database slows as jobs
    accumulate): {name: (load result, CPU seconds of its API and of the database)}."""
    measured = {}
    for name, server in pair[::-1] if turn % 2 else pair:
        measured[name] = loaded(
            server,
            sibyl,
            "/v1/jobs?wait=30",
            iris_body,
            bounds,
            is_success=succeeded,
            headers=bearer(key),
        )
    return measured


def write_concern_cost(sibyl: Server, workdir: Path, sizes: dict, key: str) -> dict:
    """Single-instance iris jobs with Sibyl's write concern (journaled by default) against
    w:1 without journal: a second API (SIBYL_WRITE_CONCERN=w1) on the same database,
    loaded one after the other at each concurrency."""
    import settings

    rows = []
    with second_api(sibyl, workdir, "w1", {"SIBYL_WRITE_CONCERN": "w1"}, key) as unjournaled:
        for turn, concurrency in enumerate(sizes["concurrency"]):
            bounds = dict(
                concurrency=concurrency,
                max_requests=sizes["max_requests"],
                max_seconds=sizes["max_seconds"],
            )
            pair = [("w1", unjournaled), ("durable", sibyl)]
            row = {"concurrency": concurrency}
            for name, (result, cpu) in alternating_turn(sibyl, pair, turn, bounds, key).items():
                row[name] = {**result.summary(), "cpu_ms_per_job": per_job(cpu, result.requests)}
            row.update(ratios(row["w1"], row["durable"]))
            rows.append(row)
            print(
                f"  iris c={concurrency}: durable {row['throughput_ratio']}x w1 jobs/s", flush=True
            )
    return {"durable": settings.WRITE_CONCERN, "rows": rows}


def access_control_cost(sibyl: Server, workdir: Path, sizes: dict, key: str) -> dict:
    """Single-instance iris jobs through Sibyl as configured (the client key checked on
    every request, rate limits counted) against a second API on the same database with
    SIBYL_AUTH=off (no keys, no rate limits): alternating turns at one concurrency, each
    side going first in every other turn, totalled over the turns. Both get the key's
    header, so the clients do the same work; the open API ignores it."""
    bounds = dict(
        concurrency=sizes["access_concurrency"],
        max_requests=sizes["max_requests"],
        max_seconds=sizes["max_seconds"],
    )
    loads: dict[str, list] = {"off": [], "on": []}
    cpu = {"off": {"api": 0.0, "database": 0.0}, "on": {"api": 0.0, "database": 0.0}}
    turns = []
    with second_api(sibyl, workdir, "auth-off", {"SIBYL_AUTH": "off"}, key) as open_api:
        for turn in range(sizes["access_turns"]):
            pair = [("off", open_api), ("on", sibyl)]
            row = {"turn": turn + 1}
            for name, (result, used) in alternating_turn(sibyl, pair, turn, bounds, key).items():
                for role, seconds in used.items():
                    cpu[name][role] += seconds
                loads[name].append(result)
                row[name] = result.summary()
            row.update(ratios(row["off"], row["on"]))
            turns.append(row)
            print(
                f"  turn {turn + 1}, iris c={bounds['concurrency']}: "
                f"access control {row['throughput_ratio']}x jobs/s",
                flush=True,
            )
    total = {}
    for name, results in loads.items():
        merged = LoadResult(bounds["concurrency"])
        for result in results:
            merged.requests += result.requests
            merged.errors += result.errors
            merged.failures += result.failures
            merged.seconds += result.seconds
            merged.latencies_ms += result.latencies_ms
        total[name] = {**merged.summary(), "cpu_ms_per_job": per_job(cpu[name], merged.requests)}
    return {
        "concurrency": bounds["concurrency"],
        "turns": turns,
        **total,
        **ratios(total["off"], total["on"]),
    }


def front_cost(sibyl: Server, workdir: Path, sizes: dict, key: str) -> dict:
    """Sibyl's front (uvicorn workers under gunicorn) against its former one (gunicorn's
    threaded worker, bench/threaded_front.py) on the same database: single-instance iris
    jobs at 1 client and at the most, in alternating turns; then healthz under slow
    clients on each."""
    rows = []
    with second_api(sibyl, workdir, "threads", {}, key, script="bench/threaded_front.py") as old:
        pair = [("threads", old), ("front", sibyl)]
        for turn, concurrency in enumerate([1, max(sizes["concurrency"])]):
            bounds = dict(
                concurrency=concurrency,
                max_requests=sizes["max_requests"],
                max_seconds=sizes["max_seconds"],
            )
            row = {"concurrency": concurrency}
            for name, (result, cpu) in alternating_turn(sibyl, pair, turn, bounds, key).items():
                row[name] = {**result.summary(), "cpu_ms_per_job": per_job(cpu, result.requests)}
            row.update(ratios(row["threads"], row["front"]))
            rows.append(row)
            print(f"  iris c={concurrency}: front {row['throughput_ratio']}x jobs/s", flush=True)
        slow = {
            name: healthz_under_slow_clients(server.url, server.port, sizes["slow_seconds"])
            for name, server in pair
        }
        print(f"  healthz answered under slow clients: {slow}", flush=True)
    return {"rows": rows, "slow_clients": slow}


def fairness(sibyl: Server, sizes: dict, keys: dict) -> dict:
    """Single-instance iris jobs from a few clients, on an idle service and then while
    another client's 10,000-instance jobs run one after another: p99 against p99."""
    bounds = dict(
        concurrency=sizes["fair_concurrency"],
        max_requests=sizes["max_requests"],
        max_seconds=sizes["max_seconds"],
    )
    url, headers = sibyl.url + "/v1/jobs?wait=30", bearer(keys["client"])
    idle = run_load(url, iris_body, **bounds, is_success=succeeded, headers=headers)
    features = load_iris()[0].tolist()
    large = {"model": "iris", "inputs": [features[i % len(features)] for i in range(10_000)]}
    stop, large_jobs = threading.Event(), []

    def post_large_jobs() -> None:
        http = requests.Session()
        http.headers.update(bearer(keys["other"]))
        while not stop.is_set():
            answer = http.post(sibyl.url + "/v1/jobs?wait=60", json=large, timeout=90)
            large_jobs.append(answer.json().get("status"))

    poster = threading.Thread(target=post_large_jobs, daemon=True)
    poster.start()
    try:
        loaded = run_load(url, iris_body, **bounds, is_success=succeeded, headers=headers)
    finally:
        stop.set()
        poster.join(120)
    row = {"idle": idle.summary(), "loaded": loaded.summary(), "large_jobs": large_jobs}
    row.update(ratios(row["idle"], row["loaded"]))
    print(f"  p99 with 10,000-instance jobs running: {row['p99_ratio']}x idle", flush=True)
    return row


def front_markdown(results: dict) -> list[str]:
    """The front against the threaded worker it replaced."""
    front = results["front"]
    lines = paired_section(
        "The front: uvicorn workers under gunicorn against gunicorn's threaded worker",
        "Single-instance iris jobs through Sibyl (its front reads whole requests in an event "
        "loop) and through a second Sibyl API on the same database served as before it "
        "(gunicorn's threaded worker, `bench/threaded_front.py`), alternating turns.",
        ("clients", "threads", "front"),
        [(row["concurrency"], row["threads"], row["front"], row) for row in front["rows"]],
    )
    slow = front["slow_clients"]
    lines.append(
        "\n`GET /v1/healthz` answered within 3 s while 100 slow heads (a byte per 0.3 s), 24 "
        "dripping 1 MB bodies and 50 idle keep-alive connections were open: threads "
        f"**{slow['threads']['answered']} of {slow['threads']['tries']}**, front "
        f"**{slow['front']['answered']} of {slow['front']['tries']}**."
    )
    return lines


def two_workers(
    sibyl: Server, workdir: Path, model_dir: Path, sizes: dict, key: str, one_worker: dict
) -> dict:
    """Single-instance iris jobs through the same-work app with 2 workers, then through
    a second Sibyl API with SIBYL_WEB_WORKERS=2 on the same database: the end-to-end
    load of iris at the most clients, in the same order; beside them one_worker, that
    load's end-to-end row (1 worker each)."""
    import settings

    bounds = dict(
        concurrency=one_worker["concurrency"],
        max_requests=sizes["max_requests"],
        max_seconds=sizes["max_seconds"],
    )
    mongo_uri = (workdir / "db" / "uri").read_text().strip()
    baseline = start_baseline("same_work", model_dir, workdir, 2, settings.WEB_THREADS, mongo_uri)
    try:
        with second_api(sibyl, workdir, "two-workers", {"SIBYL_WEB_WORKERS": "2"}, key) as api:
            baseline.wait_until_healthy()
            row = {"workers": 2}
            sides = {
                "same_work": (baseline, "/predict", {}),
                "sibyl": (
                    api,
                    "/v1/jobs?wait=30",
                    {"is_success": succeeded, "headers": bearer(key)},
                ),
            }
            for name, (server, path, options) in sides.items():
                result, cpu = loaded(server, sibyl, path, iris_body, bounds, **options)
                row[name] = {**result.summary(), "cpu_ms_per_job": per_job(cpu, result.requests)}
    finally:
        baseline.stop()
    row.update(ratios(row["same_work"], row["sibyl"]))
    first = {
        "workers": 1,
        "same_work": one_worker["same_work"],
        "sibyl": one_worker["sibyl"],
        **one_worker["sibyl_against"]["same_work"],
    }
    print(
        f"  iris c={bounds['concurrency']}, 2 workers: Sibyl {row['throughput_ratio']}x "
        f"same work jobs/s (1 worker: {first['throughput_ratio']}x)",
        flush=True,
    )
    return {"concurrency": bounds["concurrency"], "rows": [first, row]}


def ratios(base: dict, measured: dict) -> dict:
    """Measured over base: jobs/s, p50 and p99."""
    return {
        "throughput_ratio": round(measured["throughput_per_s"] / base["throughput_per_s"], 3),
        "p50_ratio": round(measured["p50_ms"] / base["p50_ms"], 3),
        "p99_ratio": round(measured["p99_ms"] / base["p99_ms"], 3),
    }


def bulk_job(sibyl_url: str, instances: int, limit: dict, key: str) -> dict:
    """One job of many iris instances, POST to the last prediction stored."""
    features = load_iris()[0].tolist()
    inputs = [features[i % len(features)] for i in range(instances)]
    http = requests.Session()
    http.headers.update(bearer(key))
    began = time.perf_counter()
    created = http.post(
        sibyl_url + "/v1/jobs", json={"model": "iris", "inputs": inputs}, timeout=60
    )
    created.raise_for_status()
    job_id = created.json()["_id"]
    while True:
        job = http.get(f"{sibyl_url}/v1/jobs/{job_id}?wait=30", timeout=40).json()
        if job["status"] in ("succeeded", "failed"):
            break
    seconds = time.perf_counter() - began
    assert job["status"] == "succeeded", job
    limit_seconds = instances / limit["rows_per_s"] + instances / limit["docs_per_s"]
    return {
        "instances": instances,
        "seconds": round(seconds, 3),
        "limit_seconds": round(limit_seconds, 3),
        "fraction_of_limit": round(limit_seconds / seconds, 3),
    }


def seed_predictions(db, target: int) -> None:
    """Bring the predictions collection to target documents (engine-shaped)."""
    if db.predictions.estimated_document_count() > target:
        db.predictions.delete_many({})  # the end-to-end runs left theirs
    missing = target - db.predictions.estimated_document_count()
    labels = ["setosa", "versicolor", "virginica"]
    while missing > 0:
        chunk = min(missing, 5000)
        db.predictions.insert_many(limits.prediction_documents(chunk, 3, labels), ordered=False)
        missing -= chunk


def analyst_queries(sibyl_url: str, db, sizes: dict, key: str) -> list[dict]:
    """A filtered page of 25 through the API (an analyst's key: every owner's predictions),
    against the same page through PyMongo."""
    where = {"label": "virginica"}
    rows = []
    session = requests.Session()
    session.headers.update(bearer(key))
    for size in sizes["analyst_sizes"]:
        seed_predictions(db, size)
        api_ms, raw_ms = [], []
        deadline = time.perf_counter() + sizes["analyst_seconds"]
        while len(api_ms) < sizes["analyst_requests"] and (
            len(api_ms) < 3 or time.perf_counter() < deadline
        ):
            began = time.perf_counter()
            response = session.get(
                sibyl_url + "/v1/predictions",
                params={"where": json.dumps(where), "max_results": 25},
            )
            api_ms.append((time.perf_counter() - began) * 1000)
            assert response.status_code == 200 and len(response.json()["_items"]) == 25

            began = time.perf_counter()
            page = list(db.predictions.find(where).limit(25))
            json_util.dumps({"_items": page})
            raw_ms.append((time.perf_counter() - began) * 1000)
        rows.append(
            {
                "predictions": size,
                "api_p50_ms": round(statistics.median(api_ms), 2),
                "pymongo_p50_ms": round(statistics.median(raw_ms), 2),
                "ratio": round(statistics.median(api_ms) / statistics.median(raw_ms), 2),
                "requests": len(api_ms),
            }
        )
    return rows


def download_models(sibyl_url: str, folder: Path, key: str) -> dict[str, Path]:
    """Sibyl's model files and their labels, for the baselines and the in-process limit."""
    folder.mkdir(parents=True, exist_ok=True)
    http = requests.Session()
    http.headers.update(bearer(key))
    paths = {}
    for model in http.get(sibyl_url + "/v1/models", timeout=10).json()["_items"]:
        path = folder / f"{model['name']}.keras"
        path.write_bytes(http.get(sibyl_url + model["file"]["file"], timeout=60).content)
        if model.get("labels"):
            path.with_suffix(".labels.json").write_text(json.dumps(model["labels"]))
        paths[model["name"]] = path
    return paths


def paired_cells(base: dict, measured: dict, row: dict) -> str:
    """Throughput, p50 and p99 of a baseline and a measured server, with the ratios."""
    return (
        f"| {base['throughput_per_s']} | {measured['throughput_per_s']} "
        f"| **{row['throughput_ratio']}×** | {base['p50_ms']} | {measured['p50_ms']} "
        f"| **{row['p50_ratio']}×** | {base['p99_ms']} | {measured['p99_ms']}"
    )


def paired_header(first: str, base: str, measured: str) -> list[str]:
    """The head of a table of paired_row lines: base and measured are the servers' names."""
    return [
        f"| {first} | {base} jobs/s | {measured} jobs/s | ratio | {base} p50 ms "
        f"| {measured} p50 ms | p50 ratio | {base} p99 ms | {measured} p99 ms "
        f"| CPU ms per job (API · DB): {base} → {measured} |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]


def paired_section(title: str, intro: str, names: tuple, rows: list[tuple]) -> list[str]:
    """A titled table of paired_row lines: names (first column, base, measured) head
    it, rows are paired_row's arguments."""
    return ["", f"## {title}", "", intro, "", *paired_header(*names)] + [
        paired_row(*row) for row in rows
    ]


def paired_row(label, base: dict, measured: dict, row: dict) -> str:
    """A table row of paired_cells, then the CPU per job (API · DB) of both."""
    return (
        f"| {label} {paired_cells(base, measured, row)} "
        f"| {joined(base['cpu_ms_per_job'].values())} → "
        f"{joined(measured['cpu_ms_per_job'].values())} |"
    )


def joined(values) -> str:
    return " · ".join(str(value) for value in values)


def end_to_end_markdown(results: dict) -> list[str]:
    """The same-work comparison first, then Sibyl against all three baselines."""
    rows, concern = results["end_to_end"], results["same_work"]["write_concern"]
    lines = [
        "## End-to-end: Sibyl against the same work, hand-written",
        "",
        "Single-instance jobs, POST to stored prediction. Same work: Flask, a compiled "
        "model call, `insert_one(job)` and `insert_many(predictions)` (one per instance) "
        f"into Sibyl's embedded database with Sibyl's write concern ({json.dumps(concern)}: "
        "its 201 also means the job and its predictions are in the journal); it checks "
        "no key and no signature. Sibyl checks both, stores the job, its predictions and "
        "its completion, and batches concurrent jobs.",
        "",
        "| model | clients | same work jobs/s | Sibyl jobs/s | ratio | same work p50 ms "
        "| Sibyl p50 ms | p50 ratio | same work p99 ms | Sibyl p99 ms | p99 ratio "
        "| CPU ms per job (API · DB): same work → Sibyl |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        same, ours, against = row["same_work"], row["sibyl"], row["sibyl_against"]["same_work"]
        lines.append(
            f"| {row['model']} | {row['concurrency']} {paired_cells(same, ours, against)} "
            f"| **{against['p99_ratio']}×** "
            f"| {joined(same['cpu_ms_per_job'].values())} → {joined(ours['cpu_ms_per_job'].values())} |"
        )
    failures = [
        f"{row['model']} at {row['concurrency']} clients, {LABELS[name]}: {row[name]['errors']} "
        f"of {row[name]['errors'] + row[name]['requests']} "
        f"({', '.join(f'{n} {kind}' for kind, n in row[name].get('failures', {}).items())})"
        for row in rows
        for name in LABELS
        if row[name]["errors"]
    ]
    if failures:
        lines.append(
            "\nRequests that failed, left out of jobs/s and latencies (for Sibyl: an error, "
            f"or a job not finished within ?wait=30): {'; '.join(failures)}."
        )
    others = [name for name in LABELS if name != "sibyl"]
    names = joined(LABELS[name] for name in others)
    lines += [
        "",
        f"## End-to-end: Sibyl against all three baselines ({names})",
        "",
        "Tutorial: Flask, `model.predict` per request. Fast, no record: Flask, a compiled "
        "model call per request. Neither stores anything. All under the same gunicorn "
        "settings as Sibyl, loaded by the same closed-loop client, in this run.",
        "",
        f"| model | clients | jobs/s: {names} · **Sibyl** | Sibyl jobs/s ÷ {names} "
        f"| p50 ms: {names} · Sibyl | Sibyl p50 ÷ {names} | p99 ms: {names} · Sibyl "
        "| CPU ms per job: same work (API + DB) · fast, no record · tutorial · Sibyl "
        "(API + DB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    servers = [*others, "sibyl"]
    for row in rows:
        against = row["sibyl_against"]
        throughput_ratios = joined(f"{against[name]['throughput_ratio']}×" for name in others)
        p50_ratios = joined(f"{against[name]['p50_ratio']}×" for name in others)
        cpu = [
            " + ".join(str(ms) for ms in row[name]["cpu_ms_per_job"].values())
            if name in ("same_work", "sibyl")
            else row[name]["cpu_ms_per_job"]["api"]
            for name in servers
        ]
        lines.append(
            f"| {row['model']} | {row['concurrency']} "
            f"| {joined(row[name]['throughput_per_s'] for name in others)} · "
            f"**{row['sibyl']['throughput_per_s']}** | **{throughput_ratios}** "
            f"| {joined(row[name]['p50_ms'] for name in servers)} | {p50_ratios} "
            f"| {joined(row[name]['p99_ms'] for name in servers)} | {joined(cpu)} |"
        )
    return lines


def expensive_model_markdown(results: dict) -> list[str]:
    model, limit = results["cnn"], results["cnn"]["limit"]
    costs, batches = model["call_costs"], limit["batches_in_sibyl"]
    sizes = list(limit["rows_per_s"])
    lines = [
        "",
        f"## The expensive model ({CNN}): {model['description']}",
        "",
        "| measure | value |",
        "|---|---|",
        f"| compiled call at batch 1 · batch 32, when built | {costs['batch_1_ms']} ms · "
        f"{costs['batch_32_ms']} ms: 32 instances cost **{costs['batch_32_over_single']}×** "
        "one |",
        f"| compiled rows/s at batch {joined(sizes)} | {joined(limit['rows_per_s'].values())} |",
        f"| insert_many of its prediction documents, docs/s at batch {joined(sizes)} "
        f"| {joined(limit['docs_per_s'].values())} |",
        f"| in-process limit (compiled call + insert_many, no HTTP), single-instance jobs/s "
        f"at batch {joined(sizes)} | {joined(limit['jobs_per_s'].values())} |",
        f"| Sibyl's model calls on it at {limit['concurrency']} clients | mean "
        f"{batches['mean_size']} instances per call (largest {batches['max_size']}) |",
    ]
    fractions = limit["sibyl_fraction_of_limit"]
    at_clients = str(limit["concurrency"])
    at_mean = str(max(1, round(batches["mean_size"] or 1)))
    lines.append(
        f"| Sibyl at {limit['concurrency']} clients: {limit['sibyl_jobs_per_s']} jobs/s, as a "
        f"fraction of the limit at batch {at_clients} (the most its clients allow) · at "
        f"batch {at_mean} (its mean) | **{fractions[at_clients]:.0%}** · "
        f"{fractions[at_mean]:.0%} |"
    )
    return lines


def workers_markdown(results: dict) -> list[str]:
    """Sibyl and the same-work app with 1 and with 2 gunicorn workers each."""
    workers = results["workers"]
    lines = paired_section(
        f"Two gunicorn workers: iris jobs at {workers['concurrency']} clients, Sibyl "
        "against the same work with as many workers",
        "2 workers: a second Sibyl API with SIBYL_WEB_WORKERS=2 on the same database (each "
        "worker runs its own model runners), and the same-work app under gunicorn with 2 "
        "workers, loaded one after the other. 1 worker: the end-to-end row above, measured "
        "earlier in the run.",
        ("workers", "same work", "Sibyl"),
        [(row["workers"], row["same_work"], row["sibyl"], row) for row in workers["rows"]],
    )
    one, two = workers["rows"]
    gain = {
        name: two[name]["throughput_per_s"] / one[name]["throughput_per_s"]
        for name in ("same_work", "sibyl")
    }
    lines.append(
        f"\n2 workers against 1: Sibyl **{gain['sibyl']:.2f}×** its jobs/s, the same-work "
        f"app {gain['same_work']:.2f}×."
    )
    return lines


def runner_markdown(results: dict) -> list[str]:
    """Each model in this process against a model runner, and the issue's goals."""
    costs = results["runner"]
    calls = next(iter(costs.values()))["calls_at_1"]
    lines = [
        "",
        "## Model runner: the IPC hop per batch",
        "",
        "Each model file called in the bench's process (`CompiledModel`, as the API "
        "did before runners) and through a `ModelRunner` on the same file (a confined "
        "child process: the batch and the output each cross a socket, framed as raw "
        f"array bytes), on zeros: p50 of {calls} calls at batch 1, rows/s at the larger "
        "batches.",
        "",
        "| model | batch | in-process | runner | difference |",
        "|---|---|---|---|---|",
    ]
    for name, cost in costs.items():
        inside, outside = cost["in_process"], cost["runner"]
        lines.append(
            f"| {name} | 1 | {inside['p50_ms_at_1']} ms | {outside['p50_ms_at_1']} ms "
            f"| **{cost['extra_ms_at_1']:+.3f} ms** |"
        )
        for size, fewer in cost["fewer_rows_per_s"].items():
            lines.append(
                f"| {name} | {size} | {inside['rows_per_s'][size]} rows/s "
                f"| {outside['rows_per_s'][size]} rows/s "
                f"| **{abs(fewer):.1%} {'fewer' if fewer >= 0 else 'more'}** |"
            )

    def verdict(met: bool) -> str:
        return "met" if met else "**not met**"

    extra = {name: cost["extra_ms_at_1"] for name, cost in costs.items()}
    fewer = {name: cost["fewer_rows_per_s"]["32"] for name, cost in costs.items()}
    goals = (
        "\nGoals (issue 18): at most 0.3 ms more per call at p50: "
        f"{joined(f'{name} {ms:+.3f} ms' for name, ms in extra.items())}, "
        f"{verdict(max(extra.values()) <= 0.3)}; at most 5% fewer rows/s at batch 32: "
        f"{joined(f'{name} {share:.1%}' for name, share in fewer.items())}, "
        f"{verdict(max(fewer.values()) <= 0.05)}."
    )
    restarted = [name for name, cost in costs.items() if cost["runner_restarted"]]
    if restarted:
        goals += f" Restarted while measured (a model load timed too): {', '.join(restarted)}."
    lines.append(goals)
    return lines


def markdown(results: dict) -> str:
    lines = end_to_end_markdown(results) + workers_markdown(results) + front_markdown(results)
    fair = results["fairness"]
    lines += [
        "",
        f"## Fair service: single-instance iris jobs from {fair['idle']['concurrency']} "
        "clients, idle and while another client's 10,000-instance jobs run",
        "",
        "| service | jobs/s | p50 ms | p99 ms |",
        "|---|---|---|---|",
        *(
            f"| {name} | {fair[name]['throughput_per_s']} | {fair[name]['p50_ms']} "
            f"| {fair[name]['p99_ms']} |"
            for name in ("idle", "loaded")
        ),
        f"\np99 while large jobs run: **{fair['p99_ratio']}×** the idle p99 (the aim: at most "
        f"3×); {len(fair['large_jobs'])} large jobs ran meanwhile "
        f"({', '.join(sorted(set(map(str, fair['large_jobs']))))}).",
    ]
    lines += expensive_model_markdown(results)
    cost = results["write_concern"]
    lines += [
        "",
        f"## Durable writes: iris jobs with SIBYL_WRITE_CONCERN={cost['durable']} against w1 (w:1, no journal), same database",
        "",
        *paired_header("clients", "w1", cost["durable"]),
    ]
    for row in cost["rows"]:
        lines.append(paired_row(row["concurrency"], row["w1"], row["durable"], row))
    access = results["access_control"]
    lines += [
        "",
        f"## Access control: iris jobs at {access['concurrency']} clients with a client key "
        "(checked on every request, rate limits counted) against SIBYL_AUTH=off, same "
        "database, alternating turns",
        "",
        "| turn | off jobs/s | on jobs/s | ratio | off p50 ms | on p50 ms | p50 ratio | off p99 ms | on p99 ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in access["turns"]:
        lines.append(f"| {row['turn']} {paired_cells(row['off'], row['on'], row)} |")
    off, on = access["off"], access["on"]
    lines.append(f"| **all** {paired_cells(off, on, access)} |")
    lines.append(
        f"\nCPU ms per job (API · DB): off {off['cpu_ms_per_job']['api']} · "
        f"{off['cpu_ms_per_job']['database']} → on {on['cpu_ms_per_job']['api']} · "
        f"{on['cpu_ms_per_job']['database']}; jobs/s with access control "
        f"**{access['throughput_ratio']}×** those without (the aim: at least 0.95×)."
    )
    bulk = results["bulk"]
    limit = results["limit"]
    lines += ["", "## Bulk job and the in-process limit", ""]
    lines += ["| measure | value |", "|---|---|"]
    lines.append(
        f"| bulk job of {bulk['instances']} iris instances, POST to last prediction | {bulk['seconds']} s |"
    )
    lines.append(f"| in-process limit for it (model + insert_many) | {bulk['limit_seconds']} s |")
    lines.append(f"| bulk job as a fraction of the limit | **{bulk['fraction_of_limit']:.0%}** |")
    for name, rates in limit["models"].items():
        per_size = ", ".join(f"{k}: {v}" for k, v in rates["rows_per_s"].items())
        lines.append(f"| {name} compiled rows/s by batch size | {per_size} |")
        ratio = rates["engine_call_ms"] / rates["bare_call_ms"]
        lines.append(
            f"| {name} engine call at batch 1 vs bare compiled call | {rates['engine_call_ms']} ms vs "
            f"{rates['bare_call_ms']} ms: **{ratio:.2f}×** |"
        )
    lines.append(f"| insert_many of prediction documents | {limit['docs_per_s']} docs/s |")
    lines += runner_markdown(results)
    lines += ["", "## Analyst page: GET /v1/predictions?where={label}&max_results=25", ""]
    lines += [
        "| stored predictions | API p50 ms | PyMongo find + JSON p50 ms | ratio |",
        "|---|---|---|---|",
    ]
    for row in results["analyst"]:
        lines.append(
            f"| {row['predictions']} | {row['api_p50_ms']} | {row['pymongo_p50_ms']} | **{row['ratio']}×** |"
        )
    first, last = results["analyst"][0], results["analyst"][-1]
    lines.append(
        f"\n{last['predictions']} vs {first['predictions']} stored: API p50 "
        f"**{last['api_p50_ms'] / first['api_p50_ms']:.2f}×**; PyMongo alone on the same "
        f"database {last['pymongo_p50_ms'] / first['pymongo_p50_ms']:.2f}×"
    )
    machine = results["machine"]
    lines.append(
        f"\nMachine: {machine['cpus']} CPUs, {machine['platform']}, Python {machine['python']}."
    )
    return "\n".join(lines)


def warm(sibyl: Server, key: str, cnn_side: int) -> None:
    """The first job of each model loads it."""
    images = cnn.sample_images(1, cnn_side)
    for model, instances in [*sample_inputs().items(), (CNN, images)]:
        answer = requests.post(
            sibyl.url + "/v1/jobs?wait=30",
            json={"model": model, "inputs": instances[:1]},
            headers=bearer(key),
            timeout=40,
        )
        assert succeeded(answer.status_code, answer.content), answer.text[:1000]


def same_work_stored(db) -> dict:
    """What the same-work app stored: a job and a prediction per request, warm-ups too."""
    return {
        "jobs": db.baseline_jobs.count_documents({}),
        "predictions": db.baseline_predictions.count_documents({}),
    }


def wait_until_idle(server: Server, most_seconds: float) -> float:
    """Wait until the server's processes (and its database) use under a tenth of a core
    over a second, at most most_seconds; return the seconds waited."""
    began = time.perf_counter()
    while time.perf_counter() - began < most_seconds:
        before = sum(server.cpu_by_role().values())
        time.sleep(1)
        if sum(server.cpu_by_role().values()) - before < 0.1:
            break
    return round(time.perf_counter() - began, 1)


def database_state(sibyl: Server, workdir: Path) -> dict:
    """Sibyl's jobs by status, and the CPU its database uses over a second with no load."""
    before = sibyl.cpu_by_role()["db"]
    time.sleep(1)
    idle_cpu = sibyl.cpu_by_role()["db"] - before
    uri = (workdir / "db" / "uri").read_text().strip()
    import settings

    with pymongo.MongoClient(uri, serverSelectionTimeoutMS=5000) as client:
        jobs = client[settings.MONGO_DBNAME].jobs
        by_status = {d["_id"]: d["n"] for d in jobs.aggregate(STATUS_COUNTS)}
    return {"jobs": by_status, "db_cpu_s_per_s": round(idle_cpu, 2)}


STATUS_COUNTS = [{"$group": {"_id": "$status", "n": {"$sum": 1}}}]


def forget_load(db) -> None:
    """Drop what the end-to-end load stored beyond the tiny models' jobs (the same-work
    app's collections, the CNN's jobs with their images), so later sections find the
    database as they always did."""
    db.drop_collection("baseline_jobs")
    db.drop_collection("baseline_predictions")
    db.jobs.delete_many({"model": CNN})
    db.predictions.delete_many({"model": CNN})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check the harness")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for the JSON results")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    workdir = Path(tempfile.mkdtemp(prefix="sibyl-bench-"))
    started = time.perf_counter()
    results: dict = {"section_seconds": {}}

    @contextmanager
    def section(name: str, announce: str):
        print(announce + "...", flush=True)
        began = time.perf_counter()
        yield
        results["section_seconds"][name] = round(time.perf_counter() - began, 1)
        if servers:
            # What the database holds and does once the section is over: a busy database
            # or unfinished jobs would weigh on the sections after it.
            state = database_state(servers[0], workdir)
            results.setdefault("after_section", {})[name] = state
            print(f"  after it: {state}", flush=True)

    servers = []
    try:
        import settings

        with section("start_sibyl", "starting Sibyl (embedded database, gunicorn, demo models)"):
            sibyl = start_sibyl(workdir)
            servers.append(sibyl)
            sibyl.wait_until_healthy()
            keys = {role: make_key(sibyl, role) for role in ("client", "analyst")}
            check_access_control(sibyl, keys["client"])
            mongo_uri = (workdir / "db" / "uri").read_text().strip()
            # With Sibyl's write concern: the limits' insert_many write as the engine's do.
            client = pymongo.MongoClient(mongo_uri, tz_aware=True, **settings.MONGO_WRITE_CONCERN)
            db = client[settings.MONGO_DBNAME]

        shape = cnn.QUICK if sizes["cnn"] == "quick" else cnn.FULL
        with section("cnn", "building the expensive model and registering it in Sibyl"):
            cnn_path = cnn.build(workdir / f"{CNN}.keras", **shape)
            costs = cnn.call_costs(cnn_path)
            description = cnn.describe(cnn_path, shape)
            print(f"  {description}; {cnn.describe_costs(costs)}", flush=True)
            register_model(sibyl, CNN, cnn_path, cnn.CLASSES)
            warm(sibyl, keys["client"], shape["side"])
        results["cnn"] = {"description": description, "shape": shape, "call_costs": costs}

        with section("start_baselines", "starting the baselines"):
            model_dir = workdir / "baseline_models"
            model_paths = download_models(sibyl.url, model_dir, keys["analyst"])
            baselines = {
                name: start_baseline(
                    name, model_dir, workdir, settings.WEB_WORKERS, settings.WEB_THREADS, mongo_uri
                )
                for name in BASELINES
            }
            servers += baselines.values()
            for baseline in baselines.values():
                baseline.wait_until_healthy()
            health = requests.get(baselines["same_work"].url + "/healthz", timeout=10).json()
            results["same_work"] = {"write_concern": health["write_concern"]}

        with section("end_to_end", "end-to-end load, tiny models"):
            rows = end_to_end(sibyl, baselines, tiny_model_loads(sizes), keys["client"])
            results["end_to_end"] = rows

        with section("workers", "two gunicorn workers, Sibyl and the same-work app"):
            most = max(sizes["concurrency"])
            (one_worker,) = [r for r in rows if (r["model"], r["concurrency"]) == ("iris", most)]
            results["workers"] = two_workers(
                sibyl, workdir, model_dir, sizes, keys["client"], one_worker
            )

        with section("front", "the front against gunicorn's threaded worker"):
            results["front"] = front_cost(sibyl, workdir, sizes, keys["client"])

        with section("fairness", "small jobs while a 10,000-instance job runs"):
            keys["other"] = make_key(sibyl, "client", "bench large jobs")
            results["fairness"] = fairness(sibyl, sizes, keys)

        with section("write_concern", "durable writes against w:1 without journal"):
            results["write_concern"] = write_concern_cost(sibyl, workdir, sizes, keys["client"])

        with section("access_control", "access control against SIBYL_AUTH=off"):
            results["access_control"] = access_control_cost(sibyl, workdir, sizes, keys["client"])

        with section("limit", "in-process limit"):
            models = {
                name: limits.model_rates(
                    str(model_paths[name]), [1, 32, settings.MAX_BATCH_SIZE], sizes["limit_seconds"]
                )
                for name in sample_inputs()
            }
            docs_per_s = limits.insert_rate(db, settings.MAX_BATCH_SIZE, 4 if args.quick else 40)
            iris_rows_per_s = models["iris"]["rows_per_s"][str(settings.MAX_BATCH_SIZE)]
            results["limit"] = {"models": models, "docs_per_s": round(docs_per_s)}

        # What running a model in a runner costs, against the compiled call above.
        runner_cost = functools.partial(
            limits.runner_cost,
            batch_sizes=[32, settings.MAX_BATCH_SIZE],
            calls=sizes["runner_calls"],
            min_seconds=sizes["limit_seconds"],
        )
        with section("runner", "the model runner against the in-process call"):
            results["runner"] = {
                name: runner_cost(str(model_paths[name])) for name in sample_inputs()
            }

        with section("bulk", "bulk job"):
            limit_for_bulk = {"rows_per_s": iris_rows_per_s, "docs_per_s": docs_per_s}
            results["bulk"] = bulk_job(
                sibyl.url, sizes["bulk_instances"], limit_for_bulk, keys["client"]
            )

        # The expensive model last but for the analyst pages (which reseed the
        # predictions): its large jobs would slow the database for what follows.
        # The same-work app goes first, as Sibyl's unfinished jobs would load the
        # database after its own load ends.
        with section("cnn_end_to_end", "end-to-end load, the expensive model"):
            load = expensive_model_load(sizes, shape["side"])
            (cnn_row,) = end_to_end(sibyl, baselines, [load], keys["client"])
            rows.append(cnn_row)
            for baseline in baselines.values():
                baseline.stop()
            batches = observed_batches(db, CNN)
            results["same_work"]["stored"] = same_work_stored(db)
            cnn_jobs = db.jobs.aggregate([{"$match": {"model": CNN}}, *STATUS_COUNTS])
            results["cnn"]["sibyl_jobs"] = {d["_id"]: d["n"] for d in cnn_jobs}
            print(f"  Sibyl's cnn jobs by status: {results['cnn']['sibyl_jobs']}", flush=True)
            forget_load(db)
            results["cnn"]["idle_after_s"] = wait_until_idle(sibyl, 60)

        with section("cnn_limit", "the expensive model's in-process limit and runner"):
            limit = expensive_model_limit(cnn_path, db, sizes, batches, cnn_row)
            results["cnn"]["limit"] = limit
            results["runner"][CNN] = runner_cost(str(cnn_path))

        with section("analyst", "analyst queries"):
            results["analyst"] = analyst_queries(sibyl.url, db, sizes, keys["analyst"])
        client.close()
    finally:
        for server in servers:
            server.stop()
        # Sibyl's log of the run, kept beside the results (its warnings tell of lost leases,
        # database errors, expired holds).
        args.results.mkdir(parents=True, exist_ok=True)
        if (workdir / "sibyl.log").exists():
            shutil.copy(workdir / "sibyl.log", args.results / "latest-sibyl.log")
        shutil.rmtree(workdir, ignore_errors=True)

    results["machine"] = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
    results["settings"] = {"quick": args.quick, **sizes}
    results["seconds"] = round(time.perf_counter() - started, 1)
    args.results.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.results / f"{stamp}{'-quick' if args.quick else ''}.json"
    out.write_text(json.dumps(results, indent=2))
    print(markdown(results))
    print(f"\nresults: {out} ({results['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
