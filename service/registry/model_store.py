"""The model store: model documents in MongoDB, their files in GridFS, local copies.

Used by the hooks (resolving "iris", "iris@2" or an id to a model document;
promoting a version to production), by the engine (fetching a model's file to
load it) and by the demo models.

"iris" means the version of iris an admin promoted (`stage: "production"`), never
merely the newest: an upload does not take the traffic of a name. The first
version of a name is promoted on upload; later ones wait for a PATCH. The
database holds one production version per name (a unique partial index,
schemas/models.py), and a promotion demotes the previous one in the same
transaction, so readers see exactly one before and after.
"""

import contextlib
import secrets
import shutil
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import gridfs
from bson import ObjectId
from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from schemas.common import ACTIVE_STATUSES, PRODUCTION
from service.errors import Conflict, Rejected, UnknownModel
from service.registry import model_files
from service.registry.runner import RunnerUnavailable
from service.store.access import Store

FILE_SUFFIX = {"keras": ".keras", "savedmodel": ".zip"}


def resolve(store: Store, reference: str) -> dict:
    """Find the model a job names: "name" (its production version), "name@3" or an id."""
    if ObjectId.is_valid(reference) and len(reference) == 24:
        model = store.models.find_one({"_id": ObjectId(reference), "status": "ready"})
        if model is None:
            raise UnknownModel(f"no ready model with id {reference}")
        return model
    name, at, version = reference.partition("@")
    query: dict = {"name": name, "status": "ready"}
    if at:
        if not version.isdigit():
            raise UnknownModel(f"{reference!r}: the version after @ must be a number")
        query["version"] = int(version)
    else:
        query["stage"] = PRODUCTION
    model = store.models.find_one(query)
    if model is not None:
        return model
    if not at:
        newest = store.models.find_one(
            {"name": name, "status": "ready"}, {"version": 1}, sort=[("version", -1)]
        )
        if newest is not None:
            raise UnknownModel(
                f"no production version of {name!r}; promote one with PATCH /v1/models/<id> "
                f"or name a version {name}@{newest['version']}"
            )
    raise UnknownModel(f"no ready model {reference!r}; see GET /v1/models")


class ModelLookup:
    """resolve() with a short memory, to spare a query on every job.

    "The production version of iris" may be up to ttl_s old in processes other
    than the one that uploaded or promoted it (those forget at once).
    """

    MAX_ENTRIES = 1000

    def __init__(self, store: Store, ttl_s: float):
        self.store = store
        self.ttl_s = ttl_s
        self._seen: dict[str, tuple[float, dict]] = {}
        self._lock = threading.Lock()

    def resolve(self, reference: str) -> dict:
        now = time.monotonic()
        hit = self._seen.get(reference)
        if hit is not None and now - hit[0] < self.ttl_s:
            return hit[1]
        model = resolve(self.store, reference)
        with self._lock:
            if len(self._seen) >= self.MAX_ENTRIES:
                self._seen.clear()
            self._seen[reference] = (now, model)
        return model

    def forget(self) -> None:
        """A model was added, promoted or deleted here: look everything up afresh."""
        with self._lock:
            self._seen.clear()


def check_deletable(store: Store, model: dict) -> None:
    """Refuse to delete a model that queued or running jobs still need, or the production
    version of a name that has others (one of them must be promoted first)."""
    busy = store.jobs.find_one(
        {"status": {"$in": ACTIVE_STATUSES}, "model_ref._id": model["_id"]}, {"_id": 1}
    )
    if busy is not None:
        raise Conflict("the model has queued or running jobs: delete it once they finish")
    if model.get("stage") != PRODUCTION:
        return
    other = store.models.find_one(
        {"name": model["name"], "_id": {"$ne": model["_id"]}}, {"version": 1}
    )
    if other is not None:
        raise Conflict(
            f"version {model['version']} is the production version of {model['name']!r}: "
            f'promote another version first (PATCH /v1/models/<id> {{"stage": "production"}})'
        )


def check_upload(fields: dict) -> None:
    """An upload does not choose its stage: the first version of a name is promoted,
    later ones by PATCH."""
    if "stage" in fields:
        raise Rejected(
            [
                (
                    0,
                    "stage",
                    "set by the service: the first version of a name is promoted on upload, "
                    'later ones with PATCH /v1/models/<id> {"stage": "production"}',
                )
            ]
        )


def check_promotion(fields: dict) -> None:
    """A model's PATCH promotes it: {"stage": "production"}, and nothing else."""
    issues = [
        (0, field, f'a model\'s PATCH may only set {{"stage": "production"}}, not {field}')
        for field in sorted(set(fields) - {"stage"})
    ]
    if "stage" not in fields:
        issues.append((0, "stage", 'required: PATCH {"stage": "production"} promotes a version'))
    elif fields["stage"] != PRODUCTION:
        issues.append(
            (
                0,
                "stage",
                f"{fields['stage']!r}: the only stage a PATCH may set is 'production' "
                "(promoting a version demotes the current one)",
            )
        )
    if issues:
        raise Rejected(issues)


def stage_of_new_version(store: Store, name: str, owner: str | None, now: datetime) -> dict:
    """The stage fields of a version being stored: production for the first version of a
    name (none is in production), none for later ones."""
    if store.models.find_one({"name": name, "stage": PRODUCTION}, {"_id": 1}) is not None:
        return {"stage": None, "promoted_by": None, "promoted_at": None}
    # Two first uploads at once both get here: the unique index refuses the second (409).
    return {"stage": PRODUCTION, "promoted_by": owner, "promoted_at": now}


# Promotions of one name retried after losing a race the transaction could not retry.
PROMOTION_ATTEMPTS = 5


def promote(store: Store, model: dict, owner: str | None) -> dict:
    """Make the model the production version of its name; return the fields written.

    One transaction demotes the current production version and promotes this one:
    readers see exactly one before and after; of two concurrent promotions the
    later one wins. Promoting the production version changes nothing.
    Both documents drop their stored `_etag` or get a fresh one: Eve's If-Match
    sees the change.
    """
    now = datetime.now(UTC).replace(microsecond=0)
    promoted = {
        "stage": PRODUCTION,
        "promoted_by": owner,
        "promoted_at": now,
        "_updated": now,
        "_etag": secrets.token_hex(20),
    }

    def write(session) -> dict:
        current = store.models.find_one(
            {"name": model["name"], "stage": PRODUCTION}, session=session
        )
        if current is not None and current["_id"] == model["_id"]:
            return {field: current.get(field) for field in promoted}
        if current is not None:
            store.models.update_one(
                {"_id": current["_id"], "stage": PRODUCTION},
                {"$set": {"stage": None, "_updated": now}, "$unset": {"_etag": ""}},
                session=session,
            )
        result = store.models.update_one(
            {"_id": model["_id"], "status": "ready"}, {"$set": promoted}, session=session
        )
        if result.matched_count == 0:
            raise Conflict(f"model {model['_id']} was deleted meanwhile")
        return promoted

    # A DuplicateKeyError: another version was promoted between this one's read and
    # write without a write conflict (there was no production version to demote);
    # read again, and demote it.
    for _ in range(PROMOTION_ATTEMPTS - 1):
        with contextlib.suppress(DuplicateKeyError):
            return store.in_transaction(write)
    return store.in_transaction(write)


def promote_unstaged(store: Store) -> list[str]:
    """Models stored before stages existed: each name with no production version gets its
    newest ready version promoted (the one its jobs ran on); return those names."""
    unstaged: dict[str, dict] = {}
    for model in store.models.find(
        {"stage": {"$exists": False}, "status": "ready"}, {"name": 1, "version": 1, "status": 1}
    ):
        newest = unstaged.get(model["name"])
        if newest is None or model["version"] > newest["version"]:
            unstaged[model["name"]] = model
    promoted = []
    for name, newest in unstaged.items():
        if store.models.find_one({"name": name, "stage": PRODUCTION}, {"_id": 1}) is None:
            promote(store, newest, owner=None)
            promoted.append(name)
        store.models.update_many(
            {"name": name, "stage": {"$exists": False}},
            {"$set": {"stage": None, "promoted_by": None, "promoted_at": None}},
        )
    return promoted


def next_version(store: Store, name: str) -> int:
    """Take the next version number of a name from an atomic counter."""
    counter = store.counters.find_one_and_update(
        {"_id": f"models:{name}"},
        {"$inc": {"seq": 1}},
        upsert=True,
        return_document=ReturnDocument.AFTER,
    )
    return counter["seq"]


def local_copy(store: Store, model: dict, cache_dir: Path) -> Path:
    """Return a loadable local path of the model's file, downloading it once.

    RunnerUnavailable, saying why, when it cannot be made: the cache's disk full or
    unwritable (models copied before go on serving from their copies), or a stored
    file the checks now refuse. Nothing of a failed copy is left in the cache."""
    model_id = str(model["_id"])
    model_format = model["format"]
    target = cache_dir / model_id
    if not target.exists():
        try:
            _download(store, model, cache_dir, target)
        except OSError as error:
            # The reason, never the server's path: it reaches the job's owner.
            raise RunnerUnavailable(
                "its file could not be written to the model cache (SIBYL_MODEL_CACHE_DIR): "
                f"{error.strerror or type(error).__name__}"
            ) from None
        except model_files.ModelFileError as error:
            raise RunnerUnavailable(str(error)) from None
    if model_format == "savedmodel":
        return next(target.rglob("saved_model.pb")).parent
    return target / "model.keras"


def _download(store: Store, model: dict, cache_dir: Path, target: Path) -> None:
    """The model's file from GridFS, unpacked at target."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Build in a temporary folder, then rename: a crash never leaves half a model.
    staging = Path(tempfile.mkdtemp(dir=cache_dir, prefix=f".{target.name}-"))
    try:
        download = staging / f"download{FILE_SUFFIX[model['format']]}"
        with open(download, "wb") as handle:
            handle.write(gridfs.GridFS(store.db).get(model["file"]).read())
        model_files.loadable_path(download, model["format"], staging)
        download.unlink()
        staging.rename(target)
    except Exception:
        shutil.rmtree(staging, ignore_errors=True)
        if not target.exists():  # else another process's copy won the rename: use it
            raise


def register(
    store: Store,
    name: str,
    path: Path,
    *,
    labels: list[str] | None = None,
    description: str = "",
    limits: dict,
) -> dict:
    """Inspect and store a model file without the HTTP layer (used for demo models).

    Writes through the driver because it runs before any API process exists; it
    stores what the POST /v1/models hooks store (Eve computes the ETag on read),
    the first version of a name promoted like an upload's.
    """
    inspection = model_files.inspect(path, **limits)
    model_files.check_labels(labels, inspection["signature"])
    file_id = gridfs.GridFS(store.db).put(path.read_bytes(), filename=path.name)
    now = datetime.now(UTC).replace(microsecond=0)
    document = {
        "name": name,
        "version": next_version(store, name),
        "file": file_id,
        **inspection,
        "labels": labels,
        "description": description,
        "owner": None,
        "status": "ready",
        **stage_of_new_version(store, name, None, now),
        "_created": now,
        "_updated": now,
    }
    try:
        document["_id"] = store.models.insert_one(document).inserted_id
    except Exception:
        gridfs.GridFS(store.db).delete(file_id)
        raise
    return document
