"""Rate limits: per verified API key at its role's rate, per client address without a
valid key, and per key again for the costly operations; counted by `limits`.

The check runs between authentication and authorization (service/app.py), so it counts
each request against the key authentication verified, never against a header it has
not checked, and it counts the requests authorization is about to refuse too. Buckets:
- `key:<key id>`, "requests": every request with a valid key, at its role's rate
  (SIBYL_RATE_LIMITS admin=, client=, analyst=);
- `address:<client address>`, "requests": every request without a valid key (none,
  malformed, unknown, revoked, wrong secret), unrouted ones too, at the anonymous rate:
  a wrong key spends nobody's quota, and guessing keys is slow;
- `key:<key id>`, a scope of SCOPED_ROUTES ("uploads", "jobs", "exports"): the costly
  routes, counted once more at the scope's rate. A POST /v1/jobs is let in while the
  key has room for one more job, and charged after the answer with the jobs a 201
  stored (a bulk POST counts each; a refused POST nothing).
Health probes are never counted. Every counted answer carries RateLimit-Limit,
RateLimit-Remaining and RateLimit-Reset (seconds: the IETF draft's) of its limit with
the least left; a 429 also Retry-After, and names the limit in Eve's error shape.

Counts are `limits`' fixed windows (one counter per bucket and window), in each process's
memory by default or in a shared storage (SIBYL_RATE_LIMIT_STORAGE, settings.py).
`limits` is used directly, not through Flask-Limiter, whose per-request machinery (limit
objects rebuilt and hashed, rate strings parsed, context proxies) cost 124 µs a request
against 39 µs for the same counts and headers here; under the bench's load (iris jobs,
32 clients) keys and rate limits together now cost 0.1 ms of API CPU per job, about 1 %
of jobs/s (`make bench`, "Access control"; MemoryCounters below matters as much).
"""

import logging
import math
import time
from datetime import UTC, datetime, timedelta

from eve.endpoints import error_endpoint
from flask import Flask, Response, abort, current_app, g, request
from limits import RateLimitItem, WindowStats, parse_many
from limits.errors import ConfigurationError
from limits.storage import MemoryStorage, MongoDBStorage, Storage, storage_from_string
from limits.strategies import FixedWindowRateLimiter
from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError
from werkzeug.exceptions import TooManyRequests

from schemas.common import ROLES
from service.api.roles import PUBLIC, right_needed
from service.metrics import RATE_LIMITED

log = logging.getLogger(__name__)

ANONYMOUS = "anonymous"
# (endpoint, method) -> the scope its requests also count against, per key. An export
# route lands here as ("<endpoint>", "GET"): "exports"; its rate is configured already.
SCOPED_ROUTES: dict[tuple[str, str], str] = {
    ("models|resource", "POST"): "uploads",
    ("jobs|resource", "POST"): "jobs",
}
SCOPES = ("uploads", "jobs", "exports")
# What a 429 says each count counts.
COUNTED = {
    "requests": "requests",
    "uploads": "model uploads",
    "jobs": "jobs submitted",
    "exports": "exports",
}
# The first part of every counter's key in the storage.
NAMESPACE = "sibyl"
# Collections of the counts when they are kept in MongoDB ("counters" is Sibyl's own).
COUNTER_COLLECTION = "rate_limits"
WINDOW_COLLECTION = "rate_limit_windows"

# A limit a request is counted against: the rate, and whose count in which scope.
Counted = tuple[RateLimitItem, tuple[str, str]]


class RateLimits:
    """One app's rates, parsed once, and their counts in the configured storage."""

    def __init__(self, rates: dict[str, str], storage: Storage):
        # Shortest window first: the order a refusal is found in.
        self.rates = {
            name: sorted(parse_many(rate)) if rate else [] for name, rate in rates.items()
        }
        self.storage = storage
        self.windows = FixedWindowRateLimiter(storage)

    def hit(self, item: RateLimitItem, identifiers: tuple[str, str], cost: int = 1) -> bool:
        """Count cost against the limit; False when that took it past the limit."""
        return self.windows.hit(item, NAMESPACE, *identifiers, cost=cost)

    def has_room(self, item: RateLimitItem, identifiers: tuple[str, str]) -> bool:
        """Whether one more fits in the limit (counting nothing)."""
        return self.windows.test(item, NAMESPACE, *identifiers)

    def window(self, item: RateLimitItem, identifiers: tuple[str, str]) -> WindowStats:
        """When the current window ends, and how much of the limit is left in it."""
        return self.windows.get_window_stats(item, NAMESPACE, *identifiers)


def register(app: Flask) -> None:
    """Add the check as the app's next before_request (after authentication)."""
    config = app.config
    rates = checked_rates(config["RATE_LIMITS"])
    if not (config["AUTH"] and config["RATE_LIMITING"]):
        return
    storage = storage_for(config)
    if isinstance(storage, MemoryStorage) and config["WEB_WORKERS"] > 1:
        log.info(
            "rate limits are counted in each API process's memory: with %d workers a "
            "client may get up to %d times each limit (SIBYL_RATE_LIMIT_STORAGE=mongodb "
            "counts across them)",
            config["WEB_WORKERS"],
            config["WEB_WORKERS"],
        )
    app.extensions["rate_limits"] = RateLimits(rates, storage)
    app.before_request(check)
    app.after_request(charge_and_tell)


def checked_rates(rates: dict[str, str]) -> dict[str, str]:
    """The rates, each parsed once here so that a typo stops the start, naming it."""
    names = (*ROLES, ANONYMOUS, *SCOPES)
    missing = [name for name in names if name not in rates]
    if missing:
        raise SystemExit(f"SIBYL_RATE_LIMITS: no rate for {', '.join(missing)}")
    checked = {}
    for name in names:
        rate = rates[name].strip()
        if rate.lower() == "none":
            rate = ""  # no limit
        try:
            if rate:
                parse_many(rate)
        except ValueError:
            raise SystemExit(
                f"SIBYL_RATE_LIMITS: {name}={rates[name]!r} is not a rate: write it as "
                f"100/second, 20/second,1000/minute, 10 per 5 minutes, or none"
            ) from None
        checked[name] = rate
    return checked


def check() -> None:
    """Count the request against each of its limits; a 429 at the first one spent."""
    if right_needed(request.endpoint, request.method) == PUBLIC:
        return  # health probes: answered to anyone, never counted
    limits: RateLimits = current_app.extensions["rate_limits"]
    identity = g.get("identity")
    if identity is not None and identity.key_id:
        bucket, rate = f"key:{identity.key_id}", identity.role
    else:
        bucket, rate = f"address:{request.remote_addr}", ANONYMOUS
    counted: list[Counted] = [(item, (bucket, "requests")) for item in limits.rates[rate]]
    scope = SCOPED_ROUTES.get((request.endpoint or "", request.method))
    if scope is not None and rate != ANONYMOUS:  # (without a key: a 401 next)
        counted += [(item, (bucket, scope)) for item in limits.rates[scope]]
    g.rate_limits = counted
    for item, identifiers in counted:
        # The jobs a POST stores are charged after the answer (charge_and_tell).
        if identifiers[1] == "jobs":
            fits = limits.has_room(item, identifiers)
        else:
            fits = limits.hit(item, identifiers)
        if not fits:
            abort(refusal(limits, item, identifiers))


def refusal(limits: RateLimits, item: RateLimitItem, identifiers: tuple[str, str]) -> Response:
    """A 429 in Eve's error shape, naming the limit and when to retry."""
    window = limits.window(item, identifiers)
    # Reckoned once, so that the message and the headers (charge_and_tell) agree.
    g.rate_limit_shown = item, window, seconds_to_reset(window)
    bucket, scope = identifiers
    RATE_LIMITED.labels(scope).inc()
    identity = g.get("identity")
    if bucket.startswith("key:"):
        whose = f"key {identity.key_id} (role {identity.role})"
    else:
        whose = f"{request.remote_addr} without a valid API key"
    message = (
        f"rate limit exceeded: {rate_text(item, COUNTED[scope])} for {whose}; "
        f"retry in {g.rate_limit_shown[2]} s"
    )
    return error_endpoint(TooManyRequests(message))


def charge_and_tell(response: Response) -> Response:
    """Charge the jobs a POST stored; add the RateLimit headers (Retry-After on a 429)."""
    counted: list[Counted] = g.get("rate_limits") or []
    if not counted:
        return response
    limits: RateLimits = current_app.extensions["rate_limits"]
    if response.status_code == 201 and any(scope == "jobs" for _, (_, scope) in counted):
        # Parsed and checked before the view (service/api/request_checks.py): cached.
        body = request.get_json(silent=True)
        stored = len(body) if isinstance(body, list) else 1
        for item, identifiers in counted:
            if identifiers[1] == "jobs":
                # Counted even past the limit: the next POST then waits for the window.
                limits.hit(item, identifiers, cost=stored)
    shown = g.get("rate_limit_shown")
    if shown is None:  # the limit with the least left (the first of equals)
        item, window = min(
            ((item, limits.window(item, ids)) for item, ids in counted),
            key=lambda entry: entry[1].remaining,
        )
        shown = item, window, seconds_to_reset(window)
    item, window, reset = shown
    response.headers["RateLimit-Limit"] = str(item.amount)
    response.headers["RateLimit-Remaining"] = str(window.remaining)
    response.headers["RateLimit-Reset"] = str(reset)
    if response.status_code == 429:
        response.headers["Retry-After"] = str(reset)
    return response


def seconds_to_reset(window: WindowStats) -> int:
    return max(1, math.ceil(window.reset_time - time.time()))


def rate_text(item: RateLimitItem, counted: str) -> str:
    """`100 requests per second`, `10 model uploads per 5 minutes`."""
    window = item.GRANULARITY.name
    if item.multiples != 1:
        window = f"{item.multiples} {window}s"
    return f"{item.amount} {counted} per {window}"


def storage_for(config: dict) -> Storage:
    """The `limits` storage SIBYL_RATE_LIMIT_STORAGE names."""
    uri = config["RATE_LIMIT_STORAGE"]
    if uri in ("memory", "memory://"):
        return MemoryCounters()
    if uri == "mongodb":
        uri = config["MONGO_URI"]
    if uri.split("://")[0] not in ("mongodb", "mongodb+srv"):
        try:
            return storage_from_string(uri)
        except ConfigurationError as error:
            raise SystemExit(f"SIBYL_RATE_LIMIT_STORAGE: {error}") from None
    counters = MongoDBCounters(
        uri,
        database_name=config["MONGO_DBNAME"],
        counter_collection_name=COUNTER_COLLECTION,
        window_collection_name=WINDOW_COLLECTION,
        serverSelectionTimeoutMS=config["DB_TIMEOUT_MS"],
        connectTimeoutMS=config["DB_TIMEOUT_MS"],
        w=1,  # a count need not survive a crash of the database: no journal wait
    )
    # Connect (and index) now, not in each of the threads racing to be the first request.
    counters.check()
    return counters


class MemoryCounters(MemoryStorage):
    """`limits`' memory storage, with its expired counts dropped by the requests
    themselves, at most once a minute, instead of by a timer thread.

    MemoryStorage starts a thread to drop expired counts 10 ms after a count, a new one
    whenever the last has ended: under load a thread every few requests, each start a
    hand-over of the GIL among the request threads. That made a third of the API CPU
    the rate limits cost per job. A count read after its window is dropped anyway (get).
    """

    SWEEP_EVERY_S = 60.0

    def __init__(self):
        super().__init__()
        self.next_sweep = time.monotonic() + self.SWEEP_EVERY_S

    def _MemoryStorage__schedule_expiry(self) -> None:  # MemoryStorage's, name-mangled
        if time.monotonic() >= self.next_sweep:
            self.next_sweep = time.monotonic() + self.SWEEP_EVERY_S
            self._MemoryStorage__expire_events()


class MongoDBCounters(MongoDBStorage):
    """`limits`' MongoDB storage, with the end of a window compared with this process's
    clock instead of the server's `$$NOW`.

    SecantusDB (0.7.0b3) evaluates `$$NOW` alone, but compares against it as the string
    "$$NOW": `{"$lt": ["$expireAt", "$$NOW"]}` is always false there, so a counter never
    started a new window. On MongoDB both read the same.
    """

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        now = datetime.now(UTC)
        ended = {"$lt": ["$expireAt", now]}  # true too for a new counter (no expireAt)
        update = [
            {
                "$set": {
                    "count": {
                        "$cond": {"if": ended, "then": amount, "else": {"$add": ["$count", amount]}}
                    },
                    "expireAt": {
                        "$cond": {
                            "if": ended,
                            "then": now + timedelta(seconds=expiry),
                            "else": "$expireAt",
                        }
                    },
                }
            }
        ]
        for attempt in (1, 2):
            try:
                counter = self.counters.find_one_and_update(
                    {"_id": key},
                    update,
                    upsert=True,
                    projection=["count"],
                    return_document=ReturnDocument.AFTER,
                )
                return int(counter["count"]) if counter else 0
            except DuplicateKeyError:
                # Two first counts of one key upserted at once: the other's insert won.
                if attempt == 2:
                    raise
        return 0
