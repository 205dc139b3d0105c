"""Eve's MongoDB data layer: owner-scoped like the service's own access, errors surfacing.

Eve's generated endpoints read and write through here; the rules are those of
service/store/access.py, applied to the identity of the request.
"""

from eve.io.mongo import Mongo
from flask import g, has_request_context
from pymongo.errors import PyMongoError

from service.store.access import ANONYMOUS, NOBODY, Identity, declared_access
from service.store.write_concern import JournaledWrites


def request_identity() -> Identity:
    """Who the current request acts for, as authentication set it (service/api/auth.py).

    A request it did not set an identity for sees nothing (fail closed); outside
    requests, Sibyl's own set-up code acts unscoped.
    """
    if has_request_context():
        return g.get("identity", NOBODY)
    return ANONYMOUS


def without_fields(projection: dict | None, hidden: tuple[str, ...]) -> dict:
    """A MongoDB projection that also leaves out the hidden fields (and their sub-fields)."""
    if not projection or not any(projection.values()):
        return {**(projection or {}), **{field: 0 for field in hidden}}
    kept = {name: value for name, value in projection.items() if name.split(".")[0] not in hidden}
    # An inclusion left empty would mean "every field".
    return kept or {"_id": 1}


class SibylMongo(JournaledWrites, Mongo):
    """Mongo data layer scoped to the request's identity, with durable writes, letting
    PyMongo errors reach the 503 handler."""

    def init_app(self, app):
        super().init_app(app)
        # Which resources are owned, from the app's DOMAIN (checked in create_app).
        self.access = declared_access(app.config["DOMAIN"])

    def _datasource_ex(self, resource, query=None, *args, **kwargs):
        """Every find, update and delete Eve makes goes through here: scope its filter and
        leave out the fields the identity may not see."""
        source, query, projection, sort = super()._datasource_ex(resource, query, *args, **kwargs)
        identity, access = request_identity(), self.access[resource]
        hidden = identity.hidden(access)
        if hidden:
            projection = without_fields(projection, hidden)
        return source, identity.scope(access, query or {}), projection, sort

    def insert(self, resource, doc_or_docs):
        """Whatever a request stores is owned by its identity."""
        documents = [doc_or_docs] if isinstance(doc_or_docs, dict) else doc_or_docs
        identity, access = request_identity(), self.access[resource]
        for document in documents:
            identity.stamp(access, document)
        return super().insert(resource, doc_or_docs)

    def find(self, resource, req, sub_resource_lookup, perform_count=True):
        """Run Eve's find, re-raising the database error its count fallback hides."""
        try:
            return super().find(resource, req, sub_resource_lookup, perform_count)
        except TypeError as error:
            # When count_documents fails (the database is down, say), Eve 2.3.1
            # retries with Collection.count(), removed in PyMongo 4: the
            # TypeError it gets would be a 500 that hides the real cause.
            if isinstance(error.__context__, PyMongoError):
                raise error.__context__ from None
            raise
