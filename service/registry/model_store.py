"""The model store: model documents in MongoDB, their files in GridFS, local copies.

Used by the hooks (resolving "iris", "iris@2" or an id to a model document),
by the engine (fetching a model's file to load it) and by the demo models.
"""

import shutil
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import gridfs
from bson import ObjectId
from pymongo import ReturnDocument

from schemas.common import ACTIVE_STATUSES
from service.errors import Conflict, UnknownModel
from service.registry import model_files
from service.store.access import Store

FILE_SUFFIX = {"keras": ".keras", "savedmodel": ".zip"}


def resolve(store: Store, reference: str) -> dict:
    """Find the model a job names: "name" (newest ready version), "name@3" or an id."""
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
    model = store.models.find_one(query, sort=[("version", -1)])
    if model is None:
        raise UnknownModel(f"no ready model {reference!r}; see GET /v1/models")
    return model


class ModelLookup:
    """resolve() with a short memory, to spare a query on every job.

    Model documents never change once stored, but "the newest version of iris"
    may be up to ttl_s old in processes other than the one that uploaded it.
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
        """A model was added or deleted here: look everything up afresh."""
        with self._lock:
            self._seen.clear()


def check_unused(store: Store, model: dict) -> None:
    """Refuse to delete a model that queued or running jobs still need."""
    busy = store.jobs.find_one(
        {"status": {"$in": ACTIVE_STATUSES}, "model_ref._id": model["_id"]}, {"_id": 1}
    )
    if busy is not None:
        raise Conflict("the model has queued or running jobs: delete it once they finish")


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
    """Return a loadable local path of the model's file, downloading it once."""
    model_id = str(model["_id"])
    model_format = model["format"]
    target = cache_dir / model_id
    if not target.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        # Build in a temporary folder, then rename: a crash never leaves half a model.
        staging = Path(tempfile.mkdtemp(dir=cache_dir, prefix=f".{model_id}-"))
        download = staging / f"download{FILE_SUFFIX[model_format]}"
        with open(download, "wb") as handle:
            handle.write(gridfs.GridFS(store.db).get(model["file"]).read())
        model_files.loadable_path(download, model_format, staging)
        download.unlink()
        try:
            staging.rename(target)
        except OSError:  # another process won the race: use its copy
            shutil.rmtree(staging, ignore_errors=True)
    if model_format == "savedmodel":
        return next(target.rglob("saved_model.pb")).parent
    return target / "model.keras"


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
    stores what the POST /v1/models hooks store (Eve computes the ETag on read).
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
        "_created": now,
        "_updated": now,
    }
    try:
        document["_id"] = store.models.insert_one(document).inserted_id
    except Exception:
        gridfs.GridFS(store.db).delete(file_id)
        raise
    return document
