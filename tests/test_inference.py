"""Jobs become real TensorFlow predictions: correct, batched, exactly once, failures contained."""

import threading

import numpy as np
import pytest
from bson import ObjectId
from conftest import emptied, restore_models, upload_model, wait_for, wait_until_idle
from model_builders import direct_outputs

from service.demo.models import load_digits, load_iris

TOLERANCE = 1e-5


@pytest.fixture
def demo_model_paths(tmp_path, db, demo_models):
    """The demo models' files, as stored in GridFS, to run them directly."""
    import gridfs

    paths = {}
    for name, model in demo_models.items():
        paths[name] = tmp_path / f"{name}.keras"
        paths[name].write_bytes(gridfs.GridFS(db).get(model["file"]).read())
    return paths


def finished(api, response):
    """The finished job of a POST ?wait= answer."""
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["status"] == "succeeded", job
    return job


def test_iris_predictions_equal_the_model(api, db, demo_models, demo_model_paths):
    features, species = load_iris()
    response = api.post(
        "/jobs?wait=30", json={"model": "iris", "inputs": features.tolist(), "tags": {"set": "all"}}
    )
    job = finished(api, response)
    outputs = np.array([p["output"] for p in job["predictions"]])
    np.testing.assert_allclose(
        outputs, direct_outputs(demo_model_paths["iris"], features), atol=TOLERANCE
    )
    labels = [p["label"] for p in job["predictions"]]
    names = ["setosa", "versicolor", "virginica"]
    accuracy = np.mean([labels[i] == names[s] for i, s in enumerate(species)])
    assert accuracy > 0.9  # a trained model, not a random one
    assert [p["index"] for p in job["predictions"]] == list(range(150))
    assert job["progress"] == {"done": 150, "total": 150}

    stored = db.predictions.find({"job": db.jobs.find_one()["_id"]}).sort("index", 1)
    stored = list(stored)
    assert len(stored) == 150
    assert stored[0]["model"] == "iris" and stored[0]["model_version"] == 1
    assert stored[0]["tags"] == {"set": "all"}
    assert stored[0]["score"] == pytest.approx(max(stored[0]["output"]))


def test_digits_predictions_equal_the_model(api, demo_models, demo_model_paths):
    images, digits = load_digits()
    response = api.post("/jobs?wait=30", json={"model": "digits", "inputs": images[:64].tolist()})
    job = finished(api, response)
    outputs = np.array([p["output"] for p in job["predictions"]])
    np.testing.assert_allclose(
        outputs, direct_outputs(demo_model_paths["digits"], images[:64]), atol=TOLERANCE
    )
    assert [p["label"] for p in job["predictions"]] == [str(int(np.argmax(o))) for o in outputs]


def test_multi_input_model_both_ways(api, model_files):
    assert upload_model(api, "pair", model_files["two_inputs"]).status_code == 201
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 3)).astype("float32"), rng.normal(size=(5, 2)).astype("float32")
    expected = direct_outputs(model_files["two_inputs"], [a, b])

    per_instance = [{"a": a[i].tolist(), "b": b[i].tolist()} for i in range(5)]
    columnar = {"a": a.tolist(), "b": b.tolist()}
    for inputs in (per_instance, columnar):
        job = finished(api, api.post("/jobs?wait=30", json={"model": "pair", "inputs": inputs}))
        outputs = np.array([p["output"] for p in job["predictions"]])
        np.testing.assert_allclose(outputs, expected, atol=TOLERANCE)
        assert all(p["label"] is None for p in job["predictions"])  # no labels given

    bad = api.post("/jobs", json={"model": "pair", "inputs": [{"a": [1, 2, 3]}]})
    assert bad.status_code == 422
    assert bad.json()["_issues"]["inputs"] == "inputs[0]: missing input b"


def test_savedmodel_predictions(api, model_files):
    assert upload_model(api, "doubler", model_files["savedmodel"]).status_code == 201
    job = finished(
        api, api.post("/jobs?wait=30", json={"model": "doubler", "inputs": [[1, 2, 3], [0, 0, 0]]})
    )
    assert [p["output"] for p in job["predictions"]] == [[3, 5, 7], [1, 1, 1]]


def test_concurrent_jobs_share_model_calls(start_server, db, demo_models):
    # Every request may wait its 30 s: the point here is batching.
    api = start_server({"MAX_WAIT_MS": 200, "MAX_WAITING_REQUESTS": 16}).api()
    responses = []

    def submit(i):
        responses.append(
            api.post(
                "/jobs?wait=30", json={"model": "iris", "inputs": [[5.0, 3.0, 1.0 + i / 10, 0.2]]}
            )
        )

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [r.json()["status"] for r in responses] == ["succeeded"] * 12
    batches = {}
    for prediction in db.predictions.find():
        batches[prediction["batch"]["id"]] = prediction["batch"]["size"]
    assert db.predictions.count_documents({}) == 12
    assert len(batches) < 12  # fewer model calls than jobs
    assert max(batches.values()) > 1
    assert sum(batches.values()) == 12


def test_large_job_reports_progress_in_batches(start_server, db, demo_models):
    api = start_server({"MAX_BATCH_SIZE": 100}).api()
    features, _ = load_iris()
    inputs = np.tile(features, (7, 1))[:1000].tolist()
    created = api.post("/jobs", json={"model": "iris", "inputs": inputs}).json()
    job = api.get(f"/jobs/{created['_id']}?wait=30").json()
    assert job["status"] == "succeeded"
    assert job["progress"] == {"done": 1000, "total": 1000}
    sizes = [p["batch"]["size"] for p in db.predictions.find({}, {"batch": 1})]
    assert len(sizes) == 1000
    assert max(sizes) == 100
    assert len({p["index"] for p in db.predictions.find({}, {"index": 1})}) == 1000


def test_a_large_job_does_not_hold_up_small_ones(start_server, db, demo_models):
    """Small jobs that arrive while a 10,000-instance job runs make its next batch on
    their own, and the large job goes on in slices: they finish long before it does
    (they waited for all of its 100 batches before, then shared full batches with it)."""
    api = start_server({"MAX_BATCH_SIZE": 100, "FAIR_SLICE_ROWS": 10}).api()
    features, _ = load_iris()
    inputs = np.tile(features, (67, 1))[:10_000].tolist()
    big = api.post("/jobs", json={"model": "iris", "inputs": inputs}).json()
    wait_for(
        lambda: db.jobs.find_one({"_id": ObjectId(big["_id"])})["progress"]["done"] > 0,
        60,
        "the large job to start",
    )
    small = [
        api.post("/jobs?wait=30", json={"model": "iris", "inputs": [features[i].tolist()]}).json()
        for i in range(5)
    ]
    assert {job["status"] for job in small} == {"succeeded"}
    big = api.get(f"/jobs/{big['_id']}?wait=60").json()
    assert big["status"] == "succeeded" and big["progress"]["done"] == 10_000
    # The small jobs' batches held none of the large job's rows; while they came, the
    # large job ran in slices of 10 rows, full batches of 100 before and after.
    batches = {
        p["batch"]["id"]
        for p in db.predictions.find({"job": {"$in": [ObjectId(j["_id"]) for j in small]}})
    }
    big_batches = set(db.predictions.distinct("batch.id", {"job": ObjectId(big["_id"])}))
    assert not batches & big_batches
    big_sizes = [
        len(db.predictions.distinct("index", {"batch.id": batch})) for batch in big_batches
    ]
    assert 10 in big_sizes and 100 in big_sizes
    assert len([size for size in big_sizes if size not in (10, 100)]) <= 1  # its last batch
    finished = {job["_id"]: job["finished_at"] for job in db.jobs.find({}, {"finished_at": 1})}
    assert all(finished[ObjectId(job["_id"])] < finished[ObjectId(big["_id"])] for job in small)


def test_a_stopping_process_releases_the_jobs_it_had_not_started(start_server, db, demo_models):
    """Graceful shutdown: the run under way finishes; jobs still waiting in a lane are
    handed back at once (queued, no lease, no attempt counted), not after their lease."""
    server = start_server({"MAX_BATCH_SIZE": 100, "LEASE_SECONDS": 600})
    api = server.api()
    features, _ = load_iris()
    inputs = np.tile(features, (20, 1))[:3_000].tolist()  # 30 batches: seconds
    big = api.post("/jobs", json={"model": "iris", "inputs": inputs}).json()
    wait_for(
        lambda: db.jobs.find_one({"_id": ObjectId(big["_id"])})["progress"]["done"] > 0,
        60,
        "the large job to start",
    )
    closing = threading.Thread(target=server.app.extensions["sibyl"].close)
    closing.start()
    small = [
        api.post("/jobs", json={"model": "iris", "inputs": [features[i].tolist()]}).json()
        for i in range(3)
    ]
    closing.join(60)
    assert not closing.is_alive()
    assert db.jobs.find_one({"_id": ObjectId(big["_id"])})["status"] == "succeeded"
    # Another process runs them now (their leases had ten minutes to go), as a first
    # attempt: the one counted when they were inserted was given back.
    start_server()
    ids = [ObjectId(job["_id"]) for job in small]
    wait_for(
        lambda: db.jobs.count_documents({"_id": {"$in": ids}, "status": "succeeded"}) == 3,
        120,
        "another process to run the released jobs",
    )
    assert {job["attempts"] for job in db.jobs.find({"_id": {"$in": ids}})} == {1}


def test_get_wait_holds_until_finished_and_wait_zero_does_not(api, demo_models):
    created = api.post(
        "/jobs", json={"model": "iris", "inputs": [[5.1, 3.5, 1.4, 0.2]] * 50}
    ).json()
    job = api.get(f"/jobs/{created['_id']}?wait=30").json()
    assert job["status"] == "succeeded"
    assert job["finished_at"] is not None
    assert api.get(f"/jobs/{created['_id']}?wait=0").json()["status"] == "succeeded"


@pytest.mark.parametrize(
    ("model", "poison", "good", "error"),
    [
        ("overflowing", [3e38, 3e38], [1.0, 2.0], "is not finite"),
        ("embedding", [1, 9], [1, 2], "the model raised InvalidArgumentError: indices"),
    ],
)
def test_poison_job_fails_after_max_attempts_and_spares_the_others(
    start_server, db, model_files, model, poison, good, error
):
    api = start_server({"MAX_ATTEMPTS": 3, "MAX_WAIT_MS": 100}).api()
    assert upload_model(api, "fragile", model_files[model]).status_code == 201
    # One request, so the poison shares its first batch with the good jobs.
    jobs = [
        {"model": "fragile", "inputs": [good]},
        {"model": "fragile", "inputs": [poison]},
        {"model": "fragile", "inputs": [good, good]},
    ]
    created = api.post("/jobs", json=jobs).json()["_items"]
    states = [api.get(f"/jobs/{item['_id']}?wait=30").json() for item in created]
    assert [job["status"] for job in states] == ["succeeded", "failed", "succeeded"]
    assert states[1]["attempts"] == 3
    assert error in states[1]["error"]
    assert states[1]["error"].startswith("failed after 3 attempts")
    assert (
        db.predictions.count_documents({"job": db.jobs.find_one({"status": "failed"})["_id"]}) == 0
    )
    assert db.predictions.count_documents({}) == 3


@pytest.fixture
def cache_db(database, model_snapshot):
    """A database of its own, with the demo models: no other app's sweeps may run its jobs
    (their model caches work)."""
    for db in emptied(database, "sibyl_cache_test"):
        restore_models(db, model_snapshot)
        yield db


def test_a_model_the_cache_cannot_hold_fails_its_jobs_and_loaded_ones_serve(
    start_server, cache_db, model_files, tmp_path
):
    """The model cache unusable (its disk now a file; make reliability fills a real
    one): iris, loaded before, serves on; the jobs of a model not copied yet fail after
    MAX_ATTEMPTS saying why (they were claimed again for ever, attempts uncounted);
    once the cache is back, the same model serves."""
    disk = tmp_path / "disk"
    cache = disk / "models"
    server = start_server(
        {"MONGO_DBNAME": "sibyl_cache_test", "MODEL_CACHE_DIR": str(cache), "MAX_ATTEMPTS": 3}
    )
    api = server.api()
    iris = {"model": "iris", "inputs": [[5.1, 3.5, 1.4, 0.2]]}
    assert api.post("/jobs?wait=30", json=iris).json()["status"] == "succeeded"
    assert upload_model(api, "tiny", model_files["tiny"]).status_code == 201
    disk.rename(tmp_path / "moved")
    disk.write_text("a file where the cache's folder was")
    tiny = {"model": "tiny", "inputs": [[1.0, 2.0, 3.0, 4.0]]}

    failed = api.post("/jobs?wait=30", json=tiny).json()

    assert failed["status"] == "failed", failed
    assert failed["attempts"] == 3
    assert failed["error"] == (
        "failed after 3 attempts: the model could not be loaded: its file could not be "
        "written to the model cache (SIBYL_MODEL_CACHE_DIR): Not a directory"
    )
    assert api.post("/jobs?wait=30", json=iris).json()["status"] == "succeeded"
    disk.unlink()
    assert api.post("/jobs?wait=30", json=tiny).json()["status"] == "succeeded"
    wait_until_idle(cache_db)


def test_deleting_a_finished_job_deletes_its_predictions(api, db, demo_models):
    created = api.post(
        "/jobs?wait=30", json={"model": "iris", "inputs": [[5.1, 3.5, 1.4, 0.2]] * 3}
    ).json()
    job = api.get(f"/jobs/{created['_id']}").json()
    assert db.predictions.count_documents({}) == 3
    assert api.delete(f"/jobs/{job['_id']}", headers={"If-Match": job["_etag"]}).status_code == 204
    assert db.predictions.count_documents({}) == 0


def test_waited_answer_matches_the_stored_job(api, demo_models):
    answer = api.post(
        "/jobs?wait=30", json={"model": "iris", "inputs": [[5.1, 3.5, 1.4, 0.2]], "tags": {"t": 1}}
    ).json()
    stored = api.get(f"/jobs/{answer['_id']}").json()
    fields = [
        "status",
        "attempts",
        "progress",
        "started_at",
        "finished_at",
        "model_ref",
        "tags",
        "queued_at",
        "_created",
        "_updated",
        "lease",
        "error",
    ]
    assert {f: answer[f] for f in fields} == {f: stored[f] for f in fields}
    assert stored["lease"] is None and stored["attempts"] == 1
    assert "_etag" not in answer  # the job changed since it was inserted: GET it for its ETag
    assert "inputs" not in answer
