"""The models resource: uploaded model files, versioned per name, with signatures."""

from schemas.common import ID, MODEL_NAME, MODEL_STATUSES, OWNER, READONLY_INT, TENSOR_SPEC

MODELS = {
    "item_title": "model",
    "resource_methods": ["GET", "POST"],
    "item_methods": ["GET", "DELETE"],
    "schema": {
        "_id": ID,
        "name": MODEL_NAME,
        # Assigned on upload: 1, 2, ... per name.
        "version": READONLY_INT,
        # The model file, kept in GridFS; loaded in a sandboxed child process
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
        # One class name per output unit, for classifiers.
        "labels": {"type": "list", "schema": {"type": "string"}, "nullable": True},
        "description": {"type": "string", "maxlength": 2000},
        "owner": OWNER,
        "status": {"type": "string", "allowed": MODEL_STATUSES, "readonly": True},
    },
    "mongo_indexes": {
        # Resolving "name" to its newest version, and uniqueness of versions.
        "name_version": ([("name", 1), ("version", -1)], {"unique": True}),
    },
}
