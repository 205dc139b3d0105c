"""The owner-scoped door to the data: every read and write of jobs, predictions and models.

Its rules, in one place (docs/ARCHITECTURE.md names them):
- every access is made for an Identity: the caller of a request, or Sibyl's own
  process (SYSTEM) acting for the owner recorded on the job it runs;
- reads, updates and deletes of owned resources (jobs, predictions) see only
  what the identity may see (`Identity.scope`);
- whatever a caller stores carries the caller as owner (`Identity.stamp`), set
  here and nowhere else; what SYSTEM stores for a job carries the job's owner.
Eve's Mongo layer (service/store/data.py) applies the same rules to Eve's
generated endpoints, for the identity authentication gave the request
(service/api/auth.py): a client key sees its owner's documents, admin and analyst
keys all of them; a request without one sees nothing (NOBODY). With
authentication off every caller is ANONYMOUS, which sees everything and owns
nothing.
"""

import functools
from dataclasses import dataclass

from pymongo import UpdateOne
from pymongo.collection import Collection
from pymongo.database import Database

# Resources whose documents belong to the identity that created them.
OWNED_RESOURCES = frozenset({"jobs", "predictions"})
# Bookkeeping only admins see: a job's lease holds the claim token its runner's
# writes are fenced by; a prediction's batch (its id and size) tells of other
# owners' jobs that shared the model call, its attempt of retries.
INTERNAL_FIELDS = {"jobs": ("lease",), "predictions": ("batch", "attempt")}


# Stores seen as other identities, kept for reuse (a request's identity, each time).
MAX_IDENTITIES_KEPT = 1024


@dataclass(frozen=True)
class Identity:
    """Who an access is made for: the owner it stores, and whether it sees all owners.

    A system identity is Sibyl's own process acting for the owners recorded in the
    documents it handles (a worker writing a job's predictions): it keeps the owner
    a document carries instead of stamping its own.
    """

    owner: str | None
    sees_all: bool
    system: bool = False
    # Who authenticated (service/auth/): the key's role and id; None for SYSTEM and
    # when authentication is off.
    role: str | None = None
    key_id: str | None = None

    def scope(self, resource: str, query: dict) -> dict:
        """The query, narrowed to what this identity may see of the resource."""
        if self.sees_all or resource not in OWNED_RESOURCES:
            return query
        if "owner" not in query:
            # A top-level field, not {"$and": [...]}: the embedded database plans no
            # index for a top-level $and and scans the collection (a client's GET of
            # one job by _id read every job: 677 ms at 3,000 jobs, 1.4 ms merged).
            return {**query, "owner": self.owner}
        return {"$and": [query, {"owner": self.owner}]}

    def sees(self, resource: str, document: dict) -> bool:
        """Whether the document (read with its owner) is one this identity may see."""
        return (
            self.sees_all or resource not in OWNED_RESOURCES or document.get("owner") == self.owner
        )

    def hidden(self, resource: str) -> tuple[str, ...]:
        """Fields of the resource this identity is never shown."""
        if self.role in (None, "admin"):  # admins, Sibyl itself, authentication off
            return ()
        return INTERNAL_FIELDS.get(resource, ())

    def stamp(self, resource: str, document: dict) -> dict:
        """The document, owned by this identity (whatever owner it claimed)."""
        if self.system:
            document.setdefault("owner", None)
        elif resource in OWNED_RESOURCES or resource == "models":
            document["owner"] = self.owner
        return document


# Authentication off (SIBYL_AUTH=off): every request sees everything and owns nothing.
ANONYMOUS = Identity(owner=None, sees_all=True)
# A request that no one authenticated as, should it ever reach the data: it sees no
# owned document (no owner is named so) and may store nothing of its own.
NOBODY = Identity(owner="\0nobody", sees_all=False, role="nobody")
# Sibyl's own processes (dispatcher, workers, sweeps): they see every job to run it.
SYSTEM = Identity(owner=None, sees_all=True, system=True)


class ScopedCollection:
    """A collection seen through an identity: filters scoped, inserts stamped.

    Only the operations the service uses; each one says why it is safe.
    """

    def __init__(self, collection: Collection, resource: str, identity: Identity):
        self.collection = collection
        self.resource = resource
        self.identity = identity

    def _scope(self, query: dict) -> dict:
        return self.identity.scope(self.resource, query)

    def find(self, query: dict, *args, **kwargs):
        return self.collection.find(self._scope(query), *args, **kwargs)

    def find_one(self, query: dict, *args, **kwargs):
        return self.collection.find_one(self._scope(query), *args, **kwargs)

    def insert_one(self, document: dict):
        return self.collection.insert_one(self.identity.stamp(self.resource, document))

    def insert_many(self, documents: list[dict], ordered: bool = True, session=None):
        for document in documents:
            self.identity.stamp(self.resource, document)
        return self.collection.insert_many(documents, ordered=ordered, session=session)

    def update_one(self, query: dict, update: dict, **kwargs):
        return self.collection.update_one(self._scope(query), update, **kwargs)

    def update_many(self, query: dict, update: dict, **kwargs):
        return self.collection.update_many(self._scope(query), update, **kwargs)

    def update_op(self, query: dict, update: dict) -> UpdateOne:
        """One update of a bulk_write, scoped like update_one."""
        return UpdateOne(self._scope(query), update)

    def bulk_write(self, operations: list, ordered: bool = True):
        # Operations come from update_op, already scoped.
        return self.collection.bulk_write(operations, ordered=ordered)

    def replace_one(self, query: dict, document: dict, **kwargs):
        document = self.identity.stamp(self.resource, document)
        return self.collection.replace_one(self._scope(query), document, **kwargs)

    def delete_many(self, query: dict):
        return self.collection.delete_many(self._scope(query))

    def watch(self, pipeline: list, **kwargs):
        """A change stream of the collection; only Sibyl's own processes watch."""
        if not self.identity.system:
            raise PermissionError("only Sibyl's own processes watch collections")
        return self.collection.watch(pipeline, **kwargs)


class Store:
    """The database as one identity sees it."""

    def __init__(self, db: Database, identity: Identity = SYSTEM):
        self.db = db
        self.identity = identity
        self.jobs = ScopedCollection(db.jobs, "jobs", identity)
        self.predictions = ScopedCollection(db.predictions, "predictions", identity)
        self.models = ScopedCollection(db.models, "models", identity)
        # Version counters of model names: no owner, no documents to see.
        self.counters = db.counters
        self._seen_as: dict[Identity, Store] = {}

    def in_transaction(self, write):
        """Run write(session) in a transaction, retried on transient errors, durable as
        every write: its writes land together or not at all, and are on disk when this
        returns if the write concern asks for the journal."""
        with self.db.client.start_session() as session:
            result = session.with_transaction(write, write_concern=self.db.write_concern)
        if self._commits_ignore_journal:
            # One journaled write flushes the journal up to and past the commit.
            self.db.journal_marks.update_one({"_id": "commit"}, {"$inc": {"n": 1}}, upsert=True)
        return result

    @functools.cached_property
    def _commits_ignore_journal(self) -> bool:
        """Whether a journaled commit needs help to be durable: SecantusDB (0.7) answers
        commitTransaction before its journal reaches the disk, whatever `j` says
        (SIGKILLed just after, the transaction was lost); MongoDB honours `j`."""
        if not self.db.write_concern.document.get("j"):
            return False
        return "secantusVersion" in self.db.client.admin.command("buildInfo")

    def acting_as(self, identity: Identity) -> "Store":
        """The same database, seen by another identity (made once per identity)."""
        if identity == self.identity:
            return self
        seen = self._seen_as.get(identity)
        if seen is None:
            if len(self._seen_as) >= MAX_IDENTITIES_KEPT:
                self._seen_as.clear()
            seen = self._seen_as[identity] = Store(self.db, identity)
        return seen
