"""Prometheus metrics: what the API, the engine and the job service count.

prometheus_client keeps them; under `run.py serve` it runs in its multiprocess mode
(PROMETHEUS_MULTIPROC_DIR, set by run.py before gunicorn forks), so that a scrape of
any worker counts every worker. The queue's depth and age are read from the database
at scrape time (`QueueCollector`), not kept per process. Imports nothing of Sibyl's:
every layer may count.
"""

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily

# Latency buckets from a millisecond to a minute (?wait= requests last seconds).
SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

REQUESTS = Counter(
    "sibyl_http_requests_total",
    "HTTP requests answered, by route template, method and status",
    ["route", "method", "status"],
)
REQUEST_SECONDS = Histogram(
    "sibyl_http_request_duration_seconds",
    "Time to answer an HTTP request, by route template and method",
    ["route", "method"],
    buckets=SECONDS,
)
JOBS = Counter(
    "sibyl_jobs_total",
    "Jobs by model and what happened: accepted, succeeded, failed, retried",
    ["model", "event"],
)
BATCH_ROWS = Histogram(
    "sibyl_batch_rows",
    "Instances per model call, by model version",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)
MODEL_CALL_SECONDS = Histogram(
    "sibyl_model_call_seconds",
    "Time of one model call in its runner, by model version",
    ["model"],
    buckets=SECONDS,
)
PREDICTIONS = Counter(
    "sibyl_predictions_written_total", "Prediction documents written, by model", ["model"]
)
LEASE_EXPIRIES = Counter(
    "sibyl_lease_expiries_total", "Jobs taken back from a runner whose lease expired"
)
DATABASE_ERRORS = Counter(
    "sibyl_database_errors_total",
    "Database errors: requests answered 503, engine runs interrupted",
    ["where"],
)
HOOK_ERRORS = Counter(
    "sibyl_hook_errors_total",
    "Job event listeners (developers' hooks, waiters) that raised, by listener",
    ["hook"],
)
RATE_LIMITED = Counter(
    "sibyl_rate_limited_total", "Requests refused by a rate limit (429), by scope", ["scope"]
)


class QueueCollector:
    """The queue as the database has it, read at each scrape: read() gives the number
    of queued jobs and the age in seconds of the oldest (0 with none)."""

    def __init__(self, read):
        self.read = read

    def collect(self):
        depth, age_s = self.read()
        yield GaugeMetricFamily("sibyl_queue_depth", "Jobs queued", value=depth)
        yield GaugeMetricFamily(
            "sibyl_queue_oldest_age_seconds", "Age of the oldest queued job (0: none)", value=age_s
        )


def exposition(read_queue) -> tuple[bytes, str]:
    """The text a scrape gets: every process's counts (multiprocess mode) or this
    process's, then the queue (read_queue: see QueueCollector)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    queue = CollectorRegistry()
    queue.register(QueueCollector(read_queue))
    return generate_latest(registry) + generate_latest(queue), CONTENT_TYPE_LATEST
