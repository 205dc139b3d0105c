"""The models resource: uploaded model files, versioned per name, with signatures."""

from schemas.common import (
    ID,
    MODEL_NAME,
    MODEL_STAGES,
    MODEL_STATUSES,
    OWNER,
    PRODUCTION,
    READONLY_DATETIME,
    READONLY_INT,
    ROLES,
    SHARED,
    TENSOR_SPEC,
)

MODELS = {
    "item_title": "model",
    "description": "Uploaded model files, versioned per name, with their signatures; jobs "
    "name a model as `name`, `name@version` or its id.",
    # Every role may use any ready model; `owner` records the admin who uploaded it.
    "access": SHARED,
    "roles": {"read": ROLES, "write": ["admin"]},
    "resource_methods": ["GET", "POST"],
    # PATCH promotes a version: {"stage": "production"} and nothing else (hooks/models.py).
    "item_methods": ["GET", "PATCH", "DELETE"],
    "changeable_fields": ["stage"],
    "schema": {
        "_id": ID,
        "name": MODEL_NAME,
        # Assigned on upload: 1, 2, ... per name.
        "version": READONLY_INT,
        # The model file, kept in GridFS; loaded in a model runner (a confined process)
        # on upload (service/api/validation.py) and refused if it cannot be served.
        "file": {"type": "media", "required": True, "model_file": True},
        "format": {"type": "string", "readonly": True},
        "signature": {
            "type": "dict",
            "readonly": True,
            "schema": {
                "inputs": {"type": "list", "schema": TENSOR_SPEC},
                "outputs": {"type": "list", "schema": TENSOR_SPEC},
            },
        },
        # How long a 2-row call took when the upload was test-run: a slow model's
        # calls get a longer time limit (SIBYL_MODEL_CALL_TIMEOUT_MS).
        "test_call_ms": {"type": "float", "readonly": True, "nullable": True},
        # One class name per output unit, for classifiers.
        "labels": {"type": "list", "schema": {"type": "string"}, "nullable": True},
        "description": {"type": "string", "maxlength": 2000},
        "owner": OWNER,
        "status": {"type": "string", "allowed": MODEL_STATUSES, "readonly": True},
        # "production": what a job naming the model without a version runs on, one
        # version per name; null otherwise. Set on upload for the first version of a
        # name, by PATCH afterwards; refused in an upload (hooks/models.py).
        "stage": {"type": "string", "allowed": MODEL_STAGES, "nullable": True},
        # The version's last promotion: the owner of the key that made it (null
        # without authentication), and when. Kept once another version is promoted.
        "promoted_by": {"type": "string", "readonly": True, "nullable": True},
        "promoted_at": READONLY_DATETIME,
    },
    "mongo_indexes": {
        # Resolving "name@3", and uniqueness of versions.
        "name_version": ([("name", 1), ("version", -1)], {"unique": True}),
        # Resolving "name" to its production version; the database itself refuses a
        # second production version of a name.
        "production_per_name": (
            [("name", 1)],
            {"unique": True, "partialFilterExpression": {"stage": PRODUCTION}},
        ),
    },
    # What `where` may test (a listed field's sub-fields too: signature.inputs);
    # not the file. Sorting is allowed on those of them an index serves, and _id
    # (service/api/request_checks.py).
    "allowed_filters": [
        "_id",
        "_created",
        "_updated",
        "name",
        "version",
        "format",
        "signature",
        "labels",
        "description",
        "owner",
        "status",
        "stage",
        "promoted_by",
        "promoted_at",
    ],
}
