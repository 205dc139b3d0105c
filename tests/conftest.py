"""Test fixtures: one real SecantusDB server per session, apps served over real HTTP.

Each test starts from empty collections (indexes kept): the server grows slower
as state accumulates, and restarting it per test would cost seconds.
"""

import threading
from collections.abc import Callable, Iterator

import pymongo
import pytest
import requests
from werkzeug import serving

from service import create_app
from service.embedded_db import EmbeddedDatabase

TEST_DB_NAME = "sibyl_test"


class Api:
    """A tiny HTTP client bound to one server's /v1 prefix.

    Authentication arrives later as one keyword: Api(url, key=...).
    """

    def __init__(self, base_url: str, headers: dict | None = None):
        self.base_url = base_url
        self.session = requests.Session()
        self.session.headers.update(headers or {})

    def request(self, method: str, path: str, **kwargs) -> requests.Response:
        kwargs.setdefault("timeout", 60)
        return self.session.request(method, self.base_url + path, **kwargs)

    def get(self, path: str, **kwargs) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs) -> requests.Response:
        return self.request("POST", path, **kwargs)

    def patch(self, path: str, **kwargs) -> requests.Response:
        return self.request("PATCH", path, **kwargs)

    def delete(self, path: str, **kwargs) -> requests.Response:
        return self.request("DELETE", path, **kwargs)


class LiveServer:
    """A Sibyl app served by Werkzeug on a free port, in a background thread."""

    def __init__(self, app):
        self.app = app
        self.server = serving.make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def api(self, **kwargs) -> Api:
        return Api(self.url + "/v1", **kwargs)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="session")
def database(tmp_path_factory) -> Iterator[EmbeddedDatabase]:
    """The session's database server, over a real socket."""
    server = EmbeddedDatabase(tmp_path_factory.mktemp("secantusdb")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def start_server(database) -> Iterator[Callable[..., LiveServer]]:
    """Start extra servers with their own settings (closed at session end)."""
    servers: list[LiveServer] = []

    def start(overrides: dict | None = None, mongo_uri: str | None = None) -> LiveServer:
        config = {"MONGO_URI": mongo_uri or database.uri, "MONGO_DBNAME": TEST_DB_NAME}
        config.update(overrides or {})
        server = LiveServer(create_app(config))
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def live_server(start_server) -> LiveServer:
    """The default app, served once for the whole session."""
    return start_server()


@pytest.fixture
def db(database) -> Iterator[pymongo.database.Database]:
    """The test database, emptied before each test (indexes stay)."""
    client = pymongo.MongoClient(database.uri, tz_aware=True)
    test_db = client[TEST_DB_NAME]
    for name in test_db.list_collection_names():
        test_db[name].delete_many({})
    yield test_db
    client.close()


@pytest.fixture
def api(live_server, db) -> Api:
    """An HTTP client of the default app, on an empty database."""
    return live_server.api()
