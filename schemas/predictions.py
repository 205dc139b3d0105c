"""The predictions resource: one document per input instance, written by the service."""

from schemas.common import ID, OWNED, OWNER, ROLES, TAGS

PREDICTIONS = {
    "item_title": "prediction",
    "description": "One document per input instance of a job: the model's output, and the "
    "label and score for classifiers.",
    # Each carries the owner of its job (the engine writes it for them).
    "access": OWNED,
    # Read-only over HTTP: only the inference engine writes predictions.
    "roles": {"read": ROLES, "write": []},
    "resource_methods": ["GET"],
    "item_methods": ["GET"],
    # Shown to admins only: the model call that wrote it (its id and size tell of other
    # owners' jobs in the same call) and the attempt.
    "internal_fields": ["batch", "attempt"],
    "schema": {
        "_id": ID,
        "job": {"type": "objectid", "data_relation": {"resource": "jobs"}},
        "model": {"type": "string"},
        "model_version": {"type": "integer"},
        # Position of the instance in the job's inputs.
        "index": {"type": "integer"},
        "output": {"type": "list"},
        # For classifiers with labels: the top class and its score.
        "label": {"type": "string", "nullable": True},
        "score": {"type": "float", "nullable": True},
        "tags": TAGS,
        "owner": OWNER,
        # Which model call produced it: {"id": ..., "size": rows in that call}.
        "batch": {"type": "dict"},
        # The job's attempt that wrote it (a retry overwrites an earlier attempt's rows).
        "attempt": {"type": "integer"},
    },
    "mongo_indexes": {
        # A retried job can never store an instance's prediction twice.
        "job_index": ([("job", 1), ("index", 1)], {"unique": True}),
        "model_created": [("model", 1), ("_created", -1)],
        "label": [("label", 1)],
        "score": [("score", -1)],
        "created": [("_created", -1)],
        # A client's own predictions, newest first.
        "owner_created": [("owner", 1), ("_created", -1)],
    },
    # What `where` may test (a listed field's sub-fields too: tags.<name>, output.0);
    # not the bookkeeping of exactly-once writes (batch, attempt). Sorting is allowed
    # on those of them an index serves, and _id (service/api/request_checks.py).
    "allowed_filters": [
        "_id",
        "_created",
        "_updated",
        "job",
        "model",
        "model_version",
        "index",
        "output",
        "label",
        "score",
        "tags",
        "owner",
    ],
}
