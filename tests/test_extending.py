"""The guide's recipes (docs/EXTENDING.md), done exactly as it shows them: its code blocks
are read from the page and built into test apps, which are checked through HTTP.

A field added to the jobs' schema is stored, returned, validated, filterable, sortable,
documented and offered by the pages' job form; a resource added to schemas/ is stored,
owned and isolated between clients, routed with its declared rights, documented and
browsable. A resource that does not say who owns it stops the start.
"""

import ast
import json
import re
import subprocess
import sys
from datetime import UTC, datetime

import pymongo
import pytest
import requests
from bson import ObjectId
from conftest import (
    ROOT,
    check_isolation,
    domain_with,
    emptied,
    guide_block,
    guide_experiments,
    restore_models,
    wait_until_idle,
)

import run
from service.app import create_app

SETOSA = [5.1, 3.5, 1.4, 0.2]
PRIORITY_DB_NAME = "sibyl_priority_test"


def guide_entries(where: str):
    """A guide block that lists entries of a dict or a list (`"name": value,` lines)."""
    code = guide_block(f"# schemas/jobs.py, in {where}")
    opening, closing = ("[", "]") if "allowed_filters" in where else ("{", "}")
    return ast.literal_eval(opening + code + closing)


def jobs_with_priority() -> dict:
    """The DOMAIN with the guide's field added to jobs: schema, filters, index."""
    domain = domain_with()
    jobs = domain["jobs"]
    jobs["schema"].update(guide_entries('JOBS["schema"]'))
    jobs["allowed_filters"] += guide_entries('JOBS["allowed_filters"]')
    jobs["mongo_indexes"].update(guide_entries('JOBS["mongo_indexes"]'))
    return domain


@pytest.fixture(scope="module")
def priority_server(start_server):
    return start_server({"DOMAIN": jobs_with_priority(), "MONGO_DBNAME": PRIORITY_DB_NAME})


@pytest.fixture
def priority_db(database, model_snapshot):
    for db in emptied(database, PRIORITY_DB_NAME):
        restore_models(db, model_snapshot)
        yield db
        wait_until_idle(db)


def page(client, path: str) -> str:
    """The browsable page of a path, as a browser asks for it."""
    answer = client.get(path, headers={"Accept": "text/html"})
    assert answer.headers["Content-Type"].startswith("text/html"), answer.text
    return answer.text


def form(html: str, form_id: str) -> str:
    found = re.search(rf'<form id="{form_id}".*?</form>', html, re.DOTALL)
    assert found, f"no #{form_id} on the page"
    return found.group(0)


# --- adding a field -----------------------------------------------------------------------


def test_a_field_added_to_jobs_is_stored_returned_filterable_and_documented(
    priority_server, priority_db
):
    alice = priority_server.api("client", "alice")
    urgent = alice.post("/jobs", json={"model": "iris", "inputs": [SETOSA], "priority": 9})
    assert urgent.status_code == 201, urgent.text
    urgent_id = urgent.json()["_id"]
    # Without it, the schema's default; the ?wait= answer (built in memory) has it too.
    usual = alice.post("/jobs?wait=30", json={"model": "iris", "inputs": [SETOSA]})
    assert usual.status_code == 201, usual.text
    assert usual.json()["status"] == "succeeded" and usual.json()["priority"] == 5
    usual_id = usual.json()["_id"]
    # Stored and returned.
    assert priority_db.jobs.find_one({"_id": ObjectId(urgent_id)})["priority"] == 9
    assert priority_db.jobs.find_one({"_id": ObjectId(usual_id)})["priority"] == 5
    assert alice.get(f"/jobs/{urgent_id}").json()["priority"] == 9
    # Filterable, and sortable on its index.
    found = alice.get("/jobs", params={"where": json.dumps({"priority": {"$gte": 8}})})
    assert [job["_id"] for job in found.json()["_items"]] == [urgent_id]
    ordered = alice.get("/jobs", params={"sort": "-priority"}).json()["_items"]
    assert [job["_id"] for job in ordered] == [urgent_id, usual_id]
    # Validated, the message naming the field.
    refused = alice.post("/jobs", json={"model": "iris", "inputs": [SETOSA], "priority": 10})
    assert refused.status_code == 422
    assert refused.json()["_error"]["message"] == "priority: max value is 9"
    assert refused.json()["_issues"] == {"priority": "max value is 9"}
    # Documented, and offered by the job form.
    document = alice.get("/openapi.json").json()
    assert document["components"]["schemas"]["JobsWrite"]["properties"]["priority"] == {
        "type": "integer",
        "minimum": 0,
        "maximum": 9,
        "default": 5,
    }
    job_form = form(page(alice, "/jobs"), "job-form")
    assert 'name="priority"' in job_form and 'placeholder="5"' in job_form


def test_the_field_is_sent_by_the_pages_job_form(priority_server, priority_db):
    """The job form's extra inputs are read by browsable.js as the schema's forms are:
    checked here through what the form would post (the browser tests cover the script)."""
    html = form(page(priority_server.api("client", "alice"), "/jobs"), "job-form")
    assert re.search(r'<input name="priority" data-kind="number"[^>]*type="number"', html)
    assert 'min="0"' in html and 'max="9"' in html and 'step="1"' in html


def test_documents_stored_before_a_field_existed_get_its_default(priority_server, priority_db):
    """`run.py fill-defaults`, as the guide says to run it once."""
    now = datetime.now(UTC).replace(microsecond=0)
    old = priority_db.jobs.insert_one(
        {"owner": "alice", "status": "succeeded", "_created": now, "_etag": "stale"}
    ).inserted_id
    alice = priority_server.api("client", "alice")
    assert alice.get("/jobs", params={"where": '{"priority": 5}'}).json()["_items"] == []
    filled = run.fill_defaults(priority_db, priority_server.app.config["DOMAIN"])
    assert filled == {"jobs.priority": 1, "jobs.tags": 1}
    stored = priority_db.jobs.find_one({"_id": old})
    assert stored["priority"] == 5 and stored["tags"] == {} and "_etag" not in stored
    found = alice.get("/jobs", params={"where": '{"priority": 5}'}).json()["_items"]
    assert [job["_id"] for job in found] == [str(old)]
    assert run.fill_defaults(priority_db, priority_server.app.config["DOMAIN"]) == {}


def test_fill_defaults_is_a_command(database, unswept_db):
    """The command line runs it on schemas/' DOMAIN (the jobs' tags have a default)."""
    unswept_db.jobs.insert_one({"owner": "alice", "status": "succeeded"})
    env = {"MONGO_URI": database.uri, "SIBYL_DB_NAME": unswept_db.name, "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "run.py", "fill-defaults"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "jobs.tags: 1 documents given the default" in done.stdout
    assert unswept_db.jobs.find_one({})["tags"] == {}


# --- adding a resource --------------------------------------------------------------------


def test_a_resource_added_in_schemas_is_stored_isolated_and_routed(
    experiments_server, experiments_db
):
    alice, bob = experiments_server.api("client", "alice"), experiments_server.api("client", "bob")
    analyst = experiments_server.api("analyst")
    created = alice.post("/experiments", json={"name": "lr-sweep", "goal": "pick a rate"})
    assert created.status_code == 201, created.text
    item = f"/experiments/{created.json()['_id']}"
    # Stored with its owner and the schema's defaults, and returned.
    shown = alice.get(item).json()
    assert shown["name"] == "lr-sweep" and shown["goal"] == "pick a rate"
    assert shown["owner"] == "alice" and shown["active"] is True
    assert experiments_db.experiments.find_one({})["owner"] == "alice"
    # Filterable on what it lists, sortable on what an index holds; nothing else.
    found = alice.get("/experiments", params={"where": '{"name": "lr-sweep"}'}).json()
    assert [e["name"] for e in found["_items"]] == ["lr-sweep"]
    assert alice.get("/experiments", params={"sort": "-_created"}).status_code == 200
    unlisted = alice.get("/experiments", params={"where": '{"goal": "x"}'})
    assert unlisted.status_code == 400 and "goal" in unlisted.json()["_error"]["message"]
    assert alice.get("/experiments", params={"sort": "goal"}).status_code == 400
    # Isolated: bob never sees, changes or deletes alice's; an analyst reads, never writes.
    assert bob.get(item).status_code == 404
    assert bob.get("/experiments").json()["_items"] == []
    etag = {"If-Match": shown["_etag"]}
    assert bob.patch(item, json={"goal": "mine"}, headers=etag).status_code == 404
    assert bob.delete(item, headers=etag).status_code == 404
    assert analyst.get(item).status_code == 200
    refused = analyst.post("/experiments", json={"name": "x"})
    assert refused.status_code == 403
    assert "it needs experiments:write, which admin, client hold" in refused.text
    # Its owner changes it (the 422 naming the field) and deletes it.
    wrong = alice.patch(item, json={"active": "yes"}, headers=etag)
    assert wrong.status_code == 422
    assert wrong.json()["_error"]["message"] == "active: must be of boolean type"
    assert alice.post("/experiments", json={"goal": "x"}).json()["_error"]["message"] == (
        "name: required field"
    )
    changed = alice.patch(item, json={"active": False}, headers=etag)
    assert changed.status_code == 200, changed.text
    assert alice.get(item).json()["active"] is False
    assert alice.delete(item, headers={"If-Match": changed.json()["_etag"]}).status_code == 204
    assert experiments_db.experiments.count_documents({}) == 0
    # The same walk every resource of schemas/ gets (tests/test_auth.py).
    check_isolation(experiments_server, experiments_db, "experiments")


def test_the_new_resource_is_documented(experiments_server):
    document = requests.get(experiments_server.url + "/v1/openapi.json", timeout=30).json()
    assert set(document["paths"]["/v1/experiments"]) == {"get", "post"}
    item = document["paths"]["/v1/experiments/{_id}"]
    assert {"get", "patch", "delete"} <= set(item)
    assert item["patch"]["requestBody"]["content"]["application/json"]["schema"]["properties"]
    post = document["paths"]["/v1/experiments"]["post"]
    assert "Needs `experiments:write` (roles: admin, client)" in post["description"]
    write = document["components"]["schemas"]["ExperimentsWrite"]
    assert write["required"] == ["name"]
    assert set(write["properties"]) == {"name", "goal", "model", "active"}
    tags = {tag["name"]: tag["description"] for tag in document["tags"]}
    assert tags["experiments"] == guide_experiments()["description"]


def test_the_new_resource_is_on_the_pages(experiments_server, experiments_db):
    alice = experiments_server.api("client", "alice")
    listing = page(alice, "/experiments")
    nav = re.search(r'<nav class="links">.*?</nav>', listing, re.DOTALL).group(0)
    assert 'href="/v1/experiments"' in nav and 'href="/v1/jobs"' in nav
    assert 'href="/v1/keys"' not in nav  # a client manages no keys
    create = form(listing, "create-form")
    assert "<h2>New experiment</h2>" in create
    for field in ("name", "goal", "model"):
        assert f'name="{field}"' in create, field
    assert re.search(r'<input type="checkbox" name="active" data-kind="checkbox" checked>', create)
    assert 'name="owner"' not in create  # read-only: the service sets it
    assert 'name="name"' in create and re.search(r'name="name"[^>]*required', create)
    made = alice.post("/experiments", json={"name": "a", "goal": "b"}).json()
    change = form(page(alice, f"/experiments/{made['_id']}"), "change-form")
    assert 'value="a"' in change and ">b</" not in change  # goal is a text input
    assert 'name="goal"' in change and 'value="b"' in change
    # An analyst may not write: no forms.
    analyst_page = page(experiments_server.api("analyst"), "/experiments")
    assert 'id="create-form"' not in analyst_page


# --- forgetting a step ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda e: e.pop("access"),
            'resource \'experiments\' must declare "access": "owned" (each document is its '
            'owner\'s) or "shared" (every reader sees all) (its schema has an `owner` field)',
        ),
        (lambda e: e.update(access="private"), "not 'private'"),
        (
            lambda e: e["schema"].pop("owner"),
            "resource 'experiments' is owned: its schema needs `\"owner\": OWNER`",
        ),
        (
            lambda e: e.update(roles={"read": ["admin", "guest"], "write": []}),
            "resource 'experiments': \"roles\"['read'] must list roles among admin, client, "
            "analyst, got ['admin', 'guest']",
        ),
        (lambda e: e.update(roles={"delete": ["admin"]}), '"roles" must be {"read"'),
    ],
)
def test_a_resource_declared_wrongly_stops_the_start_naming_it(test_settings, change, message):
    experiments = guide_experiments()
    change(experiments)
    settings = {**test_settings, "DOMAIN": domain_with(experiments=experiments)}
    with pytest.raises(SystemExit) as stopped:
        create_app(settings)
    assert message in str(stopped.value)


def test_a_resource_without_allowed_filters_is_neither_filtered_nor_sorted(start_server, database):
    experiments = guide_experiments()
    del experiments["allowed_filters"]
    server = start_server(
        {"DOMAIN": domain_with(experiments=experiments), "MONGO_DBNAME": "sibyl_unfiltered_test"}
    )
    admin = server.api()
    assert admin.get("/experiments", params={"where": '{"name": "a"}'}).status_code == 400
    assert admin.get("/experiments", params={"sort": "_id"}).status_code == 400
    assert admin.get("/experiments").status_code == 200
    pymongo.MongoClient(database.uri).drop_database("sibyl_unfiltered_test")
