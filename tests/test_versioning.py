"""API versions: chosen by URL, ?version= or Accept; a second version served beside the
first from one process, with a renamed field; deprecation headers."""

import pytest
import requests
from conftest import wait_until_idle

SETOSA = [5.1, 3.5, 1.4, 0.2]
VERSIONS = {
    "1": {"deprecated": "2026-06-01", "sunset": "2027-06-01T12:00:00"},
    "2": {"renamed": {"jobs": {"model": "model_name", "tags": "labels", "status": "state"}}},
}


@pytest.fixture(scope="module")
def versioned_server(start_server):
    return start_server({"API_VERSIONS": VERSIONS})


@pytest.fixture
def server(versioned_server, db, demo_models):
    yield versioned_server
    wait_until_idle(db)


def get(server, path, **kwargs):
    headers = {"Authorization": f"Bearer {server.key('admin')}", **kwargs.pop("headers", {})}
    return requests.get(server.url + path, headers=headers, timeout=30, **kwargs)


def post(server, path, body, **kwargs):
    headers = {"Authorization": f"Bearer {server.key('admin')}"}
    return requests.post(server.url + path, json=body, headers=headers, timeout=30, **kwargs)


def test_two_versions_of_jobs_side_by_side(server):
    created = post(
        server, "/v2/jobs?wait=30", {"model_name": "iris", "inputs": [SETOSA], "labels": {"a": "b"}}
    )
    assert created.status_code == 201, created.text
    answer = created.json()
    assert answer["model_name"] == "iris" and answer["labels"] == {"a": "b"}
    assert "model" not in answer and "tags" not in answer
    assert answer["predictions"][0]["label"] == "setosa"
    assert created.headers["API-Version"] == "2"
    assert created.headers["Location"].startswith(server.url + "/v2/jobs/")
    job_id = answer["_id"]

    v1 = get(server, f"/v1/jobs/{job_id}").json()
    v2 = get(server, f"/v2/jobs/{job_id}").json()
    assert (v1["model"], v1["tags"]) == ("iris", {"a": "b"})
    assert (v2["model_name"], v2["labels"]) == ("iris", {"a": "b"})
    assert "model" not in v2 and v2["state"] == v1["status"] == "succeeded"
    # Everything else is the same document.
    assert {k: v for k, v in v1.items() if k not in ("model", "tags", "status")} == {
        k: v for k, v in v2.items() if k not in ("model_name", "labels", "state")
    }
    # Other resources are the same in both.
    assert get(server, "/v2/models").json()["_items"] == get(server, "/v1/models").json()["_items"]


def test_a_version_filters_sorts_and_projects_on_its_own_names(server):
    for tag in ("x", "y"):
        created = post(
            server,
            "/v2/jobs?wait=30",
            {"model_name": "iris", "inputs": [SETOSA], "labels": {"t": tag}},
        )
        assert created.status_code == 201, created.text
    found = get(server, "/v2/jobs", params={"where": '{"labels.t": "y"}'}).json()["_items"]
    assert [job["labels"] for job in found] == [{"t": "y"}]
    found = get(server, "/v2/jobs", params={"where": '{"$or": [{"model_name": "iris"}]}'}).json()[
        "_items"
    ]
    assert len(found) == 2
    projected = get(server, "/v2/jobs", params={"projection": '{"model_name": 1}'}).json()["_items"]
    assert projected and all(
        set(job) & {"model_name", "state"} == {"model_name"} for job in projected
    )
    ordered = get(server, "/v2/jobs", params={"sort": "-state,-_created"})
    assert ordered.status_code == 200, ordered.text
    assert [job["labels"] for job in ordered.json()["_items"]] == [{"t": "y"}, {"t": "x"}]
    listed = get(server, "/v2/jobs", params={"sort": '[("state", 1), ("_created", 1)]'})
    assert [job["labels"] for job in listed.json()["_items"]] == [{"t": "x"}, {"t": "y"}]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("where", '{"$or": 5}'),
        ("where", '{"$and": null}'),
        ("sort", "[(1, -1)]"),
        ("sort", "[(None, 1)]"),
        ("projection", "[1]"),
    ],
)
def test_a_malformed_query_in_a_renaming_version_is_a_400(server, name, value):
    # Renaming must not trip on what the request checks refuse (these were 500s).
    for version in ("v1", "v2"):
        answer = get(server, f"/{version}/jobs", params={name: value})
        assert answer.status_code == 400, (version, answer.text)
        assert answer.json()["_error"]["message"]


def test_a_field_under_its_version_1_name_is_unknown_in_version_2(server, db):
    refused = post(server, "/v2/jobs", {"model": "iris", "inputs": [SETOSA]})
    assert refused.status_code == 422
    assert refused.json()["_issues"] == {"model": "unknown field (version 2 calls it model_name)"}
    assert db.jobs.count_documents({}) == 0
    # In a query too: where, projection and sort.
    for name, value, field, calls in [
        ("where", '{"tags.t": "y"}', "tags", "labels"),
        ("where", '{"$or": [{"model": "iris"}]}', "model", "model_name"),
        ("projection", '{"status": 1}', "status", "state"),
        ("sort", "-status", "status", "state"),
        ("sort", '[("status", 1)]', "status", "state"),
    ]:
        answer = get(server, "/v2/jobs", params={name: value})
        assert answer.status_code == 400, (name, value, answer.text)
        assert answer.json()["_error"]["message"] == (
            f"{name}: unknown field {field!r} (version 2 calls it {calls})"
        )
        assert get(server, "/v1/jobs", params={name: value}).status_code == 200


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/v1/jobs?version=2", {}),
        ("/v1/jobs", {"Accept": "application/json; version=2"}),
        ("/v2/jobs?version=2", {"Accept": "application/json; version=2"}),
    ],
)
def test_version_chosen_by_query_or_accept_header(server, path, headers):
    assert (
        post(server, "/v1/jobs?wait=30", {"model": "iris", "inputs": [SETOSA]}).status_code == 201
    )
    answer = get(server, path, headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.headers["API-Version"] == "2"
    assert "model_name" in answer.json()["_items"][0]


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        ("/v3/jobs", {}, 404),
        ("/vx/models", {}, 404),
        ("/v1/jobs?version=3", {}, 404),
        ("/v1/jobs", {"Accept": "application/json; version=3"}, 406),
        ("/v1/jobs?version=1", {"Accept": "application/json; version=2"}, 400),
        ("/v1/jobs?version=1&version=2", {}, 400),
        ("/v2/jobs?version=1", {}, 400),
        ("/v2/jobs", {"Accept": "application/json; version=1"}, 400),
    ],
)
def test_unknown_or_disagreeing_versions_are_refused(server, path, headers, status):
    answer = get(server, path, headers=headers)
    assert answer.status_code == status
    message = answer.json()["_error"]["message"]
    assert any(
        words in message for words in ("versions: 1, 2", "disagree", "more than once", "URL names")
    ), message


def test_a_deprecated_version_says_so(server):
    old = get(server, "/v1/models")
    assert old.headers["API-Version"] == "1"
    assert old.headers["Deprecation"] == "@1780272000"  # 2026-06-01T00:00:00Z
    assert old.headers["Sunset"] == "Tue, 01 Jun 2027 12:00:00 GMT"
    new = get(server, "/v2/models")
    assert "Deprecation" not in new.headers and "Sunset" not in new.headers
    # Errors say their version too.
    assert get(server, "/v1/jobs/" + "0" * 24).headers["API-Version"] == "1"


def test_the_default_app_serves_version_1_only(live_server):
    answer = requests.get(live_server.url + "/v1/healthz", timeout=5)
    assert answer.headers["API-Version"] == "1" and "Deprecation" not in answer.headers
    assert requests.get(live_server.url + "/v2/healthz", timeout=5).status_code == 404


@pytest.mark.parametrize(
    ("versions", "message"),
    [
        ({"2": {}}, "must declare '1'"),
        ({"1": {"renamed": {"jobs": {"model": "m"}}}}, "renames nothing"),
        ({"1": {}, "2": {"sunset": "soon"}}, "not an ISO 8601 date"),
        ({"1": {}, "2": {"colour": "red"}}, "unknown keys"),
    ],
)
def test_bad_version_settings_stop_the_start(start_server, versions, message):
    with pytest.raises(SystemExit, match=message):
        start_server({"API_VERSIONS": versions})
