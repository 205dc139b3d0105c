"""Health probes, and 503s while the database is down."""

import pytest

from service.store.embedded_db import EmbeddedDatabase

# Give up on an unreachable database after half a second.
FAST_TIMEOUT = {"MONGO_OPTIONS": {"serverSelectionTimeoutMS": 500, "connectTimeoutMS": 500}}


def test_healthz_answers_without_the_database(api):
    response = api.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_pings_the_database(api):
    response = api.get("/readyz")
    assert response.status_code == 200
    assert response.json()["database"] == "ok"


@pytest.fixture
def own_database(tmp_path):
    """A database server this test may stop and restart."""
    server = EmbeddedDatabase(tmp_path / "db").start()
    yield server
    server.stop()


def test_database_down_is_503_everywhere_then_recovers(start_server, own_database):
    api = start_server(FAST_TIMEOUT, mongo_uri=own_database.uri).api()
    assert api.get("/jobs").status_code == 200

    own_database.stop()
    ready = api.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["status"] == "unavailable"
    assert ready.json()["database"]  # names the driver's error
    for method, path, body in [
        ("GET", "/jobs", None),
        ("GET", '/predictions?where={"label": "a"}', None),
        ("POST", "/jobs", {"model": "iris", "inputs": [[1.0, 2.0, 3.0, 4.0]]}),
    ]:
        response = api.request(method, path, json=body)
        assert response.status_code == 503, (method, path, response.text)
        assert response.json()["_error"]["code"] == 503
        assert "database unavailable" in response.json()["_error"]["message"]
        assert response.headers["Retry-After"]

    # Same port, same data directory: the service reconnects by itself.
    own_database.start()
    assert api.get("/readyz").status_code == 200
    assert api.get("/jobs").json()["_items"] == []  # nothing half-written by the outage
