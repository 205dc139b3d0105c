"""Hooks of the jobs resource: model and input checks, hand-off to the engine, ?wait."""

from bson import ObjectId
from eve.methods.get import getitem_internal
from eve.render import JSONRenderer
from flask import Request, Response, abort, current_app, g, json, request

from schemas.common import FINISHED_STATUSES
from service.api.errors import unprocessable
from service.context import sibyl
from service.jobs.claims import utcnow
from service.jobs.completions import Waiter
from service.jobs.engine import Job
from service.registry import model_store
from service.registry.signature import InputError, check_inputs

# Fields a client may change after submitting a job.
PATCHABLE_FIELDS = {"tags"}
# What a finished job's predictions show inline (the rest is on the job).
INLINE_PREDICTION_FIELDS = ("_id", "index", "output", "label", "score")


def requested_wait() -> float:
    """Seconds from ?wait=, capped by MAX_REQUEST_WAIT_S; 0 when absent."""
    raw = request.args.get("wait")
    if raw is None:
        return 0.0
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < float("inf"):
        abort(400, description=f"wait must be a number of seconds, got {raw!r}")
    return min(seconds, current_app.config["MAX_REQUEST_WAIT_S"])


def on_pre_POST_jobs(request: Request) -> None:
    """Check ?wait= before anything is stored."""
    g.wait_seconds = requested_wait()


def on_insert_jobs(items: list[dict]) -> None:
    """Resolve each job's model and check its inputs; a bad job is a 422, nothing stored."""
    services = sibyl()
    lookup = services.models
    max_instances = current_app.config["MAX_INSTANCES_PER_JOB"]
    models: dict[str, dict] = {}
    issues = []
    g.checked_jobs = {}
    now = utcnow()
    # Run here: stored already leased to this process's dispatcher, so no other
    # runner takes them and no claim is needed. Otherwise free for workers.
    lease = services.dispatcher.queue.new_lease() if services.runs_jobs else None
    for position, job in enumerate(items):
        reference = job["model"]
        try:
            if reference not in models:
                models[reference] = lookup.resolve(reference)
            model = models[reference]
            arrays, count = check_inputs(job["inputs"], model["signature"]["inputs"], max_instances)
        except model_store.UnknownModel as error:
            issues.append((position, "model", str(error)))
            continue
        except InputError as error:
            issues.append((position, "inputs", str(error)))
            continue
        job.update(
            model_ref={"_id": model["_id"], "name": model["name"], "version": model["version"]},
            status="queued",
            attempts=1 if lease else 0,
            lease=lease,
            error=None,
            progress={"done": 0, "total": count},
            queued_at=now,
            started_at=None,
            finished_at=None,
            owner=None,
        )
        g.checked_jobs[id(job)] = (model, arrays, count)
    if issues:
        unprocessable(issues, bulk=isinstance(request.get_json(silent=True), list))


def on_inserted_jobs(items: list[dict]) -> None:
    """Hand the stored jobs to this process's dispatcher (in-process mode)."""
    services = sibyl()
    if g.get("wait_seconds"):
        services.completions.expect([job["_id"] for job in items])
    if not services.runs_jobs:
        return
    jobs = []
    for job in items:
        model, arrays, count = g.checked_jobs.pop(id(job))
        token, tags = job["lease"]["token"], job.get("tags") or {}
        jobs.append(Job(job["_id"], token, model, arrays, count, attempts=1, tags=tags))
    g.inserted_jobs = {job["_id"]: job for job in items}
    services.dispatcher.submit(jobs)


def on_post_POST_jobs(request: Request, payload: Response) -> None:
    """With ?wait=, answer with the finished jobs and their predictions."""
    seconds = g.get("wait_seconds")
    if not seconds or payload.status_code != 201:
        return
    body = json.loads(payload.get_data())
    items = body.get("_items", [body])
    ids = [ObjectId(item["_id"]) for item in items]
    services = sibyl()
    try:
        finished = services.completions.wait(services.db, ids, seconds, local=services.runs_jobs)
    finally:
        services.completions.release(ids)
    inserted = g.get("inserted_jobs", {})
    for position, (job_id, item) in enumerate(zip(ids, items, strict=True)):
        if job_id in finished:
            shown = finished_job(job_id, finished[job_id], inserted.get(job_id))
            items[position] = {**item, **shown}
            if "_etag" not in shown:
                del items[position]["_etag"]  # the insert's ETag is stale now
    payload.set_data(JSONRenderer().render(body if "_items" in body else items[0]))


def finished_job(job_id: ObjectId, waiter: Waiter, inserted: dict | None) -> dict:
    """The finished job, with its predictions in index order."""
    if waiter.fields is not None and inserted is not None:
        # Run in this process: the job is what was inserted plus what the engine
        # wrote, so it needs no read. Its new ETag is Eve's to compute on GET.
        document = {**inserted, **waiter.fields}
        document.pop("_etag", None)
    else:
        document = getitem_internal("jobs", _id=job_id)[0]
        document.pop("_links", None)  # the POST answer has the item's own links
    document.pop("inputs", None)  # the client has just sent them
    # Both sources are in index order: batches run a job's instances in order.
    predictions = waiter.predictions
    if document["status"] == "succeeded" and not predictions:
        predictions = sibyl().db.predictions.find({"job": job_id}).sort("index", 1)
    document["predictions"] = [
        {name: p.get(name) for name in INLINE_PREDICTION_FIELDS} for p in predictions
    ]
    return document


def on_pre_GET_jobs(request: Request, lookup: dict) -> None:
    """GET /v1/jobs/<id>?wait=: hold the request until the job finished or the wait ends."""
    seconds = requested_wait()
    if not seconds or "_id" not in lookup or not ObjectId.is_valid(str(lookup["_id"])):
        return
    job_id = ObjectId(str(lookup["_id"]))
    services = sibyl()
    services.completions.expect([job_id])
    try:
        job = services.db.jobs.find_one({"_id": job_id}, {"status": 1, "lease.worker": 1})
        if job is None or job["status"] in FINISHED_STATUSES:
            return
        holder = (job.get("lease") or {}).get("worker")
        local = services.runs_jobs and holder == services.dispatcher.queue.worker_id
        services.completions.wait(services.db, [job_id], seconds, local=local)
    finally:
        services.completions.release([job_id])


def on_update_jobs(updates: dict, original: dict) -> None:
    """Refuse changes to what a job computes: only its tags may be edited."""
    frozen = sorted(set(updates) - PATCHABLE_FIELDS - {"_updated", "_etag"})
    if frozen:
        abort(422, description=f"{', '.join(frozen)}: a submitted job can only change its tags")


def on_delete_item_jobs(item: dict) -> None:
    """Refuse to delete a job that is still queued or running."""
    if item.get("status") not in FINISHED_STATUSES:
        abort(409, description=f"job is {item.get('status')}: delete it once it has finished")


def on_deleted_item_jobs(item: dict) -> None:
    """A deleted job takes its predictions with it."""
    sibyl().db.predictions.delete_many({"job": item["_id"]})
