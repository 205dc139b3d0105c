"""Schema fragments shared by the resources: statuses, owner, tags, tensors."""

JOB_STATUSES = ["queued", "running", "succeeded", "failed", "cancelled"]
ACTIVE_STATUSES = ["queued", "running"]
FINISHED_STATUSES = ["succeeded", "failed", "cancelled"]
MODEL_STATUSES = ["ready", "rejected"]
# The one stage a model version can be in (null otherwise): the version a job naming
# the model without a version runs on. One per name.
PRODUCTION = "production"
MODEL_STAGES = [PRODUCTION]

# Who may see a resource's documents (its `access`, service/store/access.py):
# owned: each belongs to the identity that stored it (its `owner`); a client reads,
#        changes and deletes only its own, admins and analysts all of them;
# shared: every role that may read the resource reads every document (`owner`, if
#        the schema has it, records who stored it).
# A resource that does not say is refused at start-up.
OWNED = "owned"
SHARED = "shared"
# The roles an API key can have (service/store/keys.py). A resource's `roles` says which
# of them may read it (GET) and write it (POST, PATCH, DELETE); without `roles`, every
# role reads, and an owned resource is written by admins and clients, a shared one by
# admins (service/api/roles.py).
ROLES = ["admin", "client", "analyst"]

# Set by the service, never by a client: Cerberus refuses them in a payload.
# (Eve would otherwise store a client's own `_id`.)
ID = {"type": "objectid", "readonly": True}
OWNER = {"type": "string", "readonly": True, "nullable": True}
READONLY_INT = {"type": "integer", "readonly": True}
READONLY_DATETIME = {"type": "datetime", "readonly": True, "nullable": True}

# Free-form labels a client attaches to a job; copied onto its predictions so
# analysts can filter them (`where={"tags.experiment": "a"}`). Their size, names
# and depth are capped (MAX_TAGS_*, service/api/validation.py): each prediction
# carries a copy.
TAGS = {"type": "dict", "default": {}, "allow_unknown": True, "tags_limits": True}

# A model name as used in URLs and in `name@version` references; never 24 hex
# digits, which a job reads as a model id (service/api/validation.py).
MODEL_NAME = {
    "type": "string",
    "regex": r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
    "not_a_model_id": True,
    "required": True,
}

# A tensor's description in a model signature.
TENSOR_SPEC = {
    "type": "dict",
    "schema": {
        "name": {"type": "string"},
        "shape": {"type": "list", "schema": {"type": "integer", "nullable": True}},
        "dtype": {"type": "string"},
    },
}
