"""API keys: made, stored as hashes, checked on every request, revoked.

A key reads `sibyl_<id>_<secret>`: the prefix makes a leaked key recognisable (secret
scanners, logs), the id is what people quote ("revoke k7hx2m9qpa"), and the secret is
32 random bytes. The database keeps only the SHA-256 of the whole key. A slow hash
(bcrypt, scrypt) protects guessable passwords; a key has 256 bits of entropy, so a fast
hash is as safe and costs microseconds, not the 100 ms a password hash would add to
every request. The stored hash is compared with hmac.compare_digest.

Each process remembers a valid key for KEY_CACHE_SECONDS: a key revoked elsewhere stops
working here within that bound (and at once in the process that revoked it); requests
that manage keys or models ask the database every time (`fresh`). Failures are never
answered from memory: a missing, malformed, unknown, revoked or wrong-secret key costs
the same one lookup by hash (a miss, whatever the key named) and the same comparisons,
so they cannot be told apart by timing.
"""

import hashlib
import hmac
import logging
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError

import schemas.common

log = logging.getLogger(__name__)

ROLES = tuple(schemas.common.ROLES)
PREFIX = "sibyl_"
# Lower-case letters and digits a person reads back without confusing (no 0/o, 1/l/i).
ID_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"
ID_LENGTH = 10
SECRET_BYTES = 32
# Compared with when the presented key names no stored key, so that a failure costs
# what a wrong secret costs.
NO_HASH = hashlib.sha256(b"no such key").hexdigest()
# How often a key's last_used_at is written (at most), per process.
LAST_USED_EVERY_S = 60.0


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def key_id_of(key: str) -> str:
    """The id a key names, or "" when it is not shaped like one of ours."""
    if not key.startswith(PREFIX):
        return ""
    key_id, _, secret = key[len(PREFIX) :].partition("_")
    if len(key_id) != ID_LENGTH or not secret:
        return ""
    return key_id


def new_key() -> tuple[str, str]:
    """(key id, the whole key)."""
    key_id = "".join(secrets.choice(ID_ALPHABET) for _ in range(ID_LENGTH))
    return key_id, f"{PREFIX}{key_id}_{secrets.token_urlsafe(SECRET_BYTES)}"


@dataclass(frozen=True)
class ApiKey:
    """A stored key as the rest of the service sees it: never its hash."""

    id: str
    name: str
    role: str
    owner: str


class Keys:
    """The keys collection: create, check, list, revoke."""

    def __init__(self, collection: Collection, cache_seconds: float = 2.0):
        self.collection = collection
        self.cache_seconds = cache_seconds
        collection.create_index("hash", unique=True)
        # hash -> (when read, stored document): valid keys only.
        self._valid: dict[str, tuple[float, dict]] = {}
        self._last_used: dict[str, float] = {}
        self._lock = threading.Lock()

    def create(self, role: str, name: str, owner: str | None = None, key: str | None = None):
        """Store a new key; answer (its document without the hash, the key itself).

        owner: whose documents the key acts on; by default its name, which must then be
        no one's yet. Naming an existing owner explicitly gives it another key (a
        rotation); an owner stays with one role, so a client key can never be made to
        act as an admin's or analyst's owner.
        key: a chosen key (SIBYL_ADMIN_KEY), else a random one.
        """
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
        existing = self.collection.find_one({"owner": owner or name}, {"role": 1})
        if existing is not None and existing["role"] != role:
            raise ValueError(
                f"owner {owner or name!r} has {existing['role']} keys: choose another name or owner"
            )
        if existing is not None and owner is None:
            raise ValueError(
                f"owner {name!r} has keys already: to give it another one (a rotation), "
                f"name the owner explicitly; otherwise choose another name"
            )
        if key is None:
            key_id, key = new_key()
        else:
            key_id = key_id_of(key)
            if not key_id or len(key) < len(PREFIX) + ID_LENGTH + 1 + 43:
                raise ValueError(
                    f"a key reads {PREFIX}<{ID_LENGTH} letters or digits>_<at least 43 "
                    'characters of secret>; make one with `python -c "from '
                    'service.store.keys import new_key; print(new_key()[1])"`'
                )
        created = now()
        document = {
            "_id": key_id,
            "name": name,
            "role": role,
            "owner": owner or name,
            "hash": hash_key(key),
            "revoked": False,
            "revoked_at": None,
            "last_used_at": None,
            "_created": created,
            "_updated": created,
        }
        try:
            self.collection.insert_one(document)
        except DuplicateKeyError:
            raise ValueError(f"a key with id {key_id} exists already") from None
        document.pop("hash")
        return document, key

    def check(self, presented: str, fresh: bool = False) -> ApiKey | None:
        """The key a request presented, if it is valid; None otherwise (whatever the reason).

        fresh: ask the database even if this process saw the key valid moments ago.
        """
        key_id = key_id_of(presented)
        digest = hash_key(presented)
        moment = time.monotonic()
        cached = None if fresh else self._valid.get(digest)
        if cached is not None and moment - cached[0] < self.cache_seconds:
            return self._api_key(cached[1])
        # Every failure takes this path: one lookup by hash, the same comparisons.
        document = self.collection.find_one({"hash": digest})
        stored = document or {"_id": "-", "hash": NO_HASH, "revoked": True}
        valid = (
            hmac.compare_digest(stored["hash"], digest)
            and stored["_id"] == key_id
            and stored.get("revoked") is not True
        )
        with self._lock:
            if not valid:
                self._valid.pop(digest, None)
                return None
            if len(self._valid) > 10_000:
                self._valid.clear()
            self._valid[digest] = (moment, document)
        self._note_use(key_id, moment)
        return self._api_key(document)

    def _note_use(self, key_id: str, moment: float) -> None:
        """Record last_used_at, at most once a minute per key and process."""
        if moment - self._last_used.get(key_id, -LAST_USED_EVERY_S) < LAST_USED_EVERY_S:
            return
        self._last_used[key_id] = moment
        self.collection.update_one({"_id": key_id}, {"$set": {"last_used_at": now()}})

    @staticmethod
    def _api_key(document: dict) -> ApiKey:
        return ApiKey(document["_id"], document["name"], document["role"], document["owner"])

    def revoke(self, key_id: str) -> bool:
        """Revoke a key; False when there is no such key that still works."""
        moment = now()
        result = self.collection.update_one(
            {"_id": key_id, "revoked": {"$ne": True}},
            {"$set": {"revoked": True, "revoked_at": moment, "_updated": moment}},
        )
        self.forget(key_id)
        return result.modified_count == 1

    def forget(self, key_id: str) -> None:
        """Drop a key from this process's memory (revoked here)."""
        with self._lock:
            for digest, (_, document) in list(self._valid.items()):
                if document["_id"] == key_id:
                    self._valid.pop(digest, None)

    def get(self, key_id: str) -> dict | None:
        return self.collection.find_one({"_id": key_id}, {"hash": 0})

    def list(self) -> list[dict]:
        return list(self.collection.find({}, {"hash": 0}).sort("_created", 1))

    def has_admin(self) -> bool:
        return self.collection.find_one({"role": "admin", "revoked": {"$ne": True}}) is not None
