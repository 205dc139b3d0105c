"""Cerberus rules of Sibyl's own, checked by Eve before anything is stored."""

import json
import tempfile
from pathlib import Path

from bson import ObjectId
from cerberus import Validator as CerberusValidator
from cerberus.schema import DefinitionSchema
from eve.io.mongo import Validator
from flask import current_app, g, has_app_context

from service.registry import model_files
from service.registry.runner import RunnerLimits


class CheckedSchema(DefinitionSchema):
    """A schema definition checked once: its copies and field updates skip the check.

    Cerberus copies the schema and sets every field again while normalising each
    document, re-checking (and hashing) each field's rules every time.
    """

    def __setitem__(self, key, value):
        self.schema[key] = value

    def copy(self) -> "CheckedSchema":
        clone = object.__new__(CheckedSchema)
        clone.__dict__.update(self.__dict__)
        clone.schema = self.schema.copy()
        return clone


# Where each app keeps its checked schemas: app.extensions[CHECKED_SCHEMAS] maps a
# resource schema's id() to (that schema, its CheckedSchema). One entry per resource,
# gone with the app.
CHECKED_SCHEMAS = "sibyl.checked_schemas"


class SibylValidator(Validator):
    """Eve's validator plus `model_file` (an upload must be a model Sibyl can serve),
    `not_a_model_id` and `tags_limits`.

    Eve builds a validator per request, and Cerberus then checks the resource's
    schema definition again, field by field, hashing it: about a fifth of a job
    POST's CPU. Here each resource schema is checked once per app and reused.
    """

    @property
    def schema(self):
        return self._schema

    @schema.setter
    def schema(self, schema):
        if not isinstance(schema, dict) or self.is_child:
            Validator.schema.fset(self, schema)
            return
        cache = current_app.extensions.setdefault(CHECKED_SCHEMAS, {}) if has_app_context() else {}
        checked = cache.get(id(schema))
        if checked is None or checked[0] is not schema:
            checked = (schema, CheckedSchema(self, schema))
            cache[id(schema)] = checked
        self._schema = checked[1]

    def _validate_readonly(self, read_only, field, value):
        """A new document naming a read-only field at all is refused, even as null.

        Eve lets a read-only value through when it equals the stored one, and a new
        document has none stored: `"owner": null` passed. (Sibyl sets these fields
        itself either way; the client must still learn it cannot.)

        The rule's arguments are validated against this schema:
        {'type': 'boolean'}
        """
        if read_only and self.persisted_document is None and not self.is_child:
            CerberusValidator._validate_readonly(self, read_only, field, value)
        else:
            super()._validate_readonly(read_only, field, value)

    def _validate_not_a_model_id(self, constraint, field, value):
        """Jobs read 24 hex digits as a model id: a model so named could never be used by name.

        The rule's arguments are validated against this schema:
        {'type': 'boolean'}
        """
        if constraint and isinstance(value, str) and len(value) == 24 and ObjectId.is_valid(value):
            self._error(field, "a model name may not look like a model id (24 hex digits)")

    def _validate_tags_limits(self, constraint, field, value):
        """Tags within MAX_TAGS_DEPTH, MAX_TAGS_KEYS and MAX_TAGS_BYTES (those the app sets):
        each prediction of the job carries a copy.

        The rule's arguments are validated against this schema:
        {'type': 'boolean'}
        """
        if not constraint or not isinstance(value, dict) or not has_app_context():
            return
        config = current_app.config
        max_depth, max_keys = config.get("MAX_TAGS_DEPTH"), config.get("MAX_TAGS_KEYS")
        max_bytes = config.get("MAX_TAGS_BYTES")
        depth, keys = tags_shape(value)
        if max_depth is not None and depth > max_depth:
            self._error(
                field,
                f"tags may nest at most {max_depth} levels deep (SIBYL_MAX_TAGS_DEPTH); "
                f"these nest {depth}",
            )
        elif max_keys is not None and keys > max_keys:
            self._error(
                field,
                f"tags may have at most {max_keys} names, counted at every level "
                f"(SIBYL_MAX_TAGS_KEYS); these have {keys}",
            )
        elif max_bytes is not None:
            encoded = json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)
            size = len(encoded.encode("utf-8", "surrogatepass"))
            if size > max_bytes:
                self._error(
                    field,
                    f"tags may take at most {max_bytes} bytes as JSON (SIBYL_MAX_TAGS_BYTES); "
                    f"these take {size}",
                )

    def validate(self, document, schema=None, update=False, normalize=True) -> bool:
        """Cerberus' validation, then the uploads' inspection if every other rule passed:
        a model is loaded in a child process (seconds of CPU) only for an otherwise
        valid request (name, fields, labels' type: the checks that cost nothing)."""
        self._uploads: list[tuple[str, object]] = []
        valid = super().validate(document, schema, update, normalize)
        uploads, self._uploads = self._uploads, []
        if valid and not self.is_child:
            for field, value in uploads:
                self._inspect_upload(field, value)
            valid = not self._errors
        return valid

    def _validate_model_file(self, constraint, field, value):
        """An upload to load in a model runner once every other rule passed (validate).

        The rule's arguments are validated against this schema:
        {'type': 'boolean'}
        """
        if constraint and hasattr(value, "save"):
            self._uploads.append((field, value))

    def _inspect_upload(self, field: str, value) -> None:
        """Check the file (cheap static checks first, then a model runner) and keep
        its signature for hooks/models.py."""
        config = current_app.config
        with tempfile.TemporaryDirectory() as workdir:
            upload = Path(workdir) / "upload"
            value.save(upload)
            value.stream.seek(0)  # Eve stores the same stream in GridFS next
            try:
                inspection = model_files.inspect(
                    upload,
                    max_bytes=config["MAX_MODEL_BYTES"],
                    limits=RunnerLimits.from_config(config),
                )
            except model_files.ModelFileError as error:
                self._refuse_upload(field, str(error))
                return
        try:
            model_files.check_labels(self.document.get("labels"), inspection["signature"])
        except model_files.ModelFileError as error:
            self._error("labels", str(error))
            return
        # Read back by hooks/models.py when the document is inserted.
        g.setdefault("inspected_models", []).append(inspection)

    def _refuse_upload(self, field: str, message: str) -> None:
        """Record an error on a file field.

        Cerberus deep-copies the field's value into the error, and an upload's
        stream cannot be copied: the file name stands in for it meanwhile.
        """
        upload = self.document[field]
        self.document[field] = getattr(upload, "filename", None) or "upload"
        try:
            self._error(field, message)
        finally:
            self.document[field] = upload


def tags_shape(tags: dict) -> tuple[int, int]:
    """How deep dicts and lists nest in tags (the tags themselves are 1), and how many
    names they hold at every level."""
    depth, keys = 0, 0
    stack = [(tags, 1)]
    while stack:
        node, level = stack.pop()
        depth = max(depth, level)
        children = node.values() if isinstance(node, dict) else node
        keys += len(node) if isinstance(node, dict) else 0
        stack.extend((child, level + 1) for child in children if isinstance(child, (dict, list)))
    return depth, keys
