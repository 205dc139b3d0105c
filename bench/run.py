"""`make bench`: Sibyl against the naive Flask app and the in-process limit, in one run.

Sibyl runs as configured by default, access control on: the load sends a client key
(rate limits are counted, set far above the load); the cost of that is measured against
the same load on SIBYL_AUTH=off.

    python -m bench.run [--quick]

Every figure is reported next to its baseline from the same run, as a ratio.
Results go to bench/results/<timestamp>.json and a markdown table on stdout.
--quick runs every part at a tiny size (make test does, to keep this working).
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pymongo
import requests
from bson import json_util

from bench import limits
from bench.loadgen import LoadResult, run_load
from bench.servers import ROOT, start_naive, start_sibyl
from service.demo.models import load_digits, load_iris

RESULTS = ROOT / "bench" / "results"

FULL = {
    "concurrency": [1, 8, 32],
    "max_requests": 3000,
    "max_seconds": 12.0,
    "bulk_instances": 10_000,
    "analyst_sizes": [1_000, 100_000],
    "analyst_requests": 200,
    "analyst_seconds": 60.0,
    "limit_seconds": 2.0,
    "access_concurrency": 32,
    "access_turns": 4,
}
QUICK = {
    "concurrency": [1, 4],
    "max_requests": 20,
    "max_seconds": 5.0,
    "bulk_instances": 300,
    "analyst_sizes": [100, 1_000],
    "analyst_requests": 10,
    "analyst_seconds": 5.0,
    "limit_seconds": 0.2,
    "access_concurrency": 4,
    "access_turns": 2,
}


def sample_inputs() -> dict[str, list]:
    features, _ = load_iris()
    images, _ = load_digits()
    return {"iris": features.tolist(), "digits": images[:200].tolist()}


def succeeded(status: int, body: bytes) -> bool:
    return status == 201 and b'"status": "succeeded"' in body


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def make_key(sibyl, role: str) -> str:
    """A new API key of the role, made with Sibyl's admin key."""
    created = requests.post(
        sibyl.url + "/v1/keys",
        json={"role": role, "name": f"bench {role}"},
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


def measured(server, path: str, body, bounds: dict, **options) -> tuple:
    """Load a server and return the result with the CPU ms per request of its processes."""
    before = server.cpu_by_role()
    result = run_load(server.url + path, body, **bounds, **options)
    after = server.cpu_by_role()
    per_request = {
        role: round((after[role] - before[role]) * 1000 / max(result.requests, 1), 2)
        for role in after
    }
    return result, per_request


def end_to_end(sibyl, naive, sizes: dict, key: str) -> list[dict]:
    """Single-instance jobs at each concurrency, Sibyl (?wait, with the key) and naive
    (predict)."""
    inputs = sample_inputs()
    rows = []
    for model, instances in inputs.items():
        for concurrency in sizes["concurrency"]:

            def body(i, model=model, instances=instances):
                return {"model": model, "inputs": [instances[i % len(instances)]]}

            bounds = dict(
                concurrency=concurrency,
                max_requests=sizes["max_requests"],
                max_seconds=sizes["max_seconds"],
            )
            baseline, baseline_cpu = measured(naive, "/predict", body, bounds)
            ours, our_cpu = measured(
                sibyl, "/v1/jobs?wait=30", body, bounds, is_success=succeeded, headers=bearer(key)
            )
            rows.append(
                {
                    "model": model,
                    "concurrency": concurrency,
                    "naive": {**baseline.summary(), "cpu_ms_per_request": baseline_cpu["app"]},
                    "sibyl": {
                        **ours.summary(),
                        "cpu_ms_per_job": {"api": our_cpu["app"], "database": our_cpu["db"]},
                    },
                    "throughput_ratio": round(ours.throughput / baseline.throughput, 2),
                    "p50_ratio": round(ours.percentile(0.5) / baseline.percentile(0.5), 3),
                }
            )
            print(f"  {model} c={concurrency}: {rows[-1]['throughput_ratio']}x jobs/s", flush=True)
    return rows


def write_concern_cost(sibyl, workdir: Path, sizes: dict, key: str) -> dict:
    """Single-instance iris jobs with Sibyl's write concern (journaled by default) against
    w:1 without journal: a second API (SIBYL_WRITE_CONCERN=w1) on the same database,
    loaded one after the other at each concurrency."""
    import settings

    folder = workdir / "w1"
    folder.mkdir()
    mongo_uri = (workdir / "db" / "uri").read_text().strip()
    unjournaled = start_sibyl(
        folder, {"SIBYL_WRITE_CONCERN": "w1"}, mongo_uri=mongo_uri, admin_key=sibyl.admin_key
    )
    features = sample_inputs()["iris"]

    def body(i):
        return {"model": "iris", "inputs": [features[i % len(features)]]}

    rows = []
    try:
        unjournaled.wait_until_healthy()
        requests.post(  # warm
            unjournaled.url + "/v1/jobs?wait=30", json=body(0), headers=bearer(key), timeout=40
        )
        for turn, concurrency in enumerate(sizes["concurrency"]):
            bounds = dict(
                concurrency=concurrency,
                max_requests=sizes["max_requests"],
                max_seconds=sizes["max_seconds"],
            )
            row = {"concurrency": concurrency}
            pair = [("w1", unjournaled), ("durable", sibyl)]
            # Each goes first in turn: the database grows slower as jobs accumulate.
            for name, server in pair[::-1] if turn % 2 else pair:
                # The database is the first server's child: its CPU is counted there.
                db_before, api_before = sibyl.cpu_by_role()["db"], server.cpu_by_role()["app"]
                result = run_load(
                    server.url + "/v1/jobs?wait=30",
                    body,
                    **bounds,
                    is_success=succeeded,
                    headers=bearer(key),
                )
                jobs = max(result.requests, 1)
                api_ms = (server.cpu_by_role()["app"] - api_before) * 1000 / jobs
                db_ms = (sibyl.cpu_by_role()["db"] - db_before) * 1000 / jobs
                row[name] = {
                    **result.summary(),
                    "cpu_ms_per_job": {"api": round(api_ms, 2), "database": round(db_ms, 2)},
                }
            row["throughput_ratio"] = round(
                row["durable"]["throughput_per_s"] / row["w1"]["throughput_per_s"], 3
            )
            row["p50_ratio"] = round(row["durable"]["p50_ms"] / row["w1"]["p50_ms"], 3)
            rows.append(row)
            print(
                f"  iris c={concurrency}: durable {row['throughput_ratio']}x w1 jobs/s", flush=True
            )
    finally:
        unjournaled.stop()
    return {"durable": settings.WRITE_CONCERN, "rows": rows}


def access_control_cost(sibyl, workdir: Path, sizes: dict, key: str) -> dict:
    """Single-instance iris jobs through Sibyl as configured (the client key checked on
    every request, rate limits counted) against a second API on the same database with
    SIBYL_AUTH=off (no keys, no rate limits): alternating turns at one concurrency, each
    side going first in every other turn, totalled over the turns."""
    folder = workdir / "auth-off"
    folder.mkdir()
    mongo_uri = (workdir / "db" / "uri").read_text().strip()
    open_api = start_sibyl(
        folder, {"SIBYL_AUTH": "off"}, mongo_uri=mongo_uri, admin_key=sibyl.admin_key
    )
    features = sample_inputs()["iris"]

    def body(i):
        return {"model": "iris", "inputs": [features[i % len(features)]]}

    bounds = dict(
        concurrency=sizes["access_concurrency"],
        max_requests=sizes["max_requests"],
        max_seconds=sizes["max_seconds"],
    )
    # Both get the header, so the clients do the same work; the open API ignores it.
    headers = bearer(key)
    loads: dict[str, list] = {"off": [], "on": []}
    cpu = {"off": {"api": 0.0, "database": 0.0}, "on": {"api": 0.0, "database": 0.0}}
    turns = []
    try:
        open_api.wait_until_healthy()
        requests.post(open_api.url + "/v1/jobs?wait=30", json=body(0), timeout=40)  # warm
        for turn in range(sizes["access_turns"]):
            pair = [("off", open_api), ("on", sibyl)]
            row = {"turn": turn + 1}
            for name, server in pair[::-1] if turn % 2 else pair:
                # The database is the first server's child: its CPU is counted there.
                db_before, api_before = sibyl.cpu_by_role()["db"], server.cpu_by_role()["app"]
                result = run_load(
                    server.url + "/v1/jobs?wait=30",
                    body,
                    **bounds,
                    is_success=succeeded,
                    headers=headers,
                )
                cpu[name]["api"] += server.cpu_by_role()["app"] - api_before
                cpu[name]["database"] += sibyl.cpu_by_role()["db"] - db_before
                loads[name].append(result)
                row[name] = result.summary()
            row.update(ratios(row["off"], row["on"]))
            turns.append(row)
            print(
                f"  turn {turn + 1}, iris c={bounds['concurrency']}: "
                f"access control {row['throughput_ratio']}x jobs/s",
                flush=True,
            )
    finally:
        open_api.stop()
    total = {}
    for name, results in loads.items():
        merged = LoadResult(bounds["concurrency"])
        for result in results:
            merged.requests += result.requests
            merged.errors += result.errors
            merged.seconds += result.seconds
            merged.latencies_ms += result.latencies_ms
        jobs = max(merged.requests, 1)
        total[name] = {
            **merged.summary(),
            "cpu_ms_per_job": {
                role: round(seconds * 1000 / jobs, 2) for role, seconds in cpu[name].items()
            },
        }
    return {
        "concurrency": bounds["concurrency"],
        "turns": turns,
        **total,
        **ratios(total["off"], total["on"]),
    }


def ratios(base: dict, measured: dict) -> dict:
    return {
        "throughput_ratio": round(measured["throughput_per_s"] / base["throughput_per_s"], 3),
        "p50_ratio": round(measured["p50_ms"] / base["p50_ms"], 3),
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
    """Sibyl's demo model files, for the naive app and the in-process limit."""
    folder.mkdir(parents=True, exist_ok=True)
    http = requests.Session()
    http.headers.update(bearer(key))
    paths = {}
    for model in http.get(sibyl_url + "/v1/models", timeout=10).json()["_items"]:
        path = folder / f"{model['name']}.keras"
        path.write_bytes(http.get(sibyl_url + model["file"]["file"], timeout=30).content)
        paths[model["name"]] = path
    return paths


def paired_cells(base: dict, measured: dict, row: dict) -> str:
    """Throughput, p50 and p99 of a baseline and a measured server, with the ratios."""
    return (
        f"| {base['throughput_per_s']} | {measured['throughput_per_s']} "
        f"| **{row['throughput_ratio']}×** | {base['p50_ms']} | {measured['p50_ms']} "
        f"| **{row['p50_ratio']}×** | {base['p99_ms']} | {measured['p99_ms']}"
    )


def markdown(results: dict) -> str:
    lines = [
        "## End-to-end single-instance jobs (Sibyl stores every job and prediction; naive stores nothing)",
        "",
    ]
    lines += [
        "| model | clients | naive jobs/s | Sibyl jobs/s | ratio | naive p50 ms | Sibyl p50 ms | p50 ratio | naive p99 ms | Sibyl p99 ms | CPU ms per job: naive · Sibyl API · Sibyl DB |"
    ]
    lines += ["|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in results["end_to_end"]:
        n, s = row["naive"], row["sibyl"]
        lines.append(
            f"| {row['model']} | {row['concurrency']} {paired_cells(n, s, row)} "
            f"| {n['cpu_ms_per_request']} · {s['cpu_ms_per_job']['api']} · {s['cpu_ms_per_job']['database']} |"
        )
    cost = results["write_concern"]
    lines += [
        "",
        f"## Durable writes: iris jobs with SIBYL_WRITE_CONCERN={cost['durable']} against w1 (w:1, no journal), same database",
        "",
        f"| clients | w1 jobs/s | {cost['durable']} jobs/s | ratio | w1 p50 ms | {cost['durable']} p50 ms | p50 ratio | w1 p99 ms | {cost['durable']} p99 ms | CPU ms per job (API · DB): w1 → {cost['durable']} |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in cost["rows"]:
        w1, durable = row["w1"], row["durable"]
        lines.append(
            f"| {row['concurrency']} {paired_cells(w1, durable, row)} "
            f"| {w1['cpu_ms_per_job']['api']} · {w1['cpu_ms_per_job']['database']} "
            f"→ {durable['cpu_ms_per_job']['api']} · {durable['cpu_ms_per_job']['database']} |"
        )
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check the harness")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for the JSON results")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    workdir = Path(tempfile.mkdtemp(prefix="sibyl-bench-"))
    started = time.perf_counter()
    servers = []
    try:
        print("starting Sibyl (embedded database, gunicorn, demo models)...", flush=True)
        sibyl = start_sibyl(workdir)
        servers.append(sibyl)
        sibyl.wait_until_healthy()
        keys = {role: make_key(sibyl, role) for role in ("client", "analyst")}
        check_access_control(sibyl, keys["client"])
        # Warm: the first job of each model loads it.
        for model, instances in sample_inputs().items():
            requests.post(
                sibyl.url + "/v1/jobs?wait=30",
                json={"model": model, "inputs": instances[:1]},
                headers=bearer(keys["client"]),
                timeout=40,
            )
        import settings

        model_paths = download_models(sibyl.url, workdir / "naive_models", keys["analyst"])
        print("starting the naive Flask app...", flush=True)
        naive = start_naive(
            workdir / "naive_models", workdir, settings.WEB_WORKERS, settings.WEB_THREADS
        )
        servers.append(naive)
        naive.wait_until_healthy()

        print("end-to-end load...", flush=True)
        results: dict = {"end_to_end": end_to_end(sibyl, naive, sizes, keys["client"])}
        naive.stop()

        print("durable writes against w:1 without journal...", flush=True)
        results["write_concern"] = write_concern_cost(sibyl, workdir, sizes, keys["client"])

        print("access control against SIBYL_AUTH=off...", flush=True)
        results["access_control"] = access_control_cost(sibyl, workdir, sizes, keys["client"])

        print("in-process limit...", flush=True)
        # With Sibyl's write concern: the limit's insert_many writes as the engine's do.
        client = pymongo.MongoClient(
            (workdir / "db" / "uri").read_text(), tz_aware=True, **settings.MONGO_WRITE_CONCERN
        )
        db = client[settings.MONGO_DBNAME]
        models = {
            name: limits.model_rates(
                str(path), [1, 32, settings.MAX_BATCH_SIZE], sizes["limit_seconds"]
            )
            for name, path in sorted(model_paths.items())
        }
        docs_per_s = limits.insert_rate(db, settings.MAX_BATCH_SIZE, 40 if not args.quick else 4)
        iris_rows_per_s = models["iris"]["rows_per_s"][str(settings.MAX_BATCH_SIZE)]
        results["limit"] = {"models": models, "docs_per_s": round(docs_per_s)}

        print("bulk job...", flush=True)
        limit_for_bulk = {"rows_per_s": iris_rows_per_s, "docs_per_s": docs_per_s}
        results["bulk"] = bulk_job(
            sibyl.url, sizes["bulk_instances"], limit_for_bulk, keys["client"]
        )

        print("analyst queries...", flush=True)
        results["analyst"] = analyst_queries(sibyl.url, db, sizes, keys["analyst"])
        client.close()
    finally:
        for server in servers:
            server.stop()
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
