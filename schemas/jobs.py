"""The jobs resource: a client's request to run a model on a list of inputs."""

from schemas.common import (
    ID,
    JOB_STATUSES,
    OWNED,
    OWNER,
    READONLY_DATETIME,
    READONLY_INT,
    ROLES,
    TAGS,
)

JOBS = {
    "item_title": "job",
    "description": "A request to run a model on a list of inputs: its status, progress and "
    "timings. Its predictions are in /v1/predictions.",
    # Each job is its owner's: a client sees only its own (admins and analysts all).
    "access": OWNED,
    "roles": {"read": ROLES, "write": ["admin", "client"]},
    "resource_methods": ["GET", "POST"],
    # POST goes to the job service (service/api/jobs.py). PATCH changes tags only;
    # DELETE is refused while the job is queued or running (POST <id>/cancel stops it).
    "item_methods": ["GET", "PATCH", "DELETE"],
    # What a PATCH may change (service/jobs/service.py); the page's form offers these.
    "changeable_fields": ["tags"],
    # Shown to admins only: the lease's token fences the runner's writes.
    "internal_fields": ["lease"],
    # A PATCH of tags replaces them (and they are carried onto the job's predictions).
    "merge_nested_documents": False,
    # The answer to a POST shows where the job stands and what it runs on.
    "extra_response_fields": ["status", "model_ref"],
    "schema": {
        "_id": ID,
        # As submitted: "iris", "iris@2" or a model id.
        "model": {"type": "string", "required": True, "empty": False, "maxlength": 100},
        # What `model` resolved to when the job was accepted.
        "model_ref": {
            "type": "dict",
            "readonly": True,
            "schema": {
                "_id": {"type": "objectid"},
                "name": {"type": "string"},
                "version": {"type": "integer"},
            },
        },
        # A list of instances; for a model with several named inputs, either a
        # list of {name: value} instances or a dict {name: [values...]}.
        "inputs": {"type": ["list", "dict"], "required": True, "empty": False},
        "tags": TAGS,
        "owner": OWNER,
        # The X-Request-ID of the request that created the job (service/api/request_ids.py),
        # to find its log lines; null for a job submitted outside a request.
        "request_id": {"type": "string", "readonly": True, "nullable": True},
        "status": {"type": "string", "allowed": JOB_STATUSES, "readonly": True},
        "attempts": READONLY_INT,
        # Which worker holds the job, until when, and the claim token that every
        # completing write filters on.
        "lease": {"type": "dict", "readonly": True, "nullable": True},
        "error": {"type": "string", "readonly": True, "nullable": True},
        "progress": {
            "type": "dict",
            "readonly": True,
            "schema": {"done": {"type": "integer"}, "total": {"type": "integer"}},
        },
        "queued_at": READONLY_DATETIME,
        "started_at": READONLY_DATETIME,
        "finished_at": READONLY_DATETIME,
    },
    "mongo_indexes": {
        # The dispatcher's and the clients' "what is queued / what failed".
        # (Also "does this model still have work?" before a delete: active jobs are few.)
        "status_created": [("status", 1), ("_created", 1)],
        # Finding jobs whose lease expired.
        "status_lease": [("status", 1), ("lease.until", 1)],
        # Listing jobs newest first.
        "created": [("_created", -1)],
        # A client's queued and running jobs, counted against its quota on each
        # POST (service/jobs/service.py), and its own listings, newest first.
        # Every index costs each job write, so there are no others.
        "owner_status": [("owner", 1), ("status", 1)],
        "owner_created": [("owner", 1), ("_created", -1)],
        # Ended jobs whose developers' hooks are yet to hear of it (service/jobs/
        # events.py); sparse: it holds none of the jobs of an app without hooks.
        "hooks_pending": ([("hooks_pending_since", 1)], {"sparse": True}),
    },
    # What `where` may test (a listed field's sub-fields too: tags.<name>); not the
    # inputs (large), nor the lease (the runners' business). Sorting is allowed on
    # those of them an index serves, and _id (service/api/request_checks.py).
    "allowed_filters": [
        "_id",
        "_created",
        "_updated",
        "model",
        "model_ref",
        "status",
        "tags",
        "owner",
        "attempts",
        "error",
        "progress",
        "queued_at",
        "started_at",
        "finished_at",
    ],
}
