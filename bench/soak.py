"""`make soak`: Sibyl for ten minutes at 80% of its measured peak, watched for drift.

Sibyl starts as `make run` starts it (bench/reliability/harness.py's Cluster, with make
run's leases and rate limits). A closed loop of jobs, as make bench loads it, measures
the peak jobs/s; then an open-loop load sends jobs at 80% of it for
SIBYL_SOAK_SECONDS (600): 1, 10 or 100 instances of iris or digits, with ?wait=, while
an analyst reads pages of jobs and predictions. Every few seconds the resident memory of
every process of `run.py serve` (gunicorn's master, its workers, their model runners,
the database) is read from /proc. At the end, every job is accounted for.

It passes with no 5xx, every request answered as expected, the last minute's p99 within
1.5x the first's, no process's memory grown by 10% after the first minute, the planned
load sent, and every acknowledged job finished once. A table, the JSON in
bench/results/soak-<timestamp>.json, and exit status 1 if any criterion failed.

    python -m bench.soak [--seconds 600] [--warmup 60] [--window 60] [--fraction 0.8]
"""

import argparse
import itertools
import json
import math
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import requests

from bench.reliability.harness import (
    DRAIN_SECONDS,
    Cluster,
    Load,
    account,
    command_line,
    passed,
    wait_until,
)
from bench.run import make_key
from bench.servers import ROOT, process_tree

MODELS = ("iris", "digits")
SIZES = (1, 10, 100)
PEAK_CLIENTS = 32  # as make bench's largest closed loop
# make run's settings, over the Cluster's (short leases for the fault scenarios, no
# rate limits): the soak's client and analyst keys are counted at make run's rates,
# which lie far above what it sends.
MAKE_RUN = {"SIBYL_LEASE_SECONDS": "30", "SIBYL_POLL_MS": "1000", "SIBYL_RATE_LIMITS": ""}
MAX_P99_RATIO = 1.5
MAX_RSS_GROWTH = 0.10
MIN_SENT_FRACTION = 0.95  # of the planned jobs: less, and the load generator fell behind
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def resident_mb(pid: int) -> float | None:
    """A process's resident memory, from /proc (None once it has gone)."""
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_BYTES / 2**20
    except (OSError, IndexError, ValueError):
        return None


def process_name(pid: int, root: int) -> str:
    """What a process of run.py serve's tree is, and its id."""
    line = command_line(pid)
    if pid == root:
        what = "gunicorn master"
    elif "secantus" in line:
        what = "database"
    elif "runner_child" in line:
        what = "model runner"
    elif "run.py serve" in line:
        what = "API worker"
    else:
        what = line[:40] or "?"
    return f"{what} (pid {pid})"


class Beside:
    """What runs beside the load, in a thread of its own from start() to stop()."""

    def __init__(self):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self._began = time.monotonic()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(90)

    def _run(self) -> None:
        raise NotImplementedError


class MemoryWatch(Beside):
    """The resident memory of every process of a tree, every interval_s seconds:
    {process name: [(seconds since start, MB)]}; and the machine's load average (other
    work on it slows the service as much as anything the soak does)."""

    def __init__(self, root: int, interval_s: float):
        super().__init__()
        self.root, self.interval_s = root, interval_s
        self.samples: dict[str, list[tuple[float, float]]] = {}
        self._names: dict[int, str] = {}
        self.machine_load: list[tuple[float, float]] = []  # (seconds since start, 1 min)

    def stop(self) -> None:
        super().stop()
        self.sample()  # the state at the very end

    def sample(self) -> None:
        at = time.monotonic() - self._began
        self.machine_load.append((round(at, 1), os.getloadavg()[0]))
        for pid in process_tree(self.root):
            megabytes = resident_mb(pid)
            if megabytes is None:
                continue
            # Named once: a pid reused by another process is not followed across.
            name = self._names.setdefault(pid, process_name(pid, self.root))
            self.samples.setdefault(name, []).append((round(at, 1), round(megabytes, 1)))

    def _run(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self.interval_s):
                return


class Analyst(Beside):
    """An analyst reading pages throughout, three every pause_s: the newest jobs, page 1
    to 5 and again, the predictions of each page's first job in order, and the newest
    predictions, page by page."""

    def __init__(self, url: str, key: str, pause_s: float = 1.0):
        super().__init__()
        self.url, self.pause_s = url, pause_s
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Bearer {key}"
        self.statuses: Counter = Counter()
        self.dropped = 0
        self.latencies: list[tuple[float, float]] = []  # (seconds since start, ms)

    def _run(self) -> None:
        for page in itertools.cycle(range(1, 6)):
            if self._stop.wait(self.pause_s):
                return
            jobs = self._get("/v1/jobs", sort="-_created", max_results=25, page=page)
            if jobs and jobs["_items"]:
                where = json.dumps({"job": jobs["_items"][0]["_id"]})
                self._get("/v1/predictions", where=where, sort="index")
            self._get("/v1/predictions", sort="-_created", max_results=25, page=page)

    def _get(self, path: str, **params) -> dict | None:
        began = time.monotonic()
        try:
            answer = self.http.get(self.url + path, params=params, timeout=60)
        except requests.RequestException:
            self.dropped += 1
            return None
        self.latencies.append((began - self._began, (time.monotonic() - began) * 1000))
        self.statuses[answer.status_code] += 1
        return answer.json() if answer.status_code == 200 else None


def windows(latencies: list[tuple[float, float]], window_s: float, seconds: float) -> list[dict]:
    """The requests of each window_s of the run (by when they were due or sent), with
    their p50 and p99 in ms."""
    count = max(1, math.ceil(seconds / window_s))
    grouped: list[list[float]] = [[] for _ in range(count)]
    for at, ms in latencies:
        grouped[min(count - 1, int(at // window_s))].append(ms)
    return [
        {
            "requests": len(group),
            "p50_ms": round(float(np.percentile(group, 50)), 1) if group else None,
            "p99_ms": round(float(np.percentile(group, 99)), 1) if group else None,
        }
        for group in grouped
    ]


def memory_growth(
    samples: dict[str, list[tuple[float, float]]], warmup_s: float, seconds: float, smooth_s: float
) -> dict[str, dict]:
    """Each process's resident MB at the end of warm-up and at the end of the run, each
    the median of its samples over the smooth_s before (one sample may catch a passing
    peak), and the growth between; None where the process was not there at both."""
    rows = {}
    for name, points in samples.items():
        start = [mb for at, mb in points if warmup_s - smooth_s <= at <= warmup_s]
        end = [mb for at, mb in points if at >= seconds - smooth_s]
        start_mb = round(statistics.median(start), 1) if start else None
        end_mb = round(statistics.median(end), 1) if end else None
        growth = round(end_mb / start_mb - 1, 4) if start_mb and end_mb else None
        rows[name] = {"start_mb": start_mb, "end_mb": end_mb, "growth": growth}
    return rows


def verdicts(jobs: list[dict], memory: dict[str, dict], counts: dict, accounted: dict) -> dict:
    """Each criterion of the soak: what was measured, and whether it passed.

    jobs: the job POSTs' windows (windows()); memory: memory_growth(); counts: 5xx,
    requests answered as expected and in all, jobs sent and planned; accounted: the
    accounting of the harness (account())."""
    first, last = jobs[0]["p99_ms"], jobs[-1]["p99_ms"]
    p99_ratio = round(last / first, 2) if first and last else None
    growths = [row["growth"] for row in memory.values()]
    worst = max((g for g in growths if g is not None), default=None)
    sent = counts["jobs_sent"] / max(1, counts["jobs_planned"])
    return {
        "0 5xx": {"measured": counts["5xx"], "passed": counts["5xx"] == 0},
        "every request answered as expected (jobs 201, pages 200)": {
            "measured": f"{counts['as_expected']} of {counts['requests']}",
            "passed": counts["as_expected"] == counts["requests"] > 0,
        },
        f"p99 of the last window within {MAX_P99_RATIO}x the first's": {
            "measured": p99_ratio,
            "passed": p99_ratio is not None and p99_ratio <= MAX_P99_RATIO,
        },
        f"every process's memory grown < {MAX_RSS_GROWTH:.0%} after warm-up": {
            "measured": worst,
            # A process that came or went after warm-up (a runner restarted) fails it.
            "passed": bool(growths) and all(g is not None and g < MAX_RSS_GROWTH for g in growths),
        },
        f"jobs sent ≥ {MIN_SENT_FRACTION:.0%} of planned": {
            "measured": round(sent, 3),
            "passed": sent >= MIN_SENT_FRACTION,
        },
        "every acknowledged job finished once": {
            "measured": f"{accounted['jobs_finished']} of {accounted['jobs_acknowledged']}, "
            f"{accounted['duplicates']} duplicates, {accounted['orphans']} orphans",
            "passed": passed(accounted),
        },
    }


def peak_rate(cluster: Cluster, key: str, seconds: float) -> tuple[float, Load]:
    """Jobs finished per second while PEAK_CLIENTS clients send the soak's jobs in a
    closed loop with ?wait=, as make bench loads Sibyl: counted from the jobs' finished_at
    over the load's last three quarters (the first fills the pipeline)."""
    load = Load(
        cluster.url, key, "peak", PEAK_CLIENTS, SIZES, MODELS, wait_s=30, max_seconds=seconds
    )
    began = datetime.now(UTC)
    load.start()
    time.sleep(seconds)
    ended = datetime.now(UTC)
    load.stop()
    counted_from = began + timedelta(seconds=seconds / 4)
    finished = cluster.db.jobs.count_documents(
        {"tags.run": "peak", "finished_at": {"$gte": counted_from, "$lt": ended}}
    )
    return finished / (ended - counted_from).total_seconds(), load


def soak(
    folder: Path,
    seconds: float,
    warmup_s: float = 60,
    window_s: float = 60,
    peak_s: float = 30,
    fraction: float = 0.8,
    sample_s: float = 5,
) -> dict:
    """Measure the peak, soak at fraction of it for seconds, and return what was seen."""
    cluster = Cluster(folder, MAKE_RUN)
    try:
        client_key = make_key(cluster.api, "client", "soak")
        analyst_key = make_key(cluster.api, "analyst", "soak analyst")
        print(f"peak: {PEAK_CLIENTS} clients, closed loop, {peak_s} s...", flush=True)
        peak, peak_load = peak_rate(cluster, client_key, peak_s)
        wait_until(
            lambda: (
                not cluster.db.jobs.find_one(
                    {"tags.run": "peak", "status": {"$in": ["queued", "running"]}}, {"_id": 1}
                )
            ),
            DRAIN_SECONDS,
            "the peak's jobs to end",
        )
        rate = fraction * peak
        # Enough clients for 3 s of jobs in flight (a ?wait= beyond the 8 a process holds
        # is answered within a second): fewer, and a slower service would slow the load
        # rather than queue its jobs. Each sends every 3 s or so, within the 5 s an idle
        # keep-alive connection is kept.
        clients = min(128, max(8, math.ceil(3 * rate)))
        print(f"  {peak:.1f} jobs/s; soak at {rate:.1f} jobs/s for {seconds} s", flush=True)
        began, cpu_began = time.monotonic(), time.process_time()
        memory = MemoryWatch(cluster.api.process.pid, sample_s).start()
        analyst = Analyst(cluster.url, analyst_key).start()
        load = Load(
            cluster.url,
            client_key,
            "soak",
            clients,
            SIZES,
            MODELS,
            rate_per_s=rate,
            wait_s=30,
            max_jobs=10**9,
            max_seconds=seconds,
        ).start()
        for end in range(1, math.ceil(seconds / window_s) + 1):
            time.sleep(max(0.0, began + min(seconds, end * window_s) - time.monotonic()))
            jobs = windows(load.latencies, window_s, seconds)[end - 1]
            pages = windows(analyst.latencies, window_s, seconds)[end - 1]
            print(f"  window {end}: jobs {jobs}, pages {pages}", flush=True)
        load.stop()
        analyst.stop()
        memory.stop()
        own_cpu = time.process_time() - cpu_began
        accounted = account(cluster, [peak_load, load])
    finally:
        cluster.stop()
    statuses = load.statuses + analyst.statuses
    counts = {
        "5xx": sum(n for status, n in statuses.items() if status >= 500),
        "as_expected": load.statuses[201] + analyst.statuses[200],
        "requests": load.sent() + sum(analyst.statuses.values()) + analyst.dropped,
        "jobs_sent": load.sent(),
        "jobs_planned": math.floor(rate * seconds) + 1,
    }
    jobs = windows(load.latencies, window_s, seconds)
    growth = memory_growth(memory.samples, warmup_s, seconds, smooth_s=3 * sample_s)
    checks = verdicts(jobs, growth, counts, accounted)
    return {
        "settings": {
            "seconds": seconds,
            "warmup_s": warmup_s,
            "window_s": window_s,
            "peak_s": peak_s,
            "fraction": fraction,
            "sample_s": sample_s,
            "models": MODELS,
            "sizes": SIZES,
            "clients": clients,
        },
        "peak_jobs_per_s": round(peak, 1),
        "target_jobs_per_s": round(rate, 1),
        "sent_jobs_per_s": round(load.sent() / seconds, 1),
        # This process's CPU (the load, the analyst, the memory watch), in cores.
        "load_generator_cores": round(own_cpu / seconds, 2),
        "statuses": {"jobs": dict(load.statuses), "analyst": dict(analyst.statuses)},
        "dropped": {"jobs": load.dropped, "analyst": analyst.dropped},
        "counts": counts,
        "windows": {"jobs": jobs, "analyst": windows(analyst.latencies, window_s, seconds)},
        "memory": growth,
        "memory_samples": memory.samples,
        "machine_load": memory.machine_load,
        "accounted": accounted,
        "verdicts": checks,
        "passed": all(check["passed"] for check in checks.values()),
    }


def at_end(points: list[tuple[float, float]], end: float) -> float:
    """The last sampled value at or before end (0 before the first)."""
    return next((value for at, value in reversed(points) if at <= end), 0)


def cell(value) -> str:
    return "—" if value is None else str(value)


def markdown(results: dict) -> str:
    """The run as three tables: each window, each process's memory, each criterion."""
    window_s = results["settings"]["window_s"]
    lines = [
        f"Peak {results['peak_jobs_per_s']} jobs/s; soak at {results['target_jobs_per_s']} "
        f"jobs/s (sent {results['sent_jobs_per_s']}) for {results['settings']['seconds']} s; "
        f"jobs of {', '.join(map(str, SIZES))} instances of {' or '.join(MODELS)}, ?wait=30; "
        f"the load generator used {results['load_generator_cores']} cores.",
        "",
        "| from s | jobs | p50 ms | p99 ms | analyst pages | analyst p99 ms | RSS MB, all "
        "| machine load (1 min) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    samples = results["memory_samples"]
    for index, (jobs, pages) in enumerate(
        zip(results["windows"]["jobs"], results["windows"]["analyst"], strict=True)
    ):
        end = min((index + 1) * window_s, results["settings"]["seconds"])
        total = sum(at_end(points, end) for points in samples.values())
        lines.append(
            f"| {index * window_s:g} | {jobs['requests']} | {cell(jobs['p50_ms'])} "
            f"| {cell(jobs['p99_ms'])} | {pages['requests']} | {cell(pages['p99_ms'])} "
            f"| {total:.0f} | {at_end(results['machine_load'], end):.1f} |"
        )
    lines += ["", "| process | RSS MB after warm-up | at the end | growth |", "|---|---|---|---|"]
    for name, row in results["memory"].items():
        growth = "—" if row["growth"] is None else f"{row['growth']:+.1%}"
        lines.append(f"| {name} | {cell(row['start_mb'])} | {cell(row['end_mb'])} | {growth} |")
    lines += ["", "| criterion | measured | result |", "|---|---|---|"]
    for name, check in results["verdicts"].items():
        result = "pass" if check["passed"] else "**FAIL**"
        lines.append(f"| {name} | {cell(check['measured'])} | {result} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_seconds = float(os.environ.get("SIBYL_SOAK_SECONDS", 600))
    parser.add_argument("--seconds", type=float, default=default_seconds, help="soak length")
    parser.add_argument("--warmup", type=float, default=60, help="seconds before memory counts")
    parser.add_argument("--window", type=float, default=60, help="seconds per latency window")
    parser.add_argument("--peak-seconds", type=float, default=30, help="closed-loop peak length")
    parser.add_argument("--fraction", type=float, default=0.8, help="of the peak, to soak at")
    parser.add_argument("--sample", type=float, default=5, help="seconds between memory reads")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    folder = Path(tempfile.mkdtemp(prefix="sibyl-soak-"))
    results = soak(
        folder,
        args.seconds,
        args.warmup,
        args.window,
        args.peak_seconds,
        args.fraction,
        args.sample,
    )
    results["total_seconds"] = round(time.perf_counter() - began, 1)
    print(markdown(results))
    args.results.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.results / f"soak-{stamp}.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"\nresults: {out} ({results['total_seconds']} s)")
    return 0 if results["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
