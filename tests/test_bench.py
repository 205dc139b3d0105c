"""The benchmark harness, run once at a tiny size so it keeps working (not a timing test)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_benchmark_runs_end_to_end(tmp_path):
    finished = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--results", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    (result_file,) = tmp_path.glob("*-quick.json")
    results = json.loads(result_file.read_text())

    rows = results["end_to_end"]
    assert {(row["model"], row["concurrency"]) for row in rows} == {
        (model, c) for model in ("iris", "digits") for c in (1, 4)
    }
    for row in rows:
        for side in ("naive", "sibyl"):
            assert row[side]["errors"] == 0
            assert row[side]["requests"] > 0
    cost = results["write_concern"]
    assert cost["durable"] == "journaled"
    assert [row["concurrency"] for row in cost["rows"]] == [1, 4]
    for row in cost["rows"]:
        for side in ("w1", "durable"):
            assert row[side]["errors"] == 0
            assert row[side]["requests"] > 0
    access = results["access_control"]
    assert access["concurrency"] == 4
    assert [row["turn"] for row in access["turns"]] == [1, 2]
    for row in [*access["turns"], access]:
        for side in ("off", "on"):
            assert row[side]["errors"] == 0
            assert row[side]["requests"] > 0
    assert access["throughput_ratio"] > 0
    assert "## Access control" in finished.stdout
    assert results["bulk"]["instances"] == 300
    assert results["bulk"]["fraction_of_limit"] > 0
    assert [row["predictions"] for row in results["analyst"]] == [100, 1000]
    assert "| iris | 1 |" in finished.stdout  # the markdown table
