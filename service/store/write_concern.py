"""Eve's writes with the whole write concern of settings.py, journal included.

Eve 2.3.1 gives every collection it writes to (POST, PATCH, PUT, DELETE) the
write concern `WriteConcern(MONGO_WRITE_CONCERN["w"])`: `w` alone, which also
replaces the client's default. A 201 from POST /v1/jobs would then be
acknowledged before the job is journaled, whatever the setting says. The
mixin below builds it from every field of the setting instead.
"""

from eve.utils import config
from pymongo import WriteConcern
from pymongo.collection import Collection


def write_concern(options: dict) -> WriteConcern:
    """PyMongo's WriteConcern from MongoClient options ({"w", "journal", "wTimeoutMS"})."""
    return WriteConcern(
        w=options.get("w"),
        j=options.get("journal"),
        wtimeout=options.get("wTimeoutMS"),
    )


class JournaledWrites:
    """Mixin for Eve's Mongo data layer (listed before it): Eve's writes carry the
    resource's whole `mongo_write_concern` (settings.MONGO_WRITE_CONCERN)."""

    def get_collection_with_write_concern(self, datasource: str, resource: str) -> Collection:
        concern = write_concern(config.DOMAIN[resource]["mongo_write_concern"])
        return self.pymongo(resource).db[datasource].with_options(write_concern=concern)
