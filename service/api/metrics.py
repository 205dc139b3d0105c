"""GET /metrics for Prometheus, and the count of every request answered.

Readable with a key whose role has `metrics:read` (admins), or without a key from the
addresses in SIBYL_METRICS_ADDRESSES (a Prometheus server on the operator's network):
service/api/auth.py asks `open_to_caller`."""

import time
from datetime import UTC, datetime

from flask import Blueprint, Flask, Response, current_app, g, request

from service.api.described import described
from service.context import sibyl
from service.jobs import status
from service.metrics import REQUEST_SECONDS, REQUESTS, exposition

metrics = Blueprint("metrics", __name__)


@metrics.get("/metrics")
@described(
    summary="Prometheus metrics of every API process (admins, or allowed addresses)",
    responses={"200": {"description": "Prometheus text exposition format"}},
)
def scrape():
    """Every process's counters and histograms, and the queue as the database has it."""
    body, content_type = exposition(read_queue)
    return Response(body, content_type=content_type)


def read_queue() -> tuple[int, float]:
    """Queued jobs (counted up to status.COUNT_LIMIT) and the oldest one's age."""
    depth, oldest = status.queue(sibyl().store, datetime.now(UTC))
    return depth, oldest["age_s"] if oldest else 0.0


def open_to_caller() -> bool:
    """Whether this request may read /metrics without a key: it comes from an allowed address."""
    return request.remote_addr in current_app.config["METRICS_ADDRESSES"]


def register(app: Flask) -> None:
    app.register_blueprint(metrics)
    app.before_request(started)
    app.after_request(counted)


def started() -> None:
    g.request_began = time.perf_counter()


def counted(response: Response) -> Response:
    """Count the answer under its route's template (not its URL: ids would explode it)."""
    route = request.url_rule.rule if request.url_rule is not None else "(no route)"
    REQUESTS.labels(route, request.method, str(response.status_code)).inc()
    began = g.get("request_began")
    if began is not None:
        REQUEST_SECONDS.labels(route, request.method).observe(time.perf_counter() - began)
    return response
