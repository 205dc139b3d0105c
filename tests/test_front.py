"""The front (service/api/front.py) under `run.py serve`: slow clients hold no thread, and
a request arrives in bounds and in time or gets a JSON refusal, cheaply."""

import contextlib
import json
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests
from conftest import child_processes, start_serve, stop_serve
from prometheus_client.parser import text_string_to_metric_families

from bench.slow_clients import slow_clients


@pytest.fixture(scope="module")
def patient(tmp_path_factory):
    """Deadlines longer than any test here: slow connections stay open throughout."""
    process, url, key = start_serve(
        tmp_path_factory.mktemp("patient"), HEADER_TIMEOUT_S=120, BODY_TIMEOUT_S=120
    )
    yield url, key, process
    stop_serve(process)


@pytest.fixture(scope="module")
def impatient(tmp_path_factory):
    """Short deadlines and a small buffer, to see each refusal."""
    process, url, key = start_serve(
        tmp_path_factory.mktemp("impatient"),
        HEADER_TIMEOUT_S=2,
        BODY_TIMEOUT_S=2,
        MAX_BUFFERED_MB=1,
    )
    yield url, key, process
    stop_serve(process)


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def exchange(url: str, data: bytes, timeout: float = 60) -> bytes:
    """Send raw bytes (from a thread: the server may answer before reading them all) and
    return everything the server sends until it closes the connection."""
    connection = socket.create_connection(("127.0.0.1", port_of(url)), timeout=timeout)

    def send():
        with contextlib.suppress(OSError):  # closed after the answer: what a refusal does
            connection.sendall(data)

    threading.Thread(target=send, daemon=True).start()
    answer = b""
    with connection:
        while chunk := connection.recv(65536):
            answer += chunk
    return answer


def refusal(answer: bytes) -> tuple[int, dict, str]:
    """Status, headers and Eve's error message of a whole raw HTTP answer."""
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    error = json.loads(body)
    assert error["_status"] == "ERR"
    assert error["_error"]["code"] == int(lines[0].split()[1])
    return int(lines[0].split()[1]), headers, error["_error"]["message"]


def api_worker_cpu_seconds(serve: subprocess.Popen) -> float:
    """CPU used so far by the gunicorn worker (the child of serve running run.py)."""
    for pid in child_processes().get(serve.pid, []):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if "run.py" in Path(f"/proc/{pid}/cmdline").read_text():
            fields = stat.rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    raise AssertionError("no API worker found")


def test_slow_clients_leave_everyone_else_served(patient):
    url, key, _ = patient
    http = requests.Session()
    http.headers["Authorization"] = f"Bearer {key}"
    with slow_clients(port_of(url), seconds=25) as attack:
        deadline = time.monotonic() + 60
        while len(attack["opened"]) < 174 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(attack["opened"]) == 174  # 100 slow heads, 24 slow bodies, 50 idle
        answered = []
        for _ in range(10):
            # Each within 5 s, while every slow connection is open.
            health = requests.get(url + "/v1/healthz", timeout=5)
            models = http.get(url + "/v1/models", timeout=5)
            job = http.post(url + "/v1/jobs", json={"model": "absent", "inputs": [[1]]}, timeout=5)
            answered.append((health.status_code, models.status_code, job.status_code))
        # Nothing was cut short: the service held all of them while serving the rest.
        assert attack["errors"] == []
    assert answered == [(200, 200, 422)] * 10
    assert "no ready model" in job.json()["_issues"]["model"]


def test_a_16_mb_request_line_costs_next_to_nothing(patient):
    url, _, process = patient
    before = api_worker_cpu_seconds(process)
    for _ in range(3):
        line = b"GET /v1/predictions?where=" + b"a" * (16 * 1024 * 1024) + b" HTTP/1.1\r\n"
        status, headers, message = refusal(exchange(url, line + b"Host: sibyl\r\n\r\n"))
        assert (status, message) == (414, "the URL is longer than 65536 bytes")
        assert headers["content-type"] == "application/json"
    # It was 17-22 s of CPU for one such line under gunicorn's parser.
    assert api_worker_cpu_seconds(process) - before < 1.5
    assert requests.get(url + "/v1/healthz", timeout=10).status_code == 200


def test_heads_and_bodies_out_of_bounds_get_json_refusals(patient):
    url, key, _ = patient
    many = b"".join(b"X-Header-%d: value\r\n" % i for i in range(5000))
    status, _, message = refusal(exchange(url, b"GET /v1/healthz HTTP/1.1\r\n" + many + b"\r\n"))
    assert (status, message) == (431, "the headers exceed 65536 bytes")
    huge = b"X-Header: " + b"v" * 200_000
    status, _, message = refusal(exchange(url, b"GET /v1/healthz HTTP/1.1\r\n" + huge))
    assert (status, message) == (431, "the request line and headers exceed 131072 bytes")
    status, _, message = refusal(exchange(url, b"NOT HTTP AT ALL\r\n\r\n"))
    assert (status, message) == (400, "the request is not valid HTTP/1.1")
    # A declared body past the route's limit is refused before a byte of it is read.
    declared = b"POST /v1/jobs HTTP/1.1\r\nHost: sibyl\r\nContent-Length: 900000000\r\n"
    status, headers, message = refusal(exchange(url, declared + b"X-Request-ID: big-1\r\n\r\n"))
    assert (status, message) == (413, "the body is larger than 8388608 bytes")
    # Refusals have request ids like every answer (the client's, or a new one), and
    # /metrics counts them.
    assert headers["x-request-id"] == "big-1"
    status, headers, _ = refusal(exchange(url, b"NOT HTTP AT ALL\r\n\r\n"))
    assert status == 400 and len(headers["x-request-id"]) == 32
    scraped = requests.get(url + "/metrics", headers={"Authorization": f"Bearer {key}"}, timeout=30)
    refused = {
        (sample.labels["method"], sample.labels["status"]): sample.value
        for family in text_string_to_metric_families(scraped.text)
        for sample in family.samples
        if sample.name == "sibyl_http_requests_total" and sample.labels["route"] == "(front)"
    }
    assert refused[("POST", "413")] >= 1 and refused[("-", "400")] >= 2
    assert refused[("GET", "431")] >= 2

    def post_spaces(path: str, megabytes: int) -> int:
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        data = b" " * (megabytes * 1024 * 1024)
        return requests.post(url + path, data=data, headers=headers, timeout=60).status_code

    # Sent whole, the answer arrives though the body was not read.
    assert post_spaces("/v1/jobs", 9) == 413
    # Model uploads may be larger: 10 MB reach the app, which wants a multipart form.
    assert post_spaces("/v1/models", 10) == 415
    # Keep-alive still works for well-behaved clients.
    session = requests.Session()
    assert [session.get(url + "/v1/healthz", timeout=10).status_code for _ in range(20)] == [
        200
    ] * 20


def test_deadlines_and_the_buffer_cap(impatient):
    url, key, _ = impatient
    began = time.monotonic()
    status, _, message = refusal(exchange(url, b"GET /v1/healthz HTTP/1.1\r\nHost: sib"))
    assert (status, message) == (408, "the request line and headers took longer than 2 s")
    assert time.monotonic() - began < 30
    head = b"POST /v1/jobs HTTP/1.1\r\nHost: sibyl\r\nContent-Length: 100\r\n\r\n{"
    status, _, message = refusal(exchange(url, head))
    assert (status, message) == (408, "the request body took longer than 2 s")
    # A connection that never sends a byte is closed without an answer.
    assert exchange(url, b"") == b""

    # Bodies still arriving hold at most MAX_BUFFERED_MB (1 MB here) in all.
    part = b"POST /v1/jobs HTTP/1.1\r\nHost: sibyl\r\nContent-Length: 700000\r\n\r\n"
    first = socket.create_connection(("127.0.0.1", port_of(url)), timeout=30)
    first.sendall(part + b" " * 600_000)  # 100,000 bytes short: it waits for them
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # until the first body is buffered
        status, headers, message = refusal(exchange(url, part + b" " * 600_000))
        if status != 408:
            break
    assert status == 503 and headers["retry-after"] == "1"
    assert message == "too many request bodies are arriving at once; retry later"
    first.close()
    # With the first gone, its bytes are released: a whole body is served again.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        answer = requests.post(
            url + "/v1/jobs",
            data=b" " * 600_000,
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
            timeout=10,
        )
        if answer.status_code != 503:
            break
        time.sleep(0.2)
    assert answer.status_code == 400  # spaces are not JSON: the app read the body
