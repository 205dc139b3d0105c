"""`make soak`: its criteria on made-up runs, and the whole soak once for some seconds
(the code path only: latency and memory are not judged on so short and busy a run)."""

import pytest

from bench.soak import memory_growth, soak, verdicts, windows

STEADY = [{"requests": 100, "p50_ms": 40.0, "p99_ms": 200.0}] * 10
FLAT = {"database (pid 1)": {"start_mb": 100.0, "end_mb": 105.0, "growth": 0.05}}
COUNTS = {"5xx": 0, "as_expected": 1200, "requests": 1200, "jobs_sent": 1000, "jobs_planned": 1001}
ACCOUNTED = {
    "jobs_acknowledged": 1000,
    "jobs_finished": 1000,
    "lost": 0,
    "failed": 0,
    "failed_as_expected": 0,
    "predictions_expected": 37000,
    "predictions_stored": 37000,
    "duplicates": 0,
    "orphans": 0,
    "stored_untold": 0,
    "wrong_answers": 0,
    "5xx": 0,
    "dropped": 0,
    "expected_failed": 0,
}
ONCE = "every acknowledged job finished once"


def failed(checks: dict) -> list[str]:
    return [name for name, check in checks.items() if not check["passed"]]


def test_a_steady_run_passes():
    assert failed(verdicts(STEADY, FLAT, COUNTS, ACCOUNTED)) == []


def test_p99_doubled_in_the_last_window_fails():
    slower = [*STEADY[:-1], {"requests": 100, "p50_ms": 45.0, "p99_ms": 400.0}]
    checks = verdicts(slower, FLAT, COUNTS, ACCOUNTED)
    assert failed(checks) == ["p99 of the last window within 1.5x the first's"]
    assert checks["p99 of the last window within 1.5x the first's"]["measured"] == 2.0


@pytest.mark.parametrize(
    "memory",
    [
        {**FLAT, "API worker (pid 2)": {"start_mb": 300.0, "end_mb": 360.0, "growth": 0.2}},
        # A runner restarted after warm-up: not there at both ends.
        {**FLAT, "model runner (pid 3)": {"start_mb": None, "end_mb": 80.0, "growth": None}},
        {},
    ],
)
def test_memory_grown_or_a_process_replaced_fails(memory):
    assert failed(verdicts(STEADY, memory, COUNTS, ACCOUNTED)) == [
        "every process's memory grown < 10% after warm-up"
    ]


@pytest.mark.parametrize(
    "counts, accounted, criterion",
    [
        ({**COUNTS, "5xx": 1, "as_expected": 1199}, ACCOUNTED, "0 5xx"),
        ({**COUNTS, "jobs_sent": 900}, ACCOUNTED, "jobs sent ≥ 95% of planned"),
        (COUNTS, {**ACCOUNTED, "duplicates": 1}, ONCE),
        (COUNTS, {**ACCOUNTED, "jobs_finished": 999, "lost": 1}, ONCE),
    ],
)
def test_errors_a_lagging_load_or_a_job_not_finished_once_fail(counts, accounted, criterion):
    assert criterion in failed(verdicts(STEADY, FLAT, counts, accounted))


def test_windows_and_growth():
    latencies = [(at / 10, float(at % 100)) for at in range(300)]  # 10 a second for 30 s
    first, second, third = windows(latencies, 10, 30)
    assert first == {"requests": 100, "p50_ms": 49.5, "p99_ms": 98.0}
    assert second["requests"] == third["requests"] == 100
    samples = {
        # A passing peak at the end of warm-up is not taken for the level.
        "API worker (pid 2)": [(8, 100.0), (9, 180.0), (10, 100.0), (28, 110.0), (30, 110.0)],
        "model runner (pid 3)": [(20, 50.0), (30, 50.0)],
    }
    growth = memory_growth(samples, warmup_s=10, seconds=30, smooth_s=3)
    assert growth["API worker (pid 2)"] == {"start_mb": 100.0, "end_mb": 110.0, "growth": 0.1}
    assert growth["model runner (pid 3)"]["growth"] is None


def test_a_short_soak_runs_end_to_end(tmp_path):
    results = soak(tmp_path, seconds=16, warmup_s=4, window_s=4, peak_s=8, sample_s=1)
    assert results["peak_jobs_per_s"] > 0
    assert 0 < results["target_jobs_per_s"] < results["peak_jobs_per_s"]
    # Every window had jobs and pages; every request was answered, none with a 5xx.
    assert len(results["windows"]["jobs"]) == len(results["windows"]["analyst"]) == 4
    for window in results["windows"]["jobs"] + results["windows"]["analyst"]:
        assert window["requests"] > 0 and window["p99_ms"] >= window["p50_ms"] > 0
    assert results["counts"]["5xx"] == 0
    assert results["counts"]["as_expected"] == results["counts"]["requests"]
    assert set(results["statuses"]["analyst"]) == {200}
    # Every process of run.py serve was watched: one runner per model.
    kinds = [name.split(" (pid")[0] for name in results["memory"]]
    assert sorted(kinds) == ["API worker", "database", "gunicorn master"] + ["model runner"] * 2
    assert all(row["start_mb"] and row["end_mb"] for row in results["memory"].values())
    assert results["machine_load"] and results["load_generator_cores"] >= 0  # 0.0 when idle
    # The peak's jobs and the soak's, each finished once, all predictions stored.
    accounted = results["accounted"]
    assert accounted["jobs_acknowledged"] == accounted["jobs_finished"] > 0
    assert results["verdicts"]["every acknowledged job finished once"]["passed"], accounted
    assert set(results["verdicts"]) >= {"0 5xx", "every acknowledged job finished once"}
