"""Workers mode: `run.py worker` processes drain the queue and outlive a killed worker."""

import signal

from bson import ObjectId
from conftest import wait_for

SETOSA = [5.1, 3.5, 1.4, 0.2]


def test_workers_drain_the_queue(queue_api, queue_db, queue_demo_models, start_worker):
    created = [
        queue_api.post("/jobs", json={"model": "iris", "inputs": [SETOSA] * (i + 1)}).json()
        for i in range(10)
    ]
    created.append(
        queue_api.post("/jobs", json={"model": "digits", "inputs": [[[0] * 8] * 8]}).json()
    )
    assert queue_db.jobs.count_documents({"status": "queued"}) == 11  # the API only queues

    workers = [start_worker(), start_worker()]
    for item in created:
        job = queue_api.get(f"/jobs/{item['_id']}?wait=60").json()
        assert job["status"] == "succeeded", job
    assert queue_db.predictions.count_documents({}) == sum(range(1, 11)) + 1

    # Woken by the change stream, not a slow poll: a new job is picked up at once.
    response = queue_api.post("/jobs?wait=20", json={"model": "iris", "inputs": [SETOSA]})
    assert response.json()["status"] == "succeeded"
    assert response.json()["predictions"][0]["label"] == "setosa"

    for worker in workers:
        worker.send_signal(signal.SIGTERM)
    assert [worker.wait(timeout=20) for worker in workers] == [0, 0]


def test_killed_worker_is_replaced_after_its_lease(
    queue_api, queue_db, queue_demo_models, start_worker
):
    count = 6000
    created = queue_api.post("/jobs", json={"model": "iris", "inputs": [SETOSA] * count}).json()
    job_id = created["_id"]

    first = start_worker(lease_seconds=2, max_batch_size=10)
    # Kill it mid-job: some predictions stored, not all.
    wait_for(
        lambda: (
            0 < queue_db.jobs.find_one({"_id": ObjectId(job_id)})["progress"]["done"] < count // 2
        ),
        120,
        "the first worker to make progress",
    )
    first.send_signal(signal.SIGKILL)
    first.wait()
    stored_by_first = queue_db.predictions.count_documents({"job": ObjectId(job_id)})
    assert 0 < stored_by_first < count

    start_worker(lease_seconds=2, max_batch_size=500)
    # (A loaded machine may take longer than one ?wait= allows: start-up, lease, 6000 rows.)
    job = wait_for(
        lambda: (
            (job := queue_api.get(f"/jobs/{job_id}?wait=30").json())["status"]
            in ("succeeded", "failed")
            and job
        ),
        120,
        "the second worker to finish the job",
    )
    assert job["status"] == "succeeded", job
    assert job["attempts"] == 2  # claimed again once the dead worker's lease ran out
    indexes = [
        p["index"] for p in queue_db.predictions.find({"job": ObjectId(job_id)}, {"index": 1})
    ]
    assert sorted(indexes) == list(range(count))  # exactly one prediction per instance


def test_a_worker_carries_the_jobs_owner_onto_its_predictions(
    queueing_server, queue_db, queue_demo_models, start_worker
):
    from service.store.access import Identity

    services = queueing_server.app.extensions["sibyl"]
    bob = Identity(owner="bob", sees_all=False)
    (document,) = services.jobs.submit([{"model": "iris", "inputs": [SETOSA] * 2}], bob)
    start_worker()
    assert services.jobs.wait([document["_id"]], 60, bob)
    assert {p["owner"] for p in queue_db.predictions.find({"job": document["_id"]})} == {"bob"}


def test_jobs_waiting_in_a_live_worker_keep_their_lease_and_attempts(
    queue_api, queue_db, queue_demo_models, start_worker
):
    """Found: a worker claimed up to a batch's worth of *jobs* (256, 41,863 instances)
    and counted an attempt on each at the claim; those waiting their turn got no lease
    extension, so another worker's sweep took them back, and acknowledged jobs failed
    without running. Two workers, leases of 2 s, batches of 50 rows, 60 jobs of 100
    instances: each job must run once, on its first attempt."""
    bulk = [{"model": "iris", "inputs": [SETOSA] * 100} for _ in range(60)]
    created = queue_api.post("/jobs", json=bulk)
    assert created.status_code == 201
    ids = [ObjectId(item["_id"]) for item in created.json()["_items"]]
    workers = [start_worker(lease_seconds=2, max_batch_size=50) for _ in range(2)]
    wait_for(
        lambda: queue_db.jobs.count_documents({"status": {"$in": ["queued", "running"]}}) == 0,
        180,
        "the workers to finish every job",
    )
    jobs = list(queue_db.jobs.find({"_id": {"$in": ids}}, {"status": 1, "attempts": 1}))
    assert {(job["status"], job["attempts"]) for job in jobs} == {("succeeded", 1)}
    assert queue_db.predictions.count_documents({"attempt": {"$ne": 1}}) == 0
    assert queue_db.predictions.count_documents({}) == 6000
    for worker in workers:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)
        assert "lost the lease" not in worker.log_path.read_text()


def test_a_worker_serves_small_jobs_between_the_batches_of_a_large_one(
    queue_api, queue_db, queue_demo_models, start_worker
):
    """A lone worker running a 6,000-instance job claims the small jobs queued meanwhile
    between two of its batches: they finish long before it does."""
    big = queue_api.post("/jobs", json={"model": "iris", "inputs": [SETOSA] * 6000}).json()
    worker = start_worker(max_batch_size=20, fair_slice_rows=5)
    wait_for(
        lambda: queue_db.jobs.find_one({"_id": ObjectId(big["_id"])})["progress"]["done"] > 0,
        120,
        "the large job to start",
    )
    small = [
        queue_api.post("/jobs?wait=60", json={"model": "iris", "inputs": [SETOSA]}).json()
        for _ in range(3)
    ]
    assert [job["status"] for job in small] == ["succeeded"] * 3
    stored_big = queue_db.jobs.find_one({"_id": ObjectId(big["_id"])})
    assert stored_big["status"] == "running" and stored_big["progress"]["done"] < 6000
    big_batches = set(queue_db.predictions.distinct("batch.id", {"job": ObjectId(big["_id"])}))
    small_batches = set(
        queue_db.predictions.distinct(
            "batch.id", {"job": {"$in": [ObjectId(job["_id"]) for job in small]}}
        )
    )
    assert not small_batches & big_batches  # batches of their own
    wait_for(
        lambda: queue_api.get(f"/jobs/{big['_id']}").json()["status"] == "succeeded",
        300,
        "the large job to finish",
    )
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
