"""Model stages: a job naming "iris" runs on the version an admin promoted, not the newest."""

import threading
from datetime import UTC, datetime, timedelta

import pytest
from bson import ObjectId
from conftest import upload_model

from service.registry import model_store
from service.store.access import Store

SETOSA = [5.1, 3.5, 1.4, 0.2]


def promote(api, model_id) -> object:
    """PATCH a model to production with the ETag a GET gives, as a client does."""
    etag = api.get(f"/models/{model_id}").json()["_etag"]
    return api.patch(
        f"/models/{model_id}", json={"stage": "production"}, headers={"If-Match": etag}
    )


def versions_run(api, reference: str) -> tuple[int, set[int]]:
    """Run a job naming reference; the version it resolved to, and its predictions' versions."""
    response = api.post("/jobs", params={"wait": 30}, json={"model": reference, "inputs": [SETOSA]})
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["status"] == "succeeded", job
    predictions = api.get("/predictions", params={"where": f'{{"job": "{job["_id"]}"}}'})
    return job["model_ref"]["version"], {p["model_version"] for p in predictions.json()["_items"]}


def add_version(db, model: dict, version: int, **fields) -> dict:
    """Another stored version of a model, written straight to the database (no upload):
    enough for what reads only its document. Its file id points nowhere."""
    document = {
        **model,
        "_id": ObjectId(),
        "version": version,
        "file": ObjectId(),
        "stage": None,
        "promoted_by": None,
        "promoted_at": None,
        **fields,
    }
    db.models.insert_one(document)
    return document


def production_versions(db, name: str) -> list[int]:
    return [m["version"] for m in db.models.find({"name": name, "stage": "production"})]


def test_a_new_version_takes_the_name_only_once_promoted(api, db, model_files):
    first = upload_model(api, "tiny", model_files["tiny"])
    assert first.status_code == 201, first.text
    v1 = api.get(f"/models/{first.json()['_id']}").json()
    # The first version of a name is promoted on upload, by its uploader.
    assert v1["stage"] == "production"
    assert v1["promoted_by"] == v1["owner"]
    assert v1["promoted_at"] is not None

    second = upload_model(api, "tiny", model_files["tiny"])
    assert second.status_code == 201, second.text
    v2 = api.get(f"/models/{second.json()['_id']}").json()
    assert (v2["version"], v2["stage"], v2["promoted_by"], v2["promoted_at"]) == (
        2,
        None,
        None,
        None,
    )

    # The upload took nothing: "tiny" still runs on version 1; "tiny@2" reaches version 2.
    assert versions_run(api, "tiny") == (1, {1})
    assert versions_run(api, "tiny@2") == (2, {2})

    promoted = promote(api, v2["_id"])
    assert promoted.status_code == 200, promoted.text
    v2 = api.get(f"/models/{v2['_id']}").json()
    assert v2["stage"] == "production"
    assert v2["promoted_by"] == v2["owner"]
    promoted_at = datetime.strptime(v2["promoted_at"], "%Y-%m-%dT%H:%M:%SZ")
    assert abs(promoted_at.replace(tzinfo=UTC) - datetime.now(UTC)) < timedelta(minutes=1)
    # The PATCH's answer carries the ETag of the promoted version as stored.
    assert promoted.json()["_etag"] == v2["_etag"]
    demoted = api.get(f"/models/{v1['_id']}").json()
    assert demoted["stage"] is None
    assert demoted["promoted_at"] == v1["promoted_at"]  # its last promotion, kept
    assert demoted["_etag"] != v1["_etag"]

    # This process forgot its lookups: the next job naming "tiny" runs on version 2.
    assert versions_run(api, "tiny") == (2, {2})
    assert versions_run(api, "tiny@1") == (1, {1})
    listed = api.get("/models", params={"where": '{"stage": "production"}'}).json()["_items"]
    assert [(m["name"], m["version"]) for m in listed] == [("tiny", 2)]


def test_promoting_the_production_version_changes_nothing(api, db, demo_models):
    iris = api.get(f"/models/{demo_models['iris']['_id']}").json()
    response = promote(api, iris["_id"])
    assert response.status_code == 200, response.text
    again = api.get(f"/models/{iris['_id']}").json()
    assert (again["stage"], again["promoted_at"]) == ("production", iris["promoted_at"])
    assert response.json()["_etag"] == again["_etag"]


def promote_at_once(api, ids: list[ObjectId]) -> dict[ObjectId, int]:
    """PATCH every model to production at the same moment; their statuses."""
    etags = {i: api.get(f"/models/{i}").json()["_etag"] for i in ids}
    start = threading.Barrier(len(ids))
    statuses: dict[ObjectId, int] = {}

    def patch(model_id: ObjectId) -> None:
        start.wait()
        statuses[model_id] = api.patch(
            f"/models/{model_id}",
            json={"stage": "production"},
            headers={"If-Match": etags[model_id]},
        ).status_code

    threads = [threading.Thread(target=patch, args=(i,)) for i in ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses


def test_concurrent_promotions_leave_exactly_one_production_version(api, db, demo_models):
    iris = demo_models["iris"]
    ids = [iris["_id"]] + [add_version(db, iris, version)["_id"] for version in (2, 3, 4)]
    counts: set[int] = set()
    done = threading.Event()

    def watch() -> None:
        # Readers (job lookups) never see none or two, not even between the writes.
        while not done.is_set():
            counts.add(db.models.count_documents({"name": "iris", "stage": "production"}))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for _ in range(3):
            statuses = promote_at_once(api, ids)
            # 412: the version changed (was demoted) after its ETag was read.
            assert set(statuses.values()) <= {200, 412}, statuses
            assert 200 in statuses.values()
            assert len(production_versions(db, "iris")) == 1
    finally:
        done.set()
        watcher.join()
    assert counts == {1}


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"stage": "archived"}, "stage", "the only stage a PATCH may set is 'production'"),
        ({"stage": None}, "stage", "the only stage a PATCH may set is 'production'"),
        ({}, "stage", "required"),
        ({"stage": "production", "description": "x"}, "description", "may only set"),
        ({"labels": ["a", "b", "c"]}, "labels", "may only set"),
        ({"stage": "production", "version": 7}, "version", "may only set"),
        ({"stage": "production", "name": "digits"}, "name", "may only set"),
    ],
)
def test_a_patch_may_only_promote(api, db, demo_models, body, field, message):
    iris = demo_models["iris"]
    v2 = add_version(db, iris, 2)
    etag = api.get(f"/models/{v2['_id']}").json()["_etag"]
    response = api.patch(f"/models/{v2['_id']}", json=body, headers={"If-Match": etag})
    assert response.status_code == 422, response.text
    assert message in response.json()["_issues"][field]
    assert production_versions(db, "iris") == [1]
    assert db.models.find_one({"_id": v2["_id"]}) == v2


def test_a_patch_carrying_a_file_leaves_the_model_alone(api, db, demo_models, model_files):
    iris = api.get(f"/models/{demo_models['iris']['_id']}").json()
    with open(model_files["tiny"], "rb") as handle:
        response = api.patch(
            f"/models/{iris['_id']}",
            data={"stage": "production"},
            files={"file": ("tiny.keras", handle)},
            headers={"If-Match": iris["_etag"]},
        )
    assert response.status_code == 422, response.text
    assert "may only set" in response.json()["_issues"]["file"]
    # Eve would have replaced the stored file before any update hook ran.
    assert db["fs.files"].count_documents({"_id": demo_models["iris"]["file"]}) == 1
    assert db["fs.files"].count_documents({}) == len(demo_models)


def test_a_patch_needs_the_etag(api, demo_models):
    response = api.patch(f"/models/{demo_models['iris']['_id']}", json={"stage": "production"})
    assert response.status_code == 428


def test_an_upload_may_not_choose_its_stage(api, db, model_files):
    response = upload_model(api, "tiny", model_files["tiny"], stage="production")
    assert response.status_code == 422, response.text
    assert "first version of a name is promoted on upload" in response.json()["_issues"]["stage"]
    assert db.models.count_documents({}) == 0
    assert db["fs.files"].count_documents({}) == 0


def test_a_name_without_production_version_is_a_clear_422(queue_api, queue_db, queue_demo_models):
    iris = queue_demo_models["iris"]
    for version in (1, 2):
        add_version(queue_db, iris, version, name="unpromoted")
    response = queue_api.post("/jobs", json={"model": "unpromoted", "inputs": [SETOSA]})
    assert response.status_code == 422
    assert response.json()["_issues"]["model"] == (
        "no production version of 'unpromoted'; promote one with PATCH /v1/models/<id> "
        "or name a version unpromoted@2"
    )
    pinned = queue_api.post("/jobs", json={"model": "unpromoted@1", "inputs": [SETOSA]})
    assert pinned.status_code == 201, pinned.text


def test_the_production_version_is_deleted_last(api, db, demo_models):
    iris = api.get(f"/models/{demo_models['iris']['_id']}").json()
    v2 = add_version(db, demo_models["iris"], 2)
    refused = api.delete(f"/models/{iris['_id']}", headers={"If-Match": iris["_etag"]})
    assert refused.status_code == 409
    assert refused.json()["_error"]["message"] == (
        "version 1 is the production version of 'iris': promote another version first "
        '(PATCH /v1/models/<id> {"stage": "production"})'
    )
    v2_etag = api.get(f"/models/{v2['_id']}").json()["_etag"]
    assert api.delete(f"/models/{v2['_id']}", headers={"If-Match": v2_etag}).status_code == 204
    # The only version left: deleting it deletes the name.
    assert (
        api.delete(f"/models/{iris['_id']}", headers={"If-Match": iris["_etag"]}).status_code == 204
    )
    assert db.models.count_documents({"name": "iris"}) == 0


def test_demo_models_are_promoted_like_first_uploads(db, demo_models):
    for model in demo_models.values():
        assert (model["stage"], model["promoted_by"]) == ("production", None)
        assert model["promoted_at"] is not None
    store, now = Store(db), datetime.now(UTC)
    assert model_store.stage_of_new_version(store, "iris", "alice", now)["stage"] is None
    assert model_store.stage_of_new_version(store, "new", "alice", now) == {
        "stage": "production",
        "promoted_by": "alice",
        "promoted_at": now,
    }


def test_a_promotion_records_who_and_when(db, demo_models):
    iris = demo_models["iris"]
    v2 = add_version(db, iris, 2)
    before = datetime.now(UTC).replace(microsecond=0)
    written = model_store.promote(Store(db), v2, owner="alice")
    stored = db.models.find_one({"_id": v2["_id"]})
    assert (stored["stage"], stored["promoted_by"]) == ("production", "alice")
    assert before <= stored["promoted_at"] <= datetime.now(UTC)
    assert stored["_etag"] == written["_etag"]
    demoted = db.models.find_one({"_id": iris["_id"]})
    assert (demoted["stage"], demoted["promoted_by"]) == (None, None)
    assert "_etag" not in demoted  # Eve computes a fresh one on read


def test_models_stored_before_stages_keep_serving_their_name(db, demo_models):
    iris = demo_models["iris"]
    add_version(db, iris, 2)
    unstaged = {"stage": "", "promoted_by": "", "promoted_at": ""}
    db.models.update_many({}, {"$unset": unstaged})
    store = Store(db)
    assert sorted(model_store.promote_unstaged(store)) == ["digits", "iris"]
    # "iris" meant its newest version then: it still does, until an admin promotes another.
    assert production_versions(db, "iris") == [2]
    assert db.models.find_one({"name": "iris", "version": 1})["stage"] is None
    assert model_store.promote_unstaged(store) == []


def test_resolving_a_name_is_index_backed(api, db, demo_models):
    index = db.models.index_information()["production_per_name"]
    assert index["unique"] and index["partialFilterExpression"] == {"stage": "production"}
    # SecantusDB's explain shows a scan for any filter with a field outside the index
    # (status here), though it runs those through the index too.
    plan = db.models.find({"name": "iris", "stage": "production"}).explain()
    assert "production_per_name" in str(plan["queryPlanner"]["winningPlan"])
    assert model_store.resolve(Store(db), "iris")["_id"] == demo_models["iris"]["_id"]
