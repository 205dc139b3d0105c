"""What an operator looks at first (`python run.py status`): the queue, the runners, the models.

Read-only, and only through indexes (schemas/jobs.py and schemas/models.py
`mongo_indexes`): the embedded database reads every document a query cannot bound
by an index. Counts stop at `count_limit`, so a status of a big queue stays quick
on MongoDB (SecantusDB still reads every queued job once: it applies a limit after
its index lookup).
"""

from datetime import UTC, datetime

from pymongo.database import Database

from service.store.access import Store

# Counts stop here: "at least this many" is all an operator needs past it.
COUNT_LIMIT = 100_000
# Before any lease: `lease.until` above it bounds the (status, lease.until) index to
# leased jobs (a free job's lease is null).
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# What the status shows of each model version (schemas/models.py).
MODEL_FIELDS = ("name", "version", "stage", "status")


def job_status(db: Database, count_limit: int = COUNT_LIMIT) -> dict:
    """The queue, who holds which jobs, and the models, as JSON-ready values."""
    store = Store(db)
    now = datetime.now(UTC)
    queued, oldest = queue(store, now, count_limit)
    runners, runners_capped = _runners(store, now, count_limit)
    return {
        "checked_at": _iso(now),
        "count_limit": count_limit,
        "queued": queued,
        "queued_capped": queued >= count_limit,
        "oldest_queued": oldest,
        "runners": runners,
        "runners_capped": runners_capped,
        "live_runners": [runner["worker"] for runner in runners if runner["live"]],
        "models": _models(store, count_limit),
    }


def queue(store: Store, now: datetime, count_limit: int = COUNT_LIMIT) -> tuple[int, dict | None]:
    """Queued jobs (at most count_limit) and the oldest of them (index: status, _created)."""
    depth, oldest = 0, None
    # One pass counts and finds the oldest: SecantusDB reads every queued job for
    # either, so a sorted query besides would read them twice.
    jobs = store.jobs.find({"status": "queued"}, {"model": 1, "_created": 1}).limit(count_limit)
    for job in jobs:
        depth += 1
        if oldest is None or _created(job) < _created(oldest):
            oldest = job
    if depth >= count_limit:
        # Jobs not read may be older.
        oldest = store.jobs.find_one(
            {"status": "queued"}, {"model": 1, "_created": 1}, sort=[("_created", 1)]
        )
    if oldest is None:
        return depth, None
    created = _created(oldest)
    return depth, {
        "id": str(oldest["_id"]),
        "model": oldest.get("model"),
        "queued_at": _iso(created),
        "age_s": round((now - created).total_seconds(), 1),
    }


def _runners(store: Store, now: datetime, count_limit: int) -> tuple[list[dict], bool]:
    """Jobs held by each runner (`lease.worker`): running, or claimed and still queued.

    One query per status (index: status, lease.until): SecantusDB bounds the index
    by both fields for one status, not for an `$in` of them."""
    runners: dict[str, dict] = {}
    capped = False
    for status, counted_as in (("running", "running"), ("queued", "claimed")):
        held = store.jobs.find(
            {"status": status, "lease.until": {"$gt": EPOCH}},
            {"_id": 0, "lease.worker": 1, "lease.until": 1},
        ).limit(count_limit)
        seen = 0
        for job in held:
            seen += 1
            lease = job["lease"]
            worker = str(lease.get("worker"))
            until = _utc(lease["until"])
            runner = runners.setdefault(worker, {"running": 0, "claimed": 0, "lease_until": until})
            runner[counted_as] += 1
            runner["lease_until"] = max(runner["lease_until"], until)
        capped = capped or seen >= count_limit
    listed = []
    for worker in sorted(runners):
        runner = runners[worker]
        until = runner["lease_until"]
        listed.append(
            {
                "worker": worker,
                # host:pid:api (an API process running jobs itself) or host:pid:worker
                "kind": worker.rsplit(":", 1)[-1] if worker.count(":") >= 2 else None,
                "running": runner["running"],
                "claimed": runner["claimed"],
                "lease_until": _iso(until),
                "lease_left_s": round((until - now).total_seconds(), 1),
                # A runner renews its leases while it lives (the heartbeat).
                "live": until > now,
            }
        )
    return listed, capped


def _models(store: Store, count_limit: int) -> list[dict]:
    """Every model version, by name then newest version (index: name, version)."""
    projection = {"_id": 0, **dict.fromkeys(MODEL_FIELDS, 1)}
    models = store.models.find({}, projection).sort([("name", 1), ("version", -1)])
    return [
        {field: model.get(field) for field in MODEL_FIELDS} for model in models.limit(count_limit)
    ]


def _created(job: dict) -> datetime:
    # Every job has one (Eve's, or claims.new_job); one without shows as the oldest,
    # as it sorts in MongoDB (null before dates).
    return _utc(job.get("_created") or EPOCH)


def _utc(moment: datetime) -> datetime:
    """Aware UTC, whether the client was made tz_aware or not (MongoDB stores UTC)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
