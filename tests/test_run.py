"""`python run.py serve` as `make run` starts it: embedded database, gunicorn, clean stop."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests
from conftest import child_processes, wait_for, wait_until_healthy

from service.store.embedded_db import free_port


def descendants(pid: int) -> set[int]:
    """All processes below pid."""
    children = child_processes()
    found, stack = set(), [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.add(child)
            stack.append(child)
    return found


def command_line(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture
def serve(tmp_path, run_py):
    """Start run.py serve with its data under tmp_path (stopped at the end)."""
    port = free_port()
    env = {
        "SIBYL_PORT": str(port),
        "SIBYL_DB_PATH": str(tmp_path / "db"),
        "SIBYL_MODEL_CACHE_DIR": str(tmp_path / "models"),
        "SIBYL_WEB_WORKERS": "1",
        "SIBYL_ADMIN_KEY_FILE": str(tmp_path / "admin.key"),
        "SIBYL_METRICS_DIR": str(tmp_path / "metrics"),
        "MONGO_URI": "",  # unset: the embedded database
    }

    def start():
        process = run_py("serve", env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        url = f"http://127.0.0.1:{port}"
        wait_until_healthy(url, process)
        return process, url

    start.env = env
    return start


def keyed(key: str) -> requests.Session:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {key}"
    return session


def test_serve_trains_demo_models_stops_cleanly_and_keeps_data(serve, tmp_path):
    process, url = serve()
    family = descendants(process.pid)
    assert len(family) >= 2  # the database and at least one API worker
    # First start: an admin key, in a file only its owner may read.
    key_file = tmp_path / "admin.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    admin_key = key_file.read_text().strip()
    assert requests.get(url + "/v1/jobs", timeout=10).status_code == 401
    http = keyed(admin_key)  # the README's examples send the key
    # The README's first example, against gunicorn and the embedded database.
    job = http.post(
        url + "/v1/jobs?wait=30",
        json={"model": "iris", "inputs": [[5.1, 3.5, 1.4, 0.2]]},
        timeout=40,
    )
    assert job.status_code == 201
    assert job.json()["status"] == "succeeded"
    assert job.json()["predictions"][0]["label"] == "setosa"
    digits = http.post(
        url + "/v1/jobs?wait=30", json={"model": "digits", "inputs": [[[0] * 8] * 8]}, timeout=40
    )
    assert digits.json()["status"] == "succeeded"
    # URLs up to SIBYL_MAX_URL_BYTES pass the front (gunicorn's own limit was 4 KiB); past
    # it, and past the body limit with a chunked body, the answers are JSON.
    ids = [f"{i:024x}" for i in range(600)]
    where = {"where": json.dumps({"job": {"$in": ids}})}
    assert http.get(url + "/v1/predictions", params=where, timeout=10).status_code == 200
    where = {"where": json.dumps({"job": {"$in": ids * 4}})}
    too_long = http.get(url + "/v1/predictions", params=where, timeout=10)
    assert too_long.status_code == 414
    assert too_long.json()["_error"]["message"] == "the URL is longer than 65536 bytes"
    chunked = (b" " * 65536 for _ in range(129))  # 8 MiB and a bit, without Content-Length
    too_large = http.post(
        url + "/v1/jobs", data=chunked, headers={"Content-Type": "application/json"}, timeout=30
    )
    assert too_large.status_code == 413
    assert too_large.json()["_error"]["message"] == "the body is larger than 8388608 bytes"

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    output = process.stdout.read()
    assert "embedded SecantusDB at mongodb://127.0.0.1:" in output
    assert "Sibyl API at http://127.0.0.1:" in output
    # Sibyl's lines, not TensorFlow's start-up notices, while the demo models train.
    assert "oneDNN" not in output and "cuInit" not in output and "absl" not in output
    # Only the process that started the database stops it, not an exiting API worker.
    assert output.count("stopping the embedded database") == 1
    assert output.count(admin_key) == 1  # printed once, never logged
    time.sleep(0.5)
    assert [pid for pid in family if alive(pid)] == []

    process, url = serve()
    jobs = http.get(url + "/v1/jobs", params={"sort": "_created"}, timeout=10).json()["_items"]
    assert [j["_id"] for j in jobs] == [job.json()["_id"], digits.json()["_id"]]
    models = http.get(url + "/v1/models", timeout=10).json()["_items"]
    assert sorted(m["name"] for m in models) == ["digits", "iris"]  # not trained twice
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=30) == 0
    # The second start found the admin key: no new one made, none printed.
    assert "admin API key" not in process.stdout.read()
    assert key_file.read_text().strip() == admin_key


def test_serve_restarts_its_embedded_database_when_it_dies(serve, tmp_path):
    """Found: a SIGKILLed embedded database stayed down and /v1/readyz answered 503
    until someone restarted it by hand. run.py serve now brings it back, on its data."""
    process, url = serve()
    key = (tmp_path / "admin.key").read_text().strip()
    http = keyed(key)
    first = http.post(
        url + "/v1/jobs?wait=30", json={"model": "iris", "inputs": [[5.1, 3.5, 1.4, 0.2]]}
    )
    assert first.json()["status"] == "succeeded"
    (database,) = [pid for pid in descendants(process.pid) if "secantus" in command_line(pid)]
    os.kill(database, signal.SIGKILL)
    wait_for(lambda: not alive(database), 30, "the database to die")
    # Until it is back, a request that needs it is a 503 with Retry-After, never a 500.
    answer = http.get(url + "/v1/jobs", timeout=30)
    assert answer.status_code in (200, 503), answer.text
    wait_for(
        lambda: requests.get(url + "/v1/readyz", timeout=10).status_code == 200,
        90,
        "/v1/readyz to answer 200 again",
    )
    job = http.get(url + f"/v1/jobs/{first.json()['_id']}", timeout=30)
    assert job.status_code == 200  # the same data
    again = http.post(
        url + "/v1/jobs?wait=30", json={"model": "iris", "inputs": [[5.1, 3.5, 1.4, 0.2]]}
    )
    assert again.status_code == 201 and again.json()["status"] == "succeeded"
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    assert "restarting it" in process.stdout.read()
