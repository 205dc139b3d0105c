"""Rate limits: per verified key and role, per address without a valid key, scoped
limits for the costly routes, 429s that say which, and counts shared across workers."""

import subprocess
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from conftest import Api, child_processes, wait_until_idle
from limits import parse
from limits.strategies import FixedWindowRateLimiter

import settings
from service.api.rate_limits import MemoryCounters, MongoDBCounters, storage_for
from service.app import create_app
from service.store.embedded_db import free_port
from service.store.keys import new_key

SETOSA = [5.1, 3.5, 1.4, 0.2]


def rates(**changed: str) -> dict:
    return {"RATE_LIMITS": {**settings.DEFAULT_RATE_LIMITS, **changed}}


@pytest.fixture(scope="module")
def limited(start_server):
    """An app whose clients may make 5 requests a minute, analysts 7, callers without a
    valid key 3 per address; uploads 2 an hour, jobs 5 a minute."""
    return start_server(
        rates(
            client="5/minute",
            analyst="7/minute",
            anonymous="3/minute",
            uploads="2/hour",
            jobs="5/minute",
        )
    )


def fresh(server, role: str) -> Api:
    """A client with a key of its own: its buckets start empty."""
    return server.api(role, f"{role}-{uuid.uuid4().hex[:8]}")


def statuses(client: Api, count: int, path: str = "/models") -> list[int]:
    return [client.get(path).status_code for _ in range(count)]


def test_two_clients_do_not_share_a_bucket(limited, db):
    alice, bob = fresh(limited, "client"), fresh(limited, "client")
    assert statuses(alice, 6) == [200] * 5 + [429]
    assert statuses(bob, 5) == [200] * 5  # alice's requests spent nothing of bob's
    # Each role has its own rate; each key its own count of it.
    analyst = fresh(limited, "analyst")
    answer = analyst.get("/models")
    assert answer.headers["RateLimit-Limit"] == "7"
    assert answer.headers["RateLimit-Remaining"] == "6"
    assert fresh(limited, "admin").get("/models").status_code == 200


def test_a_wrong_key_does_not_spend_anyones_quota(limited, db):
    carol = fresh(limited, "client")
    key_id = carol.key.split("_")[1]
    wrong_secret = f"sibyl_{key_id}_{'x' * 43}"
    guesses = [
        Api(limited.url + "/v1", key=wrong_secret).get("/models").status_code for _ in range(5)
    ]
    assert guesses == [401, 401, 401, 429, 429]  # counted per address, slowed
    refused = Api(limited.url + "/v1", key=wrong_secret).get("/models")
    assert "without a valid API key" in refused.json()["_error"]["message"]
    # carol's own key still has its whole quota.
    first = carol.get("/models")
    assert first.status_code == 200
    assert first.headers["RateLimit-Remaining"] == "4"


def test_requests_to_unknown_routes_are_counted_too(start_server, db):
    server = start_server(rates(anonymous="2/minute"))
    nobody = server.api(None)
    assert statuses(nobody, 3, "/no-such-route") == [401, 401, 429]
    assert nobody.get("/healthz").status_code == 200  # probes are never counted


def test_429_carries_its_headers_and_names_the_limit(limited, db):
    dave = fresh(limited, "client")
    answers = [dave.get("/models") for _ in range(6)]
    remaining = [a.headers["RateLimit-Remaining"] for a in answers[:5]]
    assert remaining == ["4", "3", "2", "1", "0"]
    for answer in answers:
        assert answer.headers["RateLimit-Limit"] == "5"
        assert 1 <= int(answer.headers["RateLimit-Reset"]) <= 60
    refused = answers[-1]
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert refused.headers["Retry-After"] == refused.headers["RateLimit-Reset"]
    assert refused.headers["RateLimit-Remaining"] == "0"
    assert "Retry-After" not in answers[0].headers
    body = refused.json()
    assert body["_status"] == "ERR" and body["_error"]["code"] == 429
    key_id = dave.key.split("_")[1]
    assert body["_error"]["message"] == (
        f"rate limit exceeded: 5 requests per minute for key {key_id} (role client); "
        f"retry in {refused.headers['Retry-After']} s"
    )


def test_headers_show_the_limit_with_the_least_left(start_server, db):
    server = start_server(rates(client="100/second,4/minute"))
    grace = fresh(server, "client")
    answers = [grace.get("/models") for _ in range(5)]
    assert [a.headers["RateLimit-Limit"] for a in answers] == ["4"] * 5
    assert [a.headers["RateLimit-Remaining"] for a in answers] == ["3", "2", "1", "0", "0"]
    assert answers[-1].status_code == 429
    assert "4 requests per minute" in answers[-1].json()["_error"]["message"]


def test_health_probes_are_never_limited(start_server, db):
    server = start_server(rates(anonymous="1/minute"))
    for _ in range(5):
        for probe in ("/healthz", "/readyz"):
            answer = server.api(None).get(probe)
            assert answer.status_code == 200
            assert "RateLimit-Limit" not in answer.headers


def test_model_uploads_have_a_limit_of_their_own(limited, db):
    admin = fresh(limited, "admin")
    # Bodies refused after the limiter still count: the limit is on attempts.
    uploads = [admin.post("/models", data="x").status_code for _ in range(3)]
    assert uploads == [415, 415, 429]
    refused = admin.post("/models", data="x")
    assert refused.json()["_error"]["message"].startswith(
        "rate limit exceeded: 2 model uploads per hour for key"
    )
    assert 3000 < int(refused.headers["Retry-After"]) <= 3600
    assert admin.get("/models").status_code == 200  # other requests go on


def test_jobs_count_one_by_one_and_refused_jobs_count_nothing(limited, db, demo_models):
    erin = fresh(limited, "client")
    job = {"model": "iris", "inputs": [SETOSA]}
    unknown = erin.post("/jobs", json=[{"model": "no-such-model", "inputs": [SETOSA]}] * 4)
    assert unknown.status_code == 422, unknown.text  # stored nothing, charged nothing
    assert erin.post("/jobs", json=[job] * 3).status_code == 201  # 3 of 5
    assert erin.post("/jobs", json=[job] * 3).status_code == 201  # room for one: 6 of 5
    refused = erin.post("/jobs", json=job)
    assert refused.status_code == 429
    assert "5 jobs submitted per minute" in refused.json()["_error"]["message"]
    wait_until_idle(db)


def test_without_authentication_there_are_no_rate_limits(start_server, db):
    server = start_server({"AUTH": False, **rates(anonymous="1/minute", admin="1/minute")})
    answers = [server.api(None).get("/models") for _ in range(4)]
    assert [a.status_code for a in answers] == [200] * 4
    assert "RateLimit-Limit" not in answers[-1].headers


def test_off_turns_them_off(start_server, db):
    server = start_server({"RATE_LIMITING": False, **rates(client="1/minute")})
    assert statuses(fresh(server, "client"), 3) == [200] * 3


@pytest.mark.parametrize(
    "rate, said",
    [("lots", "client='lots' is not a rate"), ("5/fortnight", "client='5/fortnight'")],
)
def test_a_rate_that_does_not_parse_stops_the_start(test_settings, rate, said):
    with pytest.raises(SystemExit, match=said):
        create_app({**test_settings, **rates(client=rate)})


def test_the_environment_variable_is_read_over_the_defaults(monkeypatch):
    monkeypatch.setenv("SIBYL_RATE_LIMITS", "client=100/second ; analyst=20/second,900/hour;")
    read = settings._rate_limits("SIBYL_RATE_LIMITS", settings.DEFAULT_RATE_LIMITS)
    assert read == {
        **settings.DEFAULT_RATE_LIMITS,
        "client": "100/second",
        "analyst": "20/second,900/hour",
    }
    monkeypatch.setenv("SIBYL_RATE_LIMITS", "clients=100/second")
    with pytest.raises(SystemExit, match="names among admin, client"):
        settings._rate_limits("SIBYL_RATE_LIMITS", settings.DEFAULT_RATE_LIMITS)


# --- where the counts live ------------------------------------------------------------


def test_memory_counts_start_no_thread_and_drop_ended_windows():
    """limits' MemoryStorage starts a timer thread after counts (one every few requests
    under load); these counters sweep in the request instead, at most once a minute."""
    storage = MemoryCounters()
    windows = FixedWindowRateLimiter(storage)
    item = parse("3/second")
    time.sleep(0.05)  # the storage's first timer (started by MemoryStorage) has ended
    threads = threading.active_count()
    assert [windows.hit(item, "a") for _ in range(4)] == [True, True, True, False]
    assert threading.active_count() == threads
    windows.hit(item, "b")
    time.sleep(1.1)
    assert windows.hit(item, "a")  # a new window
    storage.next_sweep = 0  # due
    windows.hit(item, "c")
    assert set(storage.storage) == {item.key_for("a"), item.key_for("c")}  # b's was dropped


def test_mongodb_counters_start_a_new_window_when_one_ends(database):
    """SecantusDB compares against `$$NOW` wrongly; limits' own storage never reset."""
    config = {
        "RATE_LIMIT_STORAGE": "mongodb",
        "MONGO_URI": database.uri,
        "MONGO_DBNAME": "sibyl_rate_limit_units",
        "DB_TIMEOUT_MS": 2000,
    }
    storage = storage_for(config)
    assert isinstance(storage, MongoDBCounters)
    key = f"window-{uuid.uuid4().hex}"
    assert [storage.incr(key, expiry=1) for _ in range(3)] == [1, 2, 3]
    time.sleep(1.2)
    assert storage.incr(key, expiry=1, amount=2) == 2
    assert storage.get(key) == 2
    assert storage.counters.name == "rate_limits"  # not Sibyl's own "counters"


def gunicorn_workers(master_pid: int) -> list[int]:
    """The processes gunicorn forked (`run.py serve` with MONGO_URI set is the master)."""
    return child_processes().get(master_pid, [])


def serve_two_workers(run_py, database, tmp_path, storage: str, limit: int):
    """`run.py serve` under gunicorn with 2 workers, on the session's database: (the
    process, its URL, its admin key) once both workers have built the app."""
    port = free_port()
    admin_key = new_key()[1]
    env = {
        "MONGO_URI": database.uri,
        "SIBYL_DB_NAME": f"sibyl_rate_limits_{storage}_{uuid.uuid4().hex[:6]}",
        "SIBYL_PORT": str(port),
        "SIBYL_WEB_WORKERS": "2",
        "SIBYL_DEMO_MODELS": "0",
        "SIBYL_ADMIN_KEY": admin_key,
        "SIBYL_MODEL_CACHE_DIR": str(tmp_path / "models"),
        "SIBYL_RATE_LIMITS": f"admin={limit}/hour",
        "SIBYL_RATE_LIMIT_STORAGE": storage,
    }
    log_path = tmp_path / f"serve-{storage}.log"
    with open(log_path, "wb") as log:
        process = run_py("serve", env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        assert process.poll() is None, log_path.read_text()
        assert time.monotonic() < deadline, "the API did not start"
        workers = gunicorn_workers(process.pid)
        # A freshly forked worker has one thread; one that built the app has PyMongo's too.
        built = [w for w in workers if len(list(Path(f"/proc/{w}/task").iterdir())) > 1]
        try:
            healthy = requests.get(url + "/v1/healthz", timeout=5).status_code == 200
        except requests.RequestException:  # not listening yet, or slow on a loaded machine
            healthy = False
        if healthy and len(built) == 2:
            break
        time.sleep(0.2)
    time.sleep(0.5)
    return process, url, admin_key


def spend(url: str, key: str, count: int) -> list[int]:
    """count requests, each on a new connection (so both workers take some), 8 at a time."""

    def one(_):
        answer = requests.get(
            url + "/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=30
        )
        return answer.status_code

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(count)))


def test_with_mongodb_storage_two_gunicorn_workers_share_one_limit(run_py, database, tmp_path):
    limit = 12
    process, url, key = serve_two_workers(run_py, database, tmp_path, "mongodb", limit)
    shared = spend(url, key, 40)
    process.terminate()
    process.wait(30)
    assert shared.count(200) == limit and shared.count(429) == 40 - limit
    # The same load with counts in each worker's memory: each worker lets the key make
    # its own `limit` requests, which shows both workers took requests above.
    process, url, key = serve_two_workers(run_py, database, tmp_path, "memory", limit)
    apart = spend(url, key, 40)
    process.terminate()
    process.wait(30)
    assert limit < apart.count(200) <= 2 * limit
