"""The owner-scoped door to the data: every read and write of jobs, predictions and models.

Its rules, in one place (docs/ARCHITECTURE.md names them):
- every access is made for an Identity: the caller of a request, or Sibyl's own
  process (SYSTEM) acting for the owner recorded on the job it runs;
- reads, updates and deletes of owned resources see only what the identity may see
  (`Identity.scope`); which resources are owned is their schemas/ entry's `access`
  (`declared_access`), so a resource added there is scoped without a change here;
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

import schemas
from schemas.common import OWNED, SHARED


@dataclass(frozen=True)
class Access:
    """What the data layer knows of one resource, read from its schemas/ entry."""

    # Its documents belong to the identity that stored them (`access: owned`).
    owned: bool
    # Its schema has `owner`: stamped with who stored the document (owned or not).
    has_owner: bool = False
    # Fields only admins see (`internal_fields`).
    internal_fields: tuple[str, ...] = ()


def declared_access(domain: dict) -> dict[str, Access]:
    """Each resource's Access from its entry; SystemExit at start-up naming a resource
    that does not declare `access` (owned or shared) or declares it wrongly: an owner
    field nobody scopes would let one client read another's documents."""
    declared = {}
    for name, resource in domain.items():
        access = resource.get("access")
        has_owner = "owner" in resource.get("schema", {})
        if access not in (OWNED, SHARED):
            found = f", not {access!r}" if access is not None else ""
            why = " (its schema has an `owner` field)" if has_owner else ""
            raise SystemExit(
                f'resource {name!r} must declare "access": "owned" (each document is '
                f'its owner\'s) or "shared" (every reader sees all){why}{found}: '
                "see docs/EXTENDING.md"
            )
        if access == OWNED and not has_owner:
            raise SystemExit(
                f'resource {name!r} is owned: its schema needs `"owner": OWNER` '
                "(schemas/common.py), which the data layer stamps"
            )
        declared[name] = Access(
            owned=access == OWNED,
            has_owner=has_owner,
            internal_fields=tuple(resource.get("internal_fields", ())),
        )
    return declared


@functools.cache
def schema_access() -> dict[str, Access]:
    """The resources of schemas/ (workers and the command line have no app's DOMAIN)."""
    return declared_access(schemas.DOMAIN)


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

    def scope(self, resource: Access, query: dict) -> dict:
        """The query, narrowed to what this identity may see of the resource."""
        if self.sees_all or not resource.owned:
            return query
        if "owner" not in query:
            # A top-level field, not {"$and": [...]}: the embedded database plans no
            # index for a top-level $and and scans the collection (a client's GET of
            # one job by _id read every job: 677 ms at 3,000 jobs, 1.4 ms merged).
            return {**query, "owner": self.owner}
        return {"$and": [query, {"owner": self.owner}]}

    def hidden(self, resource: Access) -> tuple[str, ...]:
        """Fields of the resource this identity is never shown."""
        if self.role in (None, "admin"):  # admins, Sibyl itself, authentication off
            return ()
        return resource.internal_fields

    def stamp(self, resource: Access, document: dict) -> dict:
        """The document, owned by this identity (whatever owner it claimed)."""
        if self.system:
            document.setdefault("owner", None)
        elif resource.owned or resource.has_owner:
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

    def __init__(self, collection: Collection, resource: Access, identity: Identity):
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
    """The database as one identity sees it.

    access: each resource's Access (`declared_access` of the app's DOMAIN); by default
    that of schemas/."""

    def __init__(
        self, db: Database, identity: Identity = SYSTEM, access: dict[str, Access] | None = None
    ):
        self.db = db
        self.identity = identity
        self.access = access if access is not None else schema_access()
        self.jobs = ScopedCollection(db.jobs, self.access["jobs"], identity)
        self.predictions = ScopedCollection(db.predictions, self.access["predictions"], identity)
        self.models = ScopedCollection(db.models, self.access["models"], identity)
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
            seen = self._seen_as[identity] = Store(self.db, identity, self.access)
        return seen
