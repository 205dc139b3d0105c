"""Caps and quotas against unbounded resource consumption, and hostile queries.

Every refusal is a JSON 4xx naming the limit or the operator, never a 500, and
stores nothing.
"""

import json

import pytest
from conftest import QUEUE_DB_NAME

from schemas import DOMAIN
from service.api.request_checks import sortable_fields
from service.errors import TooManyActive
from service.jobs import service as service_module
from service.jobs.service import JobService
from service.store.access import SYSTEM, Identity

JSON = {"Content-Type": "application/json"}
SETOSA = [5.1, 3.5, 1.4, 0.2]
JOB = {"model": "iris", "inputs": [SETOSA]}
BANNED = ["$where", "$function", "$accumulator", "$expr", "$jsonSchema", "$text", "$regex"]


def counts(db) -> dict[str, int]:
    return {name: db[name].count_documents({}) for name in ("jobs", "predictions", "models")}


# --- hostile queries -------------------------------------------------------


# Wherever a filter can hold an operator: OP stands for the banned one.
PLACEMENTS = [
    {"OP": "x"},
    {"label": {"OP": "x"}},
    {"$or": [{"label": "a"}, {"OP": "x"}]},
    {"$and": [{"label": "a"}, {"label": {"OP": "x"}}]},
    {"$nor": [{"OP": "x"}]},
    {"label": {"$not": {"OP": "x"}}},
    {"output": {"$elemMatch": {"OP": "x"}}},
    {"$or": [{"$and": [{"$nor": [{"score": {"$not": {"OP": "x"}}}]}]}]},
    {"label": {"$in": ["a", {"OP": "x"}]}},
    {"tags.run": {"$all": [[{"OP": "x"}]]}},
]


@pytest.mark.parametrize("placement", [json.dumps(p) for p in PLACEMENTS])
@pytest.mark.parametrize("op", BANNED)
def test_a_banned_operator_is_400_wherever_it_hides(api, db, op, placement):
    response = api.get("/predictions", params={"where": placement.replace('"OP"', f'"{op}"')})
    assert response.status_code == 400, response.text
    assert response.json()["_error"]["message"] == f"where: the operator {op} is not allowed"


@pytest.mark.parametrize("op", BANNED)
def test_a_banned_operator_in_python_syntax_is_400(api, db, op):
    for where in [f'"{op}" == "x"', f'label == "a" or "{op}" == "x"']:
        response = api.get("/predictions", params={"where": where})
        assert response.status_code == 400, (where, response.text)
        assert response.json()["_error"]["message"] == f"where: the operator {op} is not allowed"


@pytest.mark.parametrize("resource", ["jobs", "predictions", "models"])
def test_every_resource_refuses_banned_operators(api, db, resource):
    query = {"$or": [{"_id": "0" * 24}, {"$expr": {"$eq": ["$_id", "$_id"]}}]}
    response = api.get(f"/{resource}", params={"where": json.dumps(query)})
    assert response.status_code == 400
    assert response.json()["_error"]["message"] == "where: the operator $expr is not allowed"


@pytest.mark.parametrize(
    ("resource", "where", "field"),
    [
        ("jobs", {"lease.token": "t"}, "lease.token"),
        ("jobs", {"lease": {"$ne": None}}, "lease"),
        ("jobs", {"inputs": {"$size": 4}}, "inputs"),
        ("jobs", {"$or": [{"status": "queued"}, {"lease.worker": "w"}]}, "lease.worker"),
        ("jobs", {"$and": [{"$nor": [{"lease.until": {"$gt": 0}}]}]}, "lease.until"),
        ("jobs", 'status == "queued" and lease.worker == "w"', "lease.worker"),
        ("predictions", {"batch.id": "b"}, "batch.id"),
        ("predictions", {"attempt": 1}, "attempt"),
        ("predictions", {"tagsx": 1}, "tagsx"),
        ("models", {"file": {"$exists": True}}, "file"),
    ],
)
def test_filter_on_a_field_not_listed_is_400_naming_it(api, db, resource, where, field):
    raw = where if isinstance(where, str) else json.dumps(where)
    response = api.get(f"/{resource}", params={"where": raw})
    assert response.status_code == 400, response.text
    message = response.json()["_error"]["message"]
    assert message.startswith(f"where: filtering on {field!r} is not allowed; fields that")
    assert message.endswith("(and their sub-fields, such as tags.<name>)")


@pytest.mark.parametrize(
    ("resource", "where"),
    [
        ("jobs", {"tags.experiment.arm": "a", "status": {"$in": ["queued", "running"]}}),
        ("jobs", {"model_ref.name": "iris", "progress.total": {"$gt": 1}}),
        ("jobs", 'tags.run == "a" or status == "failed"'),
        ("predictions", {"$or": [{"label": "a"}, {"output.2": {"$gt": 0.5}}]}),
        ("predictions", {"output": {"$elemMatch": {"$gt": 0.5}}, "owner": None}),
        ("models", {"signature.inputs.name": "x", "name": "iris"}),
    ],
)
def test_filters_on_listed_fields_and_their_sub_fields_pass(api, db, resource, where):
    raw = where if isinstance(where, str) else json.dumps(where)
    response = api.get(f"/{resource}", params={"where": raw})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("resource", "sort", "field"),
    [
        ("jobs", "inputs", "inputs"),
        ("jobs", "-tags.run", "tags.run"),
        ("jobs", "status,model", "model"),
        ("jobs", '[("lease.until", 1)]', "lease.until"),
        ("predictions", "-output", "output"),
        ("models", "-_created", "_created"),
    ],
)
def test_sort_on_a_field_no_index_serves_is_400(api, db, resource, sort, field):
    # The sortable fields are read from the schema: an index added there adds one.
    sortable = ", ".join(sortable_fields(DOMAIN[resource]))
    response = api.get(f"/{resource}", params={"sort": sort})
    assert response.status_code == 400
    assert response.json()["_error"]["message"] == (
        f"sort: sorting on {field!r} is not allowed (only on fields an index serves); "
        f"sort on {sortable}"
    )


def test_the_sortable_fields_are_the_filterable_ones_an_index_holds():
    resource = {
        "mongo_indexes": {
            "pair": [("owner", 1), ("_created", -1)],
            "unique": ([("name", 1)], {"unique": True}),
            "internal": [("lease.until", 1)],
        },
        "allowed_filters": ["_created", "name", "owner", "status"],
    }
    assert sortable_fields(resource) == ["_created", "name", "owner"]
    assert sortable_fields({**resource, "allowed_filters": ["_id", "lease"]}) == [
        "_id",
        "lease.until",
    ]


@pytest.mark.parametrize(
    ("resource", "sort"),
    [
        ("jobs", "-_created"),
        ("jobs", "status,-_created"),
        ("jobs", "_id"),
        ("predictions", '[("score", -1)]'),
        ("predictions", "job,index"),
        ("models", "name,-version"),
    ],
)
def test_sort_on_indexed_fields_passes(api, db, resource, sort):
    assert api.get(f"/{resource}", params={"sort": sort}).status_code == 200


@pytest.mark.parametrize(
    ("projection", "message"),
    [
        ({"label": {"$slice": 1}}, "projection: values must be 1 (include) or 0 (exclude)"),
        ({"output": {"$elemMatch": {"$gt": 0}}}, "projection: values must be 1 (include) or 0"),
        ({"tags.$": 1}, "projection: a field name may not be empty or hold a $"),
        ({"$where": 1}, "projection: a field name may not be empty or hold a $"),
        ({"": 1}, "projection: a field name may not be empty or hold a $"),
    ],
)
def test_projection_takes_only_field_names_and_0_or_1(api, db, projection, message):
    response = api.get("/predictions", params={"projection": json.dumps(projection)})
    assert response.status_code == 400
    assert response.json()["_error"]["message"].startswith(message)


def test_a_prediction_does_not_embed_its_job(api, db):
    """The job holds the inputs and the lease: ?embedded= leaves it a link."""
    job = {"inputs": [[1]], "status": "succeeded", "lease": None, "owner": None}
    job_id = db.jobs.insert_one(job).inserted_id
    db.predictions.insert_one({"job": job_id, "label": "a", "owner": None})
    response = api.get("/predictions", params={"embedded": json.dumps({"job": 1})})
    assert response.status_code == 200
    assert response.json()["_items"][0]["job"] == str(job_id)


# --- caps on requests --------------------------------------------------------


def test_a_huge_bulk_post_is_413_at_once_and_small(queue_api, queue_db):
    """Before the cap, these 400 KB took 8.5 s of CPU and answered 8.8 MB."""
    response = queue_api.post("/jobs", data=json.dumps([{}] * 100_000), headers=JSON)
    assert response.status_code == 413
    assert response.json()["_error"]["message"] == (
        "a POST takes at most 1000 jobs (SIBYL_MAX_JOBS_PER_POST); this one has 100000: "
        "send them in several requests"
    )
    assert len(response.content) < 500
    assert counts(queue_db) == {"jobs": 0, "predictions": 0, "models": 0}


def test_a_refused_bulk_post_lists_its_first_issues_only(queue_api, queue_db):
    response = queue_api.post("/jobs", data=json.dumps([{}] * 1000), headers=JSON)
    assert response.status_code == 422
    body = response.json()
    assert body["_error"]["message"] == (
        "job 0: inputs: required field (and 1950 more: only the first 50 issues are listed)"
    )
    assert len(body["_items"]) == 25  # two issues each
    assert len(response.content) < 5_000
    assert queue_db.jobs.count_documents({}) == 0


@pytest.fixture(scope="module")
def capped_server(start_server):
    """A queueing app (jobs stay queued) with small caps."""
    return start_server(
        {
            "INFERENCE": "workers",
            "MONGO_DBNAME": QUEUE_DB_NAME,
            "MAX_CONTENT_LENGTH": 10_000,
            "MAX_INSTANCES_PER_JOB": 3,
            "PAGINATION_LIMIT": 5,
            "MAX_JOBS_PER_POST": 2,
            "MAX_ERROR_ISSUES": 3,
            "MAX_TAGS_BYTES": 60,
            "MAX_TAGS_KEYS": 4,
            "MAX_TAGS_DEPTH": 2,
            "MAX_ACTIVE_INSTANCES_PER_OWNER": 0,
        }
    )


@pytest.fixture
def capped(capped_server, queue_db, queue_demo_models):
    return capped_server.api()


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({**JOB, "inputs": [SETOSA] * 1000}, 413, "the body is larger than 10000 bytes"),
        ({**JOB, "inputs": [SETOSA] * 4}, 422, "inputs: 4 instances, at most 3 per job"),
        ([JOB, JOB, JOB], 413, "a POST takes at most 2 jobs (SIBYL_MAX_JOBS_PER_POST); this"),
        (
            [{}, {}],
            422,
            "job 0: inputs: required field (and 1 more: only the first 3 issues are listed)",
        ),
        ({**JOB, "tags": {"a": {"b": {"c": 1}}}}, 422, "tags may nest at most 2 levels deep"),
        ({**JOB, "tags": {"a": [[1]]}}, 422, "tags may nest at most 2 levels deep"),
        ({**JOB, "tags": {"a": {"b": 1, "c": 2, "d": 3}, "e": 4}}, 422, "tags may have at most 4"),
        ({**JOB, "tags": {"a": "x" * 60}}, 422, "tags may take at most 60 bytes as JSON"),
        ({**JOB, "tags": {"a": "é" * 27}}, 422, "tags may take at most 60 bytes as JSON"),
    ],
)
def test_past_a_cap_is_a_4xx_naming_it(capped, queue_db, body, status, message):
    response = capped.post("/jobs", json=body)
    assert response.status_code == status, response.text
    assert response.json()["_error"]["message"].startswith(message)
    if message.startswith("tags"):
        assert response.json()["_issues"]["tags"].startswith(message)
    assert counts(queue_db)["jobs"] == 0


def test_at_the_caps_a_job_is_accepted(capped, queue_db):
    tags = {"a": {"b": 1, "c": 2}, "run": "x" * 30}  # 2 deep, 4 names, 48 bytes
    body = [{**JOB, "inputs": [SETOSA] * 3, "tags": tags}, JOB]
    response = capped.post("/jobs", json=body)
    assert response.status_code == 201, response.text
    assert queue_db.jobs.count_documents({"tags": tags}) == 1


def test_a_patch_of_tags_past_a_cap_is_422_and_changes_nothing(capped, queue_db):
    job = capped.post("/jobs", json={**JOB, "tags": {"run": "a"}}).json()
    for tags, message in [
        ({"a": {"b": {"c": 1}}}, "tags may nest at most 2 levels deep (SIBYL_MAX_TAGS_DEPTH)"),
        (dict.fromkeys("abcde", 1), "tags may have at most 4 names, counted at every level"),
        ({"a": "x" * 100}, "tags may take at most 60 bytes as JSON (SIBYL_MAX_TAGS_BYTES)"),
    ]:
        etag = capped.get(f"/jobs/{job['_id']}").json()["_etag"]
        response = capped.patch(
            f"/jobs/{job['_id']}", json={"tags": tags}, headers={"If-Match": etag}
        )
        assert response.status_code == 422, response.text
        assert response.json()["_issues"]["tags"].startswith(message)
    assert queue_db.jobs.find_one()["tags"] == {"run": "a"}


def test_page_size_is_clamped_to_the_limit(capped, queue_db):
    queue_db.predictions.insert_many([{"label": "a", "index": i, "owner": None} for i in range(7)])
    body = capped.get("/predictions", params={"max_results": 100}).json()
    assert body["_meta"]["max_results"] == 5
    assert len(body["_items"]) == 5


@pytest.mark.parametrize(
    "content_type", ["application/json", "application/x-www-form-urlencoded", None]
)
def test_a_model_upload_that_is_not_multipart_is_415(api, db, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    response = api.post("/models", data=json.dumps({"name": "m"}), headers=headers)
    assert response.status_code == 415
    assert response.json()["_error"]["message"].startswith(
        "a model is uploaded as multipart/form-data"
    )
    assert counts(db) == {"jobs": 0, "predictions": 0, "models": 0}
    assert db["fs.files"].count_documents({}) == 0


def test_a_json_body_on_models_does_not_get_the_upload_limit(api, db):
    """It used to take 65 MB of JSON; now it is refused unread."""
    body = json.dumps({"name": "m", "pad": "a" * (9 * 1024 * 1024)})
    response = api.post("/models", data=body, headers=JSON)
    assert response.status_code == 415, response.text
    assert counts(db)["models"] == 0


# --- the active-instance quota -------------------------------------------------


@pytest.fixture
def fresh_counts(monkeypatch, queueing_server):
    """The job service reads an owner's in-flight jobs on every submission (not from its
    memory of the last second): these tests change jobs behind its back."""
    monkeypatch.setattr(service_module, "QUOTA_READ_EVERY_S", 0.0)
    yield
    # What the queueing app read of jobs seeded here is not the next test's.
    queueing_server.app.extensions["sibyl"].jobs.in_flight.forget()


@pytest.fixture
def quota_service(queueing_server, queue_db, queue_demo_models, fresh_counts):
    """A job service of the queueing app (jobs stay queued) allowing each owner 3 jobs and 5
    instances in flight."""
    services = queueing_server.app.extensions["sibyl"]
    config = {
        **queueing_server.app.config,
        "MAX_ACTIVE_JOBS_PER_OWNER": 3,
        "MAX_ACTIVE_INSTANCES_PER_OWNER": 5,
    }
    return JobService(services.store, services.models, config, services.completions, lambda: None)


ALICE = Identity(owner="alice", sees_all=False, role="client")
BOB = Identity(owner="bob", sees_all=False, role="client")


def test_the_quota_counts_each_owners_queued_and_running_instances(quota_service, queue_db):
    quota_service.submit([{**JOB, "inputs": [SETOSA] * 3}], ALICE)
    quota_service.submit([{**JOB, "inputs": [SETOSA] * 2}], ALICE)  # 5: at the quota
    with pytest.raises(TooManyActive) as refused:
        quota_service.submit([JOB], ALICE)
    assert refused.value.status == 429
    assert refused.value.message == (
        "5 instances of yours are queued or running: at most 5 may be at once "
        "(SIBYL_MAX_ACTIVE_INSTANCES_PER_OWNER); retry once some have finished"
    )
    # Another owner has a quota of its own.
    quota_service.submit([{**JOB, "inputs": [SETOSA] * 5}], BOB)
    assert queue_db.jobs.count_documents({"owner": "alice"}) == 2

    # Finished instances no longer count; running ones do.
    first = queue_db.jobs.find_one({"owner": "alice", "progress.total": 3})
    queue_db.jobs.update_one({"_id": first["_id"]}, {"$set": {"status": "succeeded"}})
    queue_db.jobs.update_one(
        {"owner": "alice", "progress.total": 2}, {"$set": {"status": "running"}}
    )
    with pytest.raises(TooManyActive) as refused:
        quota_service.submit(
            [{**JOB, "inputs": [SETOSA] * 2}, {**JOB, "inputs": [SETOSA] * 2}], ALICE
        )
    assert refused.value.message.startswith(
        "2 instances of yours are queued or running and this request adds 4: at most 5"
    )
    quota_service.submit([{**JOB, "inputs": [SETOSA] * 3}], ALICE)
    assert queue_db.jobs.count_documents({"owner": "alice"}) == 3


def test_the_quota_counts_each_owners_queued_and_running_jobs(quota_service, queue_db):
    quota_service.submit([JOB, JOB], ALICE)
    quota_service.submit([JOB], ALICE)
    with pytest.raises(TooManyActive) as refused:
        quota_service.submit([JOB], ALICE)
    assert refused.value.message == (
        "3 jobs of yours are queued or running: at most 3 may be at once "
        "(SIBYL_MAX_ACTIVE_JOBS_PER_OWNER); retry once some have finished"
    )
    quota_service.submit([JOB] * 3, BOB)
    with pytest.raises(TooManyActive) as refused:
        quota_service.submit([JOB] * 4, Identity(owner="carol", sees_all=False, role="client"))
    assert refused.value.message == (
        "0 jobs of yours are queued or running and this request adds 4: at most 3 may be at "
        "once (SIBYL_MAX_ACTIVE_JOBS_PER_OWNER); send fewer jobs per request"
    )
    assert queue_db.jobs.count_documents({"owner": "alice"}) == 3
    assert queue_db.jobs.count_documents({"owner": "carol"}) == 0


def test_a_request_larger_than_the_quota_says_to_send_fewer(quota_service, queue_db):
    with pytest.raises(TooManyActive) as refused:
        quota_service.submit([{**JOB, "inputs": [SETOSA] * 3}] * 2, ALICE)
    assert refused.value.message.endswith("send fewer instances per request")
    assert queue_db.jobs.count_documents({}) == 0


def test_sibyls_own_submissions_have_no_quota(quota_service, queue_db):
    quota_service.submit([{**JOB, "inputs": [SETOSA] * 3}] * 3, SYSTEM)
    assert queue_db.jobs.count_documents({}) == 3


def test_between_reads_a_process_counts_what_it_accepted(
    queueing_server, queue_db, queue_demo_models, monkeypatch
):
    """One read per owner and second, plus what this process accepted since."""
    monkeypatch.setattr(service_module, "QUOTA_READ_EVERY_S", 60.0)
    services = queueing_server.app.extensions["sibyl"]
    config = {**queueing_server.app.config, "MAX_ACTIVE_JOBS_PER_OWNER": 2}
    jobs = JobService(services.store, services.models, config, services.completions, lambda: None)
    jobs.submit([JOB], ALICE)
    queue_db.jobs.update_many({}, {"$set": {"status": "succeeded"}})  # unseen until re-read
    jobs.submit([JOB], ALICE)
    with pytest.raises(TooManyActive):
        jobs.submit([JOB], ALICE)  # two counted: the first's end is not read yet
    monkeypatch.setattr(service_module, "QUOTA_READ_EVERY_S", 0.0)
    jobs.submit([JOB], ALICE)  # re-read: one in flight
    assert queue_db.jobs.count_documents({"owner": "alice"}) == 3


def test_past_the_quota_a_post_is_429_and_stores_nothing(
    queue_api, queue_db, queue_demo_models, fresh_counts
):
    """Over HTTP, as whichever owner the client is (one owner, None, when auth is off)."""
    first = queue_api.post("/jobs", json=JOB)
    assert first.status_code == 201, first.text
    owner = queue_db.jobs.find_one()["owner"]
    # The rest of the default quota (100,000) is taken by a job seeded for the same owner.
    queue_db.jobs.insert_one({"owner": owner, "status": "queued", "progress": {"total": 99_999}})
    response = queue_api.post("/jobs", json=[JOB, JOB])
    assert response.status_code == 429
    assert response.json()["_error"] == {
        "code": 429,
        "message": "100000 instances of yours are queued or running: at most 100000 may be at "
        "once (SIBYL_MAX_ACTIVE_INSTANCES_PER_OWNER); retry once some have finished",
    }
    assert queue_db.jobs.count_documents({}) == 2
    # The count is an index read.
    assert "owner_status" in queue_db.jobs.index_information()


def test_concurrent_requests_of_one_owner_cannot_all_pass_on_one_reading(
    queueing_server, queue_db, queue_demo_models
):
    """Found by an attacker's review: 20 parallel POSTs queued 30 jobs past a quota of 5.
    Within a process, the check and the count are one step now."""
    import threading

    services = queueing_server.app.extensions["sibyl"]
    config = {**queueing_server.app.config, "MAX_ACTIVE_JOBS_PER_OWNER": 5}
    jobs = JobService(services.store, services.models, config, services.completions, lambda: None)
    outcomes: list[str] = []
    start = threading.Barrier(20)

    def post() -> None:
        start.wait()
        try:
            jobs.submit([JOB], ALICE)
            outcomes.append("accepted")
        except TooManyActive:
            outcomes.append("refused")

    threads = [threading.Thread(target=post) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Never past the quota; a reading racing an insert may count a job twice, so a
    # burst can be refused a little early, never admitted late.
    accepted = outcomes.count("accepted")
    assert 0 < accepted <= 5
    assert queue_db.jobs.count_documents({"owner": "alice"}) == accepted
