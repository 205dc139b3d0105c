"""`make profile`: where Sibyl's time goes under load, sampled with py-spy.

Starts Sibyl as `make bench` does, loads it with single-instance jobs at 32 clients
(POST /v1/jobs?wait=30, a client key; --clients), and samples the API worker and the database
process with `py-spy record --gil` (only the thread holding the GIL: the Python work
that limits a process), then prints each one's functions by inclusive share.

    python -m bench.profile [--model iris|digits|cnn] [--clients 32] [--seconds 12] [--top 40]

docs/PERFORMANCE.md keeps the top lines of the latest profiles.
"""

import argparse
import collections
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import cnn
from bench.loadgen import run_load
from bench.run import (
    CNN,
    FULL,
    bearer,
    expensive_model_load,
    make_key,
    register_model,
    sample_inputs,
    succeeded,
    warm,
)
from bench.servers import ROOT, command_line, process_tree, start_sibyl

PY_SPY = Path(sys.executable).parent / "py-spy"
# Frames that only say "a thread runs" or "gunicorn serves": they head every stack.
NOISE = re.compile(r"threading\.py|concurrent/futures|gunicorn/(arbiter|app)|run\.py|_csot")


def inclusive_shares(raw: Path) -> tuple[int, list[tuple[float, str]]]:
    """py-spy's raw (collapsed) stacks → (samples, [(share of samples, frame)]), largest first."""
    counts: collections.Counter = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        total += int(samples)
        frames = {re.sub(r" \(/.*?/(site-packages|main)/", " (", f) for f in stack.split(";")}
        for frame in frames:
            counts[frame] += int(samples)
    shares = [(n / max(total, 1), frame) for frame, n in counts.most_common()]
    return total, [(share, frame) for share, frame in shares if not NOISE.search(frame)]


def job_bodies(sibyl, model: str, key: str):
    """The load's bodies: a tiny demo model's instances, or the CNN (registered first)."""
    if model != CNN:
        instances = sample_inputs()[model]
        return lambda i: {"model": model, "inputs": [instances[i % len(instances)]]}
    path = cnn.build(Path(tempfile.mkdtemp()) / "cnn.keras", **cnn.FULL)
    register_model(sibyl, CNN, path, cnn.CLASSES)
    warm(sibyl, key, cnn.FULL["side"])
    return expensive_model_load(FULL, cnn.FULL["side"])["body"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="iris", choices=["iris", "digits", CNN])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=int, default=12)
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="sibyl-profile-"))
    sibyl = start_sibyl(workdir).wait_until_healthy()
    try:
        key = make_key(sibyl, "client")
        body = job_bodies(sibyl, args.model, key)
        url = sibyl.url + "/v1/jobs?wait=30"
        load = dict(is_success=succeeded, headers=bearer(key), concurrency=args.clients)
        run_load(url, body, max_requests=300, max_seconds=4, **load)  # warm
        tree = process_tree(sibyl.process.pid)
        database = [pid for pid in tree if "secantus" in command_line(pid)]
        # The gunicorn worker (run.py serve, below the master); the model runners and
        # the database are other processes in the tree.
        api = [pid for pid in tree[1:] if "run.py serve" in command_line(pid)]
        runners = [pid for pid in tree if "runner" in command_line(pid)]
        outputs = {"API worker": (api[-1], workdir / "api.txt")}
        if runners:
            outputs["model runner"] = (runners[-1], workdir / "runner.txt")
        outputs["database"] = (database[-1], workdir / "db.txt")
        spies = [
            subprocess.Popen(
                [PY_SPY, "record", "-p", str(pid), "-d", str(args.seconds), "-r", "50"]
                + ["--gil", "--nonblocking", "-f", "raw", "-o", str(out)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for pid, out in outputs.values()
        ]
        result = run_load(url, body, max_requests=10**6, max_seconds=args.seconds + 1, **load)
        for spy in spies:
            spy.wait()
    finally:
        sibyl.stop()
    summary = result.summary()
    print(
        f"{args.model}, {args.clients} clients: {summary['throughput_per_s']} jobs/s, "
        f"p50 {summary['p50_ms']} ms (py-spy --gil, {args.seconds} s; {ROOT.name})"
    )
    for name, (_, out) in outputs.items():
        total, shares = inclusive_shares(out)
        print(f"\n{name}: {total} samples, inclusive share")
        for share, frame in shares[: args.top]:
            print(f"  {100 * share:5.1f}%  {frame[:140]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
