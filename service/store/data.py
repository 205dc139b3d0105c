"""Eve's MongoDB data layer, with database failures surfacing as themselves."""

from eve.io.mongo import Mongo
from pymongo.errors import PyMongoError


class SibylMongo(Mongo):
    """Mongo data layer that lets PyMongo errors reach the 503 handler."""

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
