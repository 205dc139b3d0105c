"""Request ids: chosen per request (a client's well-formed X-Request-ID, else a fresh
one), on every answer, on the jobs a request creates and on its log lines; JSON logs."""

import io
import json
import logging
import re
import signal

import pytest
import requests
from conftest import start_serve
from flask import g

from service import logs
from service.logs import current_request_id, request_scope

SETOSA = [5.1, 3.5, 1.4, 0.2]
JOB = {"model": "iris", "inputs": [SETOSA]}
GENERATED = re.compile(r"[0-9a-f]{32}")


def test_a_supplied_id_is_echoed_and_stored_on_the_job(queue_api, queue_db, queue_demo_models):
    sent = "trace-42.a_b:C"
    created = queue_api.post("/jobs", json=JOB, headers={"X-Request-ID": sent})
    assert created.status_code == 201, created.text
    assert created.headers["X-Request-ID"] == sent
    job_id = created.json()["_id"]
    assert queue_db.jobs.find_one()["request_id"] == sent
    # Shown on GET, under another request's id.
    fetched = queue_api.get(f"/jobs/{job_id}")
    assert fetched.json()["request_id"] == sent
    assert GENERATED.fullmatch(fetched.headers["X-Request-ID"])


def test_each_job_of_a_bulk_post_carries_the_request_id(queue_api, queue_db, queue_demo_models):
    created = queue_api.post("/jobs", json=[JOB, JOB, JOB], headers={"X-Request-ID": "bulk-1"})
    assert created.status_code == 201, created.text
    assert created.headers["X-Request-ID"] == "bulk-1"
    assert [job["request_id"] for job in queue_db.jobs.find()] == ["bulk-1"] * 3


def test_a_job_run_during_wait_keeps_the_request_id(api, db, demo_models):
    """?wait= jobs are held in memory and written once finished: the id is written too."""
    created = api.post("/jobs?wait=20", json=JOB, headers={"X-Request-ID": "waited"})
    assert created.status_code == 201, created.text
    assert created.json()["status"] == "succeeded"
    assert created.json()["request_id"] == "waited"
    assert db.jobs.find_one()["request_id"] == "waited"


@pytest.mark.parametrize(
    "sent",
    [
        "x" * 65,  # too long
        "",  # empty
        "has space",
        "a,b",  # two headers joined by a proxy
        "<script>",
        "path/../x",
        "quote\"'",
    ],
)
def test_a_malformed_id_is_replaced(queue_api, queue_db, queue_demo_models, sent):
    created = queue_api.post("/jobs", json=JOB, headers={"X-Request-ID": sent})
    assert created.status_code == 201, created.text
    chosen = created.headers["X-Request-ID"]
    assert GENERATED.fullmatch(chosen)
    assert queue_db.jobs.find_one()["request_id"] == chosen


def test_a_header_injection_attempt_is_replaced(live_server):
    """A value with line breaks (no HTTP client sends one; a careless server might pass
    it on) never reaches the answer's headers."""
    client = live_server.app.test_client()
    attack = "abc\r\nSet-Cookie: session=stolen"
    answer = client.get("/v1/healthz", environ_overrides={"HTTP_X_REQUEST_ID": attack})
    assert answer.status_code == 200
    assert GENERATED.fullmatch(answer.headers["X-Request-ID"])
    assert "Set-Cookie" not in answer.headers
    assert answer.headers.getlist("X-Request-ID") == [answer.headers["X-Request-ID"]]


def test_a_64_character_id_is_kept(live_server):
    sent = "A1._:-" * 10 + "abcd"
    assert len(sent) == 64
    answer = requests.get(live_server.url + "/v1/healthz", headers={"X-Request-ID": sent})
    assert answer.headers["X-Request-ID"] == sent


@pytest.mark.parametrize(
    ("role", "method", "path", "body", "status"),
    [
        ("admin", "GET", "/jobs", None, 200),  # Eve's own endpoint
        ("admin", "GET", "/no-such-route", None, 404),
        ("admin", "GET", "/jobs/" + "0" * 24, None, 404),
        (None, "GET", "/jobs", None, 401),
        ("client", "GET", "/keys", None, 403),
        ("admin", "POST", "/jobs", {"model": "iris"}, 422),
        ("admin", "POST", "/jobs?wait=soon", JOB, 400),
        ("admin", "DELETE", "/jobs", None, 405),
        ("admin", "GET", "/openapi.json", None, 200),
    ],
)
def test_every_answer_carries_an_id(live_server, db, role, method, path, body, status):
    api = live_server.api(role)
    answers = [api.request(method, path, json=body) for _ in range(2)]
    assert [answer.status_code for answer in answers] == [status, status]
    ids = [answer.headers["X-Request-ID"] for answer in answers]
    assert all(GENERATED.fullmatch(request_id) for request_id in ids)
    assert ids[0] != ids[1]
    echoed = api.request(method, path, json=body, headers={"X-Request-ID": "mine"})
    assert echoed.status_code == status
    assert echoed.headers["X-Request-ID"] == "mine"


def test_a_client_cannot_set_the_request_id(queue_api, queue_db, queue_demo_models):
    """request_id is read-only, as owner and status are: naming it is a 422."""
    refused = queue_api.post("/jobs", json={**JOB, "request_id": "forged"})
    assert refused.status_code == 422
    assert refused.json()["_issues"]["request_id"] == "field is read-only"
    assert queue_db.jobs.count_documents({}) == 0

    created = queue_api.post("/jobs", json=JOB, headers={"X-Request-ID": "real"}).json()
    patched = queue_api.patch(
        f"/jobs/{created['_id']}",
        json={"request_id": "forged"},
        headers={"If-Match": created["_etag"]},
    )
    assert patched.status_code == 422
    assert "read-only" in patched.json()["_issues"]["request_id"]
    assert queue_db.jobs.find_one()["request_id"] == "real"


def test_log_records_of_a_request_carry_its_id(live_server, db, caplog, monkeypatch):
    """Every record written while a request is served, by any logger, carries its id
    (the filter configure() puts on Sibyl's handler; here on pytest's)."""
    seen = {}
    view = live_server.app.view_functions["health.healthz"]

    def logging_view():
        logging.getLogger("service.somewhere").info("serving the probe")
        seen["g"], seen["contextvar"] = g.request_id, current_request_id()
        return view()

    monkeypatch.setitem(live_server.app.view_functions, "health.healthz", logging_view)
    caplog.handler.addFilter(logs.RequestIdFilter())
    with caplog.at_level(logging.INFO, logger="service.somewhere"):
        answer = requests.get(live_server.url + "/v1/healthz", headers={"X-Request-ID": "r-1"})
        logging.getLogger("service.somewhere").info("outside any request")
    assert answer.status_code == 200
    assert seen == {"g": "r-1", "contextvar": "r-1"}
    by_message = {
        record.getMessage(): record.request_id
        for record in caplog.records
        if record.name == "service.somewhere"
    }
    assert by_message == {"serving the probe": "r-1", "outside any request": "-"}
    assert current_request_id() is None  # reset when the request ended


@pytest.fixture
def configured():
    """logs.configure on a string, undone afterwards (the root logger is the session's)."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)

    def configure(log_format: str) -> io.StringIO:
        stream = io.StringIO()
        logs.configure(log_format, stream)
        return stream

    yield configure
    for handler in set(root.handlers) - set(handlers):
        root.removeHandler(handler)
    root.setLevel(level)


def test_json_logs_are_one_object_a_line(configured):
    stream = configured("json")
    log = logging.getLogger("sibyl.test")
    log.info("outside a request")
    with request_scope("r-7"):
        log.warning("two\nlines, %s", "formatted")
        try:
            raise ValueError("broken")
        except ValueError:
            log.exception("it failed")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 3
    for line in lines:
        assert set(line) >= {"time", "level", "logger", "message", "request_id"}
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"])
        assert line["logger"] == "sibyl.test"
    assert [line["request_id"] for line in lines] == ["-", "r-7", "r-7"]
    assert [line["level"] for line in lines] == ["INFO", "WARNING", "ERROR"]
    assert lines[1]["message"] == "two\nlines, formatted"
    assert "exception" not in lines[0]
    assert lines[2]["exception"].startswith("Traceback")
    assert "ValueError: broken" in lines[2]["exception"]


def test_text_logs_name_the_request(configured):
    stream = configured("text")
    with request_scope("r-8"):
        logging.getLogger("service.test").info("hello")
    assert stream.getvalue().rstrip().endswith("INFO service.test [r-8]: hello")


def test_the_openapi_document_shows_request_id_read_only(live_server):
    schemas = requests.get(live_server.url + "/v1/openapi.json", timeout=10).json()
    schemas = schemas["components"]["schemas"]
    assert schemas["Jobs"]["properties"]["request_id"]["readOnly"] is True
    assert "request_id" not in schemas["JobsWrite"]["properties"]


def test_run_py_serve_writes_only_json_lines_as_json(tmp_path):
    """SIBYL_LOG_FORMAT=json: gunicorn's and uvicorn's lines too, not only Sibyl's."""
    process, url, _ = start_serve(tmp_path, LOG_FORMAT="json")
    try:
        assert requests.get(url + "/v1/healthz", timeout=30).status_code == 200
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    lines = [json.loads(line) for line in output.splitlines() if line.strip()]
    loggers = {line["logger"] for line in lines}
    assert {"gunicorn.error", "sibyl"} <= loggers, loggers
    assert all(line["request_id"] for line in lines)
    # The first start's admin key is in its file, not in lines meant for a log shipper.
    key = (tmp_path / "admin.key").read_text().strip()
    assert key not in output and "admin.key" in output
