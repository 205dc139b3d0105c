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
    } | {("cnn", 4)}
    for row in rows:
        assert_loaded_cleanly(row, ("tutorial", "fast_no_record", "same_work", "sibyl"))
        assert set(row["sibyl_against"]) == {"tutorial", "fast_no_record", "same_work"}
    # The same-work app stored a job and one prediction per request, journaled.
    same_work = results["same_work"]
    assert same_work["write_concern"] == {"w": 1, "j": True}
    assert same_work["stored"]["jobs"] >= sum(row["same_work"]["requests"] for row in rows)
    assert same_work["stored"]["predictions"] == same_work["stored"]["jobs"]
    # The expensive model, at its tiny size: built, registered, loaded, its limit measured.
    model = results["cnn"]
    assert model["shape"]["side"] == 32
    assert 0 < model["call_costs"]["batch_1_ms"] <= model["call_costs"]["batch_32_ms"]
    assert {"1", "4"} <= set(model["limit"]["jobs_per_s"])
    assert model["limit"]["batches_in_sibyl"]["calls"] > 0
    assert model["limit"]["sibyl_fraction_of_limit"]["4"] > 0
    same_work_table = finished.stdout.index("## End-to-end: Sibyl against the same work")
    assert same_work_table < finished.stdout.index("## End-to-end: Sibyl against all three")
    assert "| cnn | 4 |" in finished.stdout
    cost = results["write_concern"]
    assert cost["durable"] == "journaled"
    assert [row["concurrency"] for row in cost["rows"]] == [1, 4]
    for row in cost["rows"]:
        assert_loaded_cleanly(row, ("w1", "durable"))
    access = results["access_control"]
    assert access["concurrency"] == 4
    assert [row["turn"] for row in access["turns"]] == [1, 2]
    for row in [*access["turns"], access]:
        assert_loaded_cleanly(row, ("off", "on"))
    assert access["throughput_ratio"] > 0
    assert "## Access control" in finished.stdout
    # Small jobs beside large ones: both loads ran cleanly, and large jobs ran meanwhile.
    fair = results["fairness"]
    assert_loaded_cleanly(fair, ("idle", "loaded"))
    assert fair["large_jobs"] and set(fair["large_jobs"]) <= {"succeeded", "running", "queued"}
    assert fair["p99_ratio"] > 0
    assert "## Fair service" in finished.stdout
    # The front against gunicorn's threaded worker, and both under slow clients.
    front = results["front"]
    assert [row["concurrency"] for row in front["rows"]] == [1, 4]
    for row in front["rows"]:
        assert_loaded_cleanly(row, ("threads", "front"))
    slow = front["slow_clients"]
    assert slow["front"]["tries"] > 0 and slow["front"]["answered"] == slow["front"]["tries"]
    assert "## The front" in finished.stdout
    # Two gunicorn workers for Sibyl and the same-work app, beside the 1-worker row.
    workers = results["workers"]
    assert workers["concurrency"] == 4
    assert [row["workers"] for row in workers["rows"]] == [1, 2]
    for row in workers["rows"]:
        assert_loaded_cleanly(row, ("same_work", "sibyl"))
        assert row["throughput_ratio"] > 0
    assert "## Two gunicorn workers" in finished.stdout
    # Each model in this process and through a model runner, on the same file.
    runner = results["runner"]
    assert list(runner) == ["iris", "digits", "cnn"]
    for cost in runner.values():
        for side in ("in_process", "runner"):
            assert cost[side]["p50_ms_at_1"] > 0
            assert set(cost[side]["rows_per_s"]) == set(cost["fewer_rows_per_s"])
            assert "32" in cost[side]["rows_per_s"]
        assert not cost["runner_restarted"]
    assert "## Model runner: the IPC hop per batch" in finished.stdout
    assert "| iris | 32 |" in finished.stdout
    assert results["bulk"]["instances"] == 300
    assert results["bulk"]["fraction_of_limit"] > 0
    assert [row["predictions"] for row in results["analyst"]] == [100, 1000]
    assert "| iris | 1 |" in finished.stdout  # the markdown table


def assert_loaded_cleanly(row: dict, sides: tuple[str, ...]) -> None:
    """Each server of a row answered requests, every one of them as expected."""
    for side in sides:
        assert row[side]["errors"] == 0, side
        assert row[side]["requests"] > 0, side
