"""Access control: keys, roles on every route, owners isolated through every route."""

import json
import logging
import subprocess
import sys
import time

import pytest
from conftest import ROOT, TEST_DB_NAME, Api, check_isolation, wait_for

from schemas import DOMAIN
from service.store.keys import Keys

SETOSA = [5.1, 3.5, 1.4, 0.2]
ROLES = ("admin", "client", "analyst")
EVERYONE = set(ROLES)


@pytest.fixture
def alice(live_server, api, demo_models) -> Api:
    return live_server.api("client", "alice")


@pytest.fixture
def bob(live_server, api) -> Api:
    return live_server.api("client", "bob")


def submit(client: Api, tags: dict | None = None) -> dict:
    response = client.post(
        "/jobs?wait=30", json={"model": "iris", "inputs": [SETOSA], "tags": tags or {}}
    )
    assert response.status_code == 201, response.text
    assert response.json()["status"] == "succeeded"
    return response.json()


# --- 401: who are you ----------------------------------------------------------------


def test_every_kind_of_bad_key_gets_the_same_401(live_server, api):
    revoked = live_server.app.extensions["sibyl"].keys
    _, revoked_key = revoked.create("client", "gone")
    revoked_id = revoked_key.split("_")[1]
    assert live_server.api(None).session.get(live_server.url + "/v1/jobs").status_code == 401
    revoked.revoke(revoked_id)
    headers = {
        "none": {},
        "wrong scheme": {"Authorization": f"Basic {revoked_key}"},
        "malformed": {"Authorization": "Bearer not-a-key"},
        "unknown": {"Authorization": f"Bearer sibyl_abcdefghjk_{'x' * 43}"},
        "wrong secret": {"Authorization": f"Bearer {api.key[:-4]}AAAA"},
        "revoked": {"Authorization": f"Bearer {revoked_key}"},
    }
    answers = set()
    for name, header in headers.items():
        response = live_server.api(None).get("/jobs", headers=header)
        assert response.status_code == 401, name
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="sibyl"', name
        assert "Authorization: Bearer <key>" in response.json()["_error"]["message"]
        answers.add((response.text, response.headers["Content-Type"]))
    assert len(answers) == 1  # nothing tells the kinds apart


def test_failures_cost_the_same_lookup_whatever_the_key(live_server, api):
    """Same work, same time: each failure is one lookup by id and one comparison."""
    keys = Keys(live_server.app.extensions["sibyl"].keys.collection, cache_seconds=60)
    _, good = keys.create("client", "timed")
    keys.check(good)  # now remembered as valid
    calls = []
    find_one = keys.collection.find_one

    class Counting:
        def find_one(self, *args, **kwargs):
            calls.append(args[0])
            return find_one(*args, **kwargs)

    keys.collection = Counting()
    for presented in ("", "junk", f"sibyl_abcdefghjk_{'x' * 43}", good[:-3] + "abc"):
        calls.clear()
        assert keys.check(presented) is None
        assert len(calls) == 1, presented
    calls.clear()
    assert keys.check(good) is not None and calls == []  # success may be remembered


def test_unknown_routes_say_nothing_without_a_key(live_server, api):
    anonymous = live_server.api(None)
    assert anonymous.get("/no-such-route").status_code == 401
    assert api.get("/no-such-route").status_code == 404
    assert anonymous.get("/healthz").status_code == 200  # probes need no key


# --- 403: may you --------------------------------------------------------------------

# What each role may do, written from the issue, not from service/api/roles.py.
MATRIX = [
    ("GET", "/", EVERYONE),
    ("GET", "/jobs", EVERYONE),
    ("HEAD", "/jobs", EVERYONE),
    ("POST", "/jobs", {"admin", "client"}),
    ("GET", "/jobs/{job}", EVERYONE),
    ("PATCH", "/jobs/{job}", {"admin", "client"}),
    ("DELETE", "/jobs/{job}", {"admin", "client"}),
    ("GET", "/predictions", EVERYONE),
    ("GET", "/predictions/{prediction}", EVERYONE),
    ("GET", "/models", EVERYONE),
    ("POST", "/models", {"admin"}),
    ("GET", "/models/{model}", EVERYONE),
    ("PATCH", "/models/{model}", {"admin"}),
    ("DELETE", "/models/{model}", {"admin"}),
    ("GET", "/media/{file}", {"admin", "analyst"}),
    ("GET", "/keys", {"admin"}),
    ("POST", "/keys", {"admin"}),
    ("GET", "/keys/{key}", {"admin"}),
    ("DELETE", "/keys/{key}", {"admin"}),
]


def test_authorization_matrix(live_server, api, demo_models):
    job = submit(api)
    ids = {
        "job": job["_id"],
        "prediction": job["predictions"][0]["_id"],
        "model": demo_models["iris"]["_id"],
        "file": api.get(f"/models/{demo_models['iris']['_id']}").json()["file"]["file"][-24:],
        # A key made for the matrix: the admin's DELETE revokes it.
        "key": api.post("/keys", json={"role": "client", "name": "spare"}).json()["_id"],
    }
    revoked = live_server.app.extensions["sibyl"].keys
    _, revoked_key = revoked.create("admin", "revoked admin")
    revoked.revoke(revoked_key.split("_")[1])
    callers = {role: live_server.api(role) for role in ROLES}
    callers["nobody"] = live_server.api(None)
    callers["revoked"] = Api(live_server.url + "/v1", key=revoked_key)
    for method, path, allowed in MATRIX:
        url = path.format(**ids)
        for who, caller in callers.items():
            # Bodies that would change something are refused before (malformed); the
            # question here is only who gets past the door.
            response = caller.request(method, url, data="{", headers={"If-Match": "x"})
            if who in ("nobody", "revoked"):
                expected = {401}
            elif who in allowed:
                expected = None
            else:
                expected = {403}
            if expected is None:
                assert response.status_code not in (401, 403), (who, method, url, response.text)
            else:
                assert response.status_code in expected, (who, method, url, response.text)
    # Nothing was changed by the refused requests.
    assert api.get(f"/jobs/{job['_id']}").status_code == 200


def test_every_route_is_in_the_rights_table(live_server):
    """A route added later without a rule would be refused to everyone; this names it."""
    rights = live_server.app.extensions["rights"]
    missing = []
    for rule in live_server.app.url_map.iter_rules():
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            if rights.needed(rule.endpoint, method) is None:
                missing.append(f"{method} {rule.rule} ({rule.endpoint})")
    assert missing == []


def test_a_route_missing_from_the_table_is_refused_naming_the_table(start_server):
    server = start_server()

    @server.app.route("/v1/forgotten")
    def forgotten():
        return "secret"

    refused = server.api("admin").get("/forgotten")
    assert refused.status_code == 403
    message = refused.json()["_error"]["message"]
    assert "GET /v1/forgotten is refused to everyone" in message
    assert "no entry in the rights table" in message and "SERVICE_ROUTES" in message
    assert server.api(None).get("/forgotten").status_code == 401


def test_a_refusal_names_the_right_and_who_holds_it(live_server, api):
    refused = live_server.api("analyst").post("/jobs", json={"model": "iris", "inputs": [[1]]})
    assert refused.status_code == 403
    assert refused.json()["_error"]["message"] == (
        "the analyst role may not POST /v1/jobs (it needs jobs:write, which admin, client hold)"
    )


# --- keys ----------------------------------------------------------------------------


def test_keys_api_shows_the_secret_once_and_revokes(live_server, api):
    created = api.post("/keys", json={"role": "client", "name": "carol"})
    assert created.status_code == 201, created.text
    body = created.json()
    key, key_id = body["key"], body["_id"]
    assert key.startswith(f"sibyl_{key_id}_") and len(key) >= 6 + 10 + 1 + 43
    assert body["role"] == "client" and body["owner"] == "carol"
    carol = Api(live_server.url + "/v1", key=key)
    assert carol.get("/jobs").status_code == 200
    assert carol.get("/keys").status_code == 403
    listed = api.get("/keys").json()["_items"]
    shown = api.get(f"/keys/{key_id}").json()
    for document in [*listed, shown]:
        assert "key" not in document and "hash" not in document
    assert key not in json.dumps(listed)
    assert shown["last_used_at"] is not None  # carol's request
    assert api.delete(f"/keys/{key_id}").status_code == 204
    assert carol.get("/jobs").status_code == 401  # at once in this process
    assert api.get(f"/keys/{key_id}").json()["revoked"] is True
    assert api.delete("/keys/nosuchkey0").status_code == 404


@pytest.mark.parametrize(
    "body, field",
    [
        ({"role": "root", "name": "x"}, "role"),
        ({"role": "client"}, "name"),
        ({"role": "client", "name": ""}, "name"),
        ({"role": "client", "name": "x", "hash": "abc"}, "hash"),
        ({"role": "client", "name": "x", "_id": "abcdefghjk"}, "_id"),
    ],
)
def test_bad_key_requests_are_422_naming_the_field(api, body, field):
    response = api.post("/keys", json=body)
    assert response.status_code == 422
    assert field in response.json()["_issues"]


def test_cli_makes_lists_and_revokes_keys_seen_by_a_running_api_within_the_bound(
    live_server, database, api
):
    def run(*args: str) -> str:
        env = {"MONGO_URI": database.uri, "SIBYL_DB_NAME": TEST_DB_NAME, "PATH": "/usr/bin:/bin"}
        done = subprocess.run(
            [sys.executable, "run.py", "keys", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    made = run("create", "--role", "analyst", "--name", "dora").splitlines()
    key_id, key = json.loads(made[0])["id"], made[1]
    dora = Api(live_server.url + "/v1", key=key)
    assert dora.get("/jobs").status_code == 200
    assert dora.post("/jobs", json={"model": "iris", "inputs": [SETOSA]}).status_code == 403
    listing = run("list")
    assert key_id in listing and "analyst" in listing and key not in listing
    run("revoke", key_id)
    revoked_at = time.monotonic()
    wait_for(lambda: dora.get("/jobs").status_code == 401, 10, "the revocation")
    bound = live_server.app.config["KEY_CACHE_SECONDS"]
    assert time.monotonic() - revoked_at <= bound + 1.0
    assert "revoked" in run("list")


def test_auth_off_only_when_asked_and_warned(start_server, caplog):
    with caplog.at_level(logging.WARNING):
        start_server()
    assert "AUTHENTICATION IS OFF" not in caplog.text
    with caplog.at_level(logging.WARNING):
        server = start_server({"AUTH": False})
    assert "AUTHENTICATION IS OFF" in caplog.text
    assert server.api(None).get("/jobs").status_code == 200


# --- owners: a client sees only its own ---------------------------------------------


def test_a_client_never_sees_another_clients_jobs_or_predictions(live_server, alice, bob, api, db):
    mine = submit(alice, {"who": "alice"})
    theirs = submit(bob, {"who": "bob"})
    job_id, prediction_id = mine["_id"], mine["predictions"][0]["_id"]
    # Items: 404, not 403: existence is not told.
    assert bob.get(f"/jobs/{job_id}").status_code == 404
    assert bob.get(f"/jobs/{job_id}?wait=1").status_code == 404
    assert bob.get(f"/predictions/{prediction_id}").status_code == 404
    etag = alice.get(f"/jobs/{job_id}").json()["_etag"]
    if_match = {"If-Match": etag}
    assert bob.patch(f"/jobs/{job_id}", json={"tags": {}}, headers=if_match).status_code == 404
    assert bob.delete(f"/jobs/{job_id}", headers=if_match).status_code == 404
    assert alice.get(f"/jobs/{job_id}").json()["_etag"] == etag  # untouched
    # Lists, however asked.
    queries = [
        {},
        {"where": json.dumps({"owner": "alice"})},
        {"where": json.dumps({"$or": [{"owner": "alice"}, {"owner": "bob"}]})},
        {"where": json.dumps({"_id": job_id})},
        {"projection": json.dumps({"owner": 1})},
        {"sort": "-_created"},
    ]
    for params in queries:
        jobs = bob.get("/jobs", params=params).json()["_items"]
        assert {job["_id"] for job in jobs} <= {theirs["_id"]}, params
        predictions = bob.get("/predictions", params=params).json()["_items"]
        assert {p["_id"] for p in predictions} <= {theirs["predictions"][0]["_id"]}, params
    assert len(bob.get("/jobs").json()["_items"]) == 1
    embedded = bob.get("/predictions", params={"embedded": json.dumps({"job": 1})}).json()
    assert [p["job"] for p in embedded["_items"]] == [theirs["_id"]]  # (jobs are not embeddable)
    # Alice's job is untouched; admins and analysts see both.
    assert alice.get(f"/jobs/{job_id}").json()["tags"] == {"who": "alice"}
    for reader in (api, live_server.api("analyst")):
        assert len(reader.get("/jobs").json()["_items"]) == 2
    assert {job["owner"] for job in db.jobs.find()} == {"alice", "bob"}


@pytest.mark.parametrize("resource", list(DOMAIN))
def test_a_client_cannot_reach_another_clients_documents(live_server, api, db, resource):
    """Every resource of schemas/, those added later too: this test names none of them."""
    check_isolation(live_server, db, resource)


def test_analysts_read_everything_and_change_nothing(live_server, alice, api):
    job = submit(alice)
    analyst = live_server.api("analyst")
    assert analyst.get(f"/jobs/{job['_id']}").status_code == 200
    assert len(analyst.get("/predictions").json()["_items"]) == 1
    etag = analyst.get(f"/jobs/{job['_id']}").json()["_etag"]
    refused = analyst.patch(f"/jobs/{job['_id']}", json={"tags": {}}, headers={"If-Match": etag})
    assert refused.status_code == 403


def test_owner_cannot_be_set_or_changed_by_a_client(alice, db):
    claimed = alice.post("/jobs", json={"model": "iris", "inputs": [SETOSA], "owner": "bob"})
    assert claimed.status_code == 422
    assert "owner" in claimed.json()["_issues"]
    job = submit(alice)
    etag = alice.get(f"/jobs/{job['_id']}").json()["_etag"]
    changed = alice.patch(f"/jobs/{job['_id']}", json={"owner": "bob"}, headers={"If-Match": etag})
    assert changed.status_code == 422
    assert {j["owner"] for j in db.jobs.find()} == {"alice"}


def test_lease_tokens_are_shown_to_admins_only(queue_api, queueing_server, queue_demo_models):
    client = queueing_server.api("client", "erin")
    job = client.post("/jobs", json={"model": "iris", "inputs": [SETOSA]})
    assert job.status_code == 201, job.text
    job_id = job.json()["_id"]
    for params in ({}, {"projection": json.dumps({"lease": 1})}):
        shown = client.get(f"/jobs/{job_id}", params=params).json()
        assert "lease" not in shown
    assert "lease" not in client.get("/jobs").json()["_items"][0]
    assert "lease" in queue_api.get(f"/jobs/{job_id}").json()


def test_method_override_meets_the_same_door(live_server, alice, bob):
    """Eve honours X-HTTP-Method-Override: the rights are those of the method it names."""
    job = submit(alice)
    etag = alice.get(f"/jobs/{job['_id']}").json()["_etag"]
    delete = {"X-HTTP-Method-Override": "DELETE", "If-Match": etag}
    analyst = live_server.api("analyst")
    assert analyst.post(f"/jobs/{job['_id']}", headers=delete).status_code == 403
    assert bob.post(f"/jobs/{job['_id']}", headers=delete).status_code == 404
    assert alice.get(f"/jobs/{job['_id']}").status_code == 200
    put = {"X-HTTP-Method-Override": "PUT", "If-Match": etag}
    assert alice.post(f"/jobs/{job['_id']}", json={}, headers=put).status_code == 405


# --- found by an attacker's review ---------------------------------------------------


def test_waiting_on_a_job_one_cannot_see_answers_at_once(alice, bob, queueing_server):
    """A wait on an unknown id or another owner's job would hold a thread for nothing,
    and its length would tell when that job ends."""
    job = submit(alice)
    started = time.monotonic()
    assert bob.get(f"/jobs/{job['_id']}?wait=5").status_code == 404
    assert bob.get(f"/jobs/{'0' * 24}?wait=5").status_code == 404
    assert time.monotonic() - started < 2


def test_waiters_of_one_job_do_not_release_each_other(live_server, alice):
    from service.jobs.completions import Completions
    from service.jobs.events import JobEnded, JobEvents

    events = JobEvents()
    completions = Completions(events)
    job_id = __import__("bson").ObjectId()
    completions.expect([job_id])  # a POST ?wait=
    completions.expect([job_id])  # a GET ?wait= of the same job
    completions.release([job_id])  # the GET gives up
    events.ended(JobEnded(job_id, "succeeded", {"tags": {}}))
    waited = completions.wait(None, [job_id], timeout=0.1, local=True)
    assert waited[job_id].status == "succeeded"  # the POST still hears of it


def test_owners_are_not_shared_by_accident(api):
    first = api.post("/keys", json={"role": "client", "name": "frank"})
    assert first.status_code == 201
    again = api.post("/keys", json={"role": "client", "name": "frank"})
    assert again.status_code == 422 and "name the owner explicitly" in again.text
    rotated = api.post("/keys", json={"role": "client", "name": "frank-2", "owner": "frank"})
    assert rotated.status_code == 201 and rotated.json()["owner"] == "frank"
    # No client key may act as an admin's or analyst's owner.
    as_admin = api.post("/keys", json={"role": "client", "name": "x", "owner": "admin"})
    assert as_admin.status_code == 422 and "admin keys" in as_admin.json()["_issues"]["owner"]


@pytest.mark.parametrize(
    "body", [{"role": "client", "name": "\u0000"}, {"role": "client", "name": "a", "owner": "\t"}]
)
def test_key_names_are_printable_text(api, body):
    assert api.post("/keys", json=body).status_code == 422


def test_rights_only_admins_hold_are_checked_afresh(live_server):
    """Derived from the roles: what a revoked admin key must stop doing at once."""
    fresh = live_server.app.extensions["rights"].fresh
    assert fresh == {"keys:manage", "metrics:read", "models:write"}


def test_keys_are_made_from_json_only(api):
    body = '{"role": "client", "name": "text-plain"}'
    response = api.post("/keys", data=body, headers={"Content-Type": "text/plain"})
    assert response.status_code == 415


def test_managing_keys_checks_the_key_afresh(live_server, api):
    """A revoked admin key cannot act in another process during its cache window."""
    keys = live_server.app.extensions["sibyl"].keys
    _, key = keys.create("admin", "short-lived admin", owner="admin")
    admin = Api(live_server.url + "/v1", key=key)
    assert admin.get("/keys").status_code == 200  # now remembered as valid here
    # Revoked by another process: this one's memory is not told.
    keys.collection.update_one({"_id": key.split("_")[1]}, {"$set": {"revoked": True}})
    assert admin.post("/keys", json={"role": "client", "name": "minted"}).status_code == 401
    assert admin.get("/jobs").status_code == 401  # and the fresh read corrected the memory


def test_server_owned_fields_are_refused_even_as_null(alice, db):
    for field in ("owner", "lease", "status", "error", "queued_at"):
        body = {"model": "iris", "inputs": [SETOSA], field: None}
        response = alice.post("/jobs", json=body)
        assert response.status_code == 422, field
        assert field in response.json()["_issues"]
    assert db.jobs.count_documents({}) == 0


def test_predictions_hide_batch_bookkeeping_from_clients(alice, api):
    job = submit(alice)
    assert "lease" not in job  # the ?wait= answer either
    mine = alice.get("/predictions").json()["_items"][0]
    assert "batch" not in mine and "attempt" not in mine
    asked = alice.get("/predictions", params={"projection": json.dumps({"batch": 1})})
    assert "batch" not in asked.json()["_items"][0]
    assert "batch" in api.get(f"/predictions/{job['predictions'][0]['_id']}").json()


@pytest.mark.parametrize(
    "path, body",
    [
        ("/jobs", '{"model": "iris", "inputs": [[1, 2, 3, 4]], "tags": {"a": "\\ud800"}}'),
        ("/jobs", '{"model": "iris", "inputs": [[1, 2, 3, 4]], "tags": {"\\ud800": 1}}'),
        ("/jobs", '{"model": "\\ud800", "inputs": [[1, 2, 3, 4]]}'),
        ("/keys", '{"role": "client", "name": "\\ud800"}'),
    ],
)
def test_lone_surrogates_are_refused_not_a_500(api, db, path, body):
    response = api.post(path, data=body, headers={"Content-Type": "application/json"})
    assert response.status_code in (400, 422), response.text
    assert db.jobs.count_documents({}) == 0


def test_lone_surrogates_in_a_filter_are_a_400(api):
    response = api.get("/jobs", params={"where": '{"model": "\\ud800"}'})
    assert response.status_code == 400
    assert "Unicode" in response.json()["_error"]["message"]


def test_sibyl_admin_key_sets_the_admin_key(database, monkeypatch, tmp_path):
    import run
    import settings
    from service.store.keys import new_key

    monkeypatch.setattr(settings, "MONGO_DBNAME", "sibyl_admin_key_test")
    monkeypatch.setattr(settings, "ADMIN_KEY_FILE", str(tmp_path / "admin.key"))
    keys = Keys(run.database_of(database.uri).keys)
    keys.collection.delete_many({})
    _, chosen = new_key()
    monkeypatch.setenv("SIBYL_ADMIN_KEY", chosen)
    run.ensure_admin_key(database.uri)
    run.ensure_admin_key(database.uri)  # a restart: nothing new
    assert keys.check(chosen).role == "admin"
    assert keys.collection.count_documents({}) == 1
    assert not (tmp_path / "admin.key").exists()  # the operator holds it already
    monkeypatch.setenv("SIBYL_ADMIN_KEY", "too-short")
    with pytest.raises(SystemExit, match="SIBYL_ADMIN_KEY"):
        run.ensure_admin_key(database.uri)
