"""/metrics: Prometheus text that a real parser reads, counting what the service did;
every API process counted under run.py serve; admins or allowed addresses only."""

import requests
from conftest import start_serve, stop_serve, wait_for
from prometheus_client.parser import text_string_to_metric_families

from service.store.embedded_db import free_port

SETOSA = [5.1, 3.5, 1.4, 0.2]


def scrape(url: str, key: str | None = None) -> dict[tuple, float]:
    """{(sample name, sorted labels): value} of one scrape, read by prometheus_client's parser."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    response = requests.get(url + "/metrics", headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_are_for_admins_and_allowed_addresses(live_server, start_server):
    assert requests.get(live_server.url + "/metrics", timeout=10).status_code == 401
    client = {"Authorization": f"Bearer {live_server.key('client')}"}
    assert requests.get(live_server.url + "/metrics", headers=client, timeout=10).status_code == 403
    assert scrape(live_server.url, live_server.key("admin"))
    # An operator's Prometheus at an allowed address needs no key.
    allowed = start_server({"METRICS_ADDRESSES": ["127.0.0.1"]})
    assert scrape(allowed.url)


def test_metrics_count_requests_jobs_batches_and_predictions(live_server, api, demo_models):
    admin = live_server.key("admin")
    before = scrape(live_server.url, admin)
    created = [
        api.post("/jobs?wait=30", json={"model": "iris", "inputs": [SETOSA] * 2}).json()
        for _ in range(3)
    ]
    assert {job["status"] for job in created} == {"succeeded"}
    assert api.post("/jobs", json={"model": "absent", "inputs": [[1]]}).status_code == 422
    assert api.get(f"/jobs/{created[0]['_id']}").status_code == 200
    after = scrape(live_server.url, admin)

    def grew(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("sibyl_http_requests_total", route="/v1/jobs", method="POST", status="201") == 3
    assert grew("sibyl_http_requests_total", route="/v1/jobs", method="POST", status="422") == 1
    # Counted under the route's template, never under a job's own URL.
    item_routes = {
        dict(labels)["route"]
        for (name, labels) in after
        if name == "sibyl_http_requests_total" and "/v1/jobs/" in dict(labels)["route"]
    }
    assert item_routes and not any(created[0]["_id"] in route for route in item_routes)
    assert grew("sibyl_http_request_duration_seconds_count", route="/v1/jobs", method="POST") == 4
    assert grew("sibyl_jobs_total", model="iris", event="accepted") == 3
    assert grew("sibyl_jobs_total", model="iris", event="succeeded") == 3
    assert grew("sibyl_predictions_written_total", model="iris") == 6
    assert grew("sibyl_batch_rows_count", model="iris@1") >= 1
    assert grew("sibyl_batch_rows_sum", model="iris@1") == 6
    assert grew("sibyl_model_call_seconds_count", model="iris@1") >= 1
    assert value(after, "sibyl_queue_depth") == 0
    assert value(after, "sibyl_queue_oldest_age_seconds") == 0


def test_queue_depth_and_age_come_from_the_database(queueing_server, queue_api, queue_demo_models):
    for _ in range(3):
        assert (
            queue_api.post("/jobs", json={"model": "iris", "inputs": [SETOSA]}).status_code == 201
        )
    key = queueing_server.key("admin")
    samples = scrape(queueing_server.url, key)
    assert value(samples, "sibyl_queue_depth") == 3  # workers mode: nobody runs them here
    # The oldest job ages while nobody runs it.
    wait_for(
        lambda: value(scrape(queueing_server.url, key), "sibyl_queue_oldest_age_seconds") >= 0.5,
        30,
        "the oldest queued job to age",
    )


def test_every_api_process_is_counted(tmp_path):
    """Two gunicorn workers answer in turn; any scrape counts the requests of both."""
    process, url, key = start_serve(tmp_path, WEB_WORKERS=2)
    try:
        for _ in range(40):  # a new connection each: the workers take them in turn
            assert requests.get(url + "/v1/healthz", timeout=10).status_code == 200
        for _ in range(3):
            samples = scrape(url, key)
            count = value(
                samples,
                "sibyl_http_requests_total",
                route="/v1/healthz",
                method="GET",
                status="200",
            )
            assert count >= 40
        # Both workers kept counts (one file of counters per process).
        pids = {path.stem.rsplit("_", 1)[1] for path in (tmp_path / "metrics").glob("counter_*.db")}
        assert len(pids) >= 2
    finally:
        stop_serve(process)


def test_a_worker_serves_its_own_metrics_when_asked(
    queue_api, queue_db, queue_demo_models, start_worker
):
    port = free_port()
    worker = start_worker(metrics_port=port)
    job = queue_api.post("/jobs", json={"model": "iris", "inputs": [SETOSA] * 3}).json()
    assert queue_api.get(f"/jobs/{job['_id']}?wait=60").json()["status"] == "succeeded"

    def counted():
        try:
            samples = scrape(f"http://127.0.0.1:{port}")
        except requests.RequestException:
            return False
        return value(samples, "sibyl_jobs_total", model="iris", event="succeeded") >= 1 and samples

    samples = wait_for(counted, 60, "the worker's metrics to count the job")
    assert value(samples, "sibyl_predictions_written_total", model="iris") >= 3
    worker.terminate()
    worker.wait(30)
