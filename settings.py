"""Eve and Sibyl settings, read once from the environment.

Every variable Sibyl reads starts with ``SIBYL_``, except the conventional
``MONGO_URI``. Defaults suit `make run` on one machine; the README lists them all.
Nothing secret lives here: credentials belong in MONGO_URI, set outside the code.
"""

import os

import schemas


def _int(name: str, default: int) -> int:
    """Read an integer variable, failing at start-up with the variable's name."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"{name} must be an integer, got {raw!r}") from None


def _choice(name: str, default: str, allowed: tuple[str, ...]) -> str:
    """Read a variable that takes one of a few values."""
    value = os.environ.get(name) or default
    if value not in allowed:
        raise SystemExit(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    return value


# --- database -------------------------------------------------------------
# Unset MONGO_URI means "start the embedded SecantusDB" (run.py does that and
# then sets MONGO_URI for the API processes it starts).
MONGO_URI = os.environ.get("MONGO_URI", "")
MONGO_DBNAME = os.environ.get("SIBYL_DB_NAME", "sibyl")
# Fail fast when the database is unreachable, so clients get a 503 in about a
# second instead of hanging for PyMongo's default 30 s.
DB_TIMEOUT_MS = _int("SIBYL_DB_TIMEOUT_MS", 2000)
# The write concern of every write Sibyl makes, so that a 201 means the job is in
# the database's journal on disk and survives a crash of the database. With w:1
# alone, MongoDB and SecantusDB acknowledge a write before its journal record is
# on disk: a database killed then loses the last acknowledged jobs (3 of 1,979
# when one was SIGKILLed under load). SecantusDB journals a write only when it
# carries j:true, even with w:"majority" (MongoDB journals majority writes by
# default), so the journal is always asked for explicitly.
#   journaled: w:1, j:true (one server, the embedded database)
#   majority:  w:"majority", j:true (a replica set: also survives losing the primary)
#   w1:        w:1 without journal (faster; a database crash loses recent 201s)
# Spelt as MongoClient options; MONGO_WRITE_CONCERN below hands it to Eve.
WRITE_CONCERN = _choice("SIBYL_WRITE_CONCERN", "journaled", ("journaled", "majority", "w1"))
MONGO_WRITE_CONCERN = {
    "journaled": {"w": 1, "journal": True},
    "majority": {"w": "majority", "journal": True},
    "w1": {"w": 1},
}[WRITE_CONCERN]
MONGO_OPTIONS = {
    "serverSelectionTimeoutMS": DB_TIMEOUT_MS,
    "connectTimeoutMS": DB_TIMEOUT_MS,
    # The default of every client built from these: Eve's, run.py's, workers'.
    **MONGO_WRITE_CONCERN,
}
# Embedded database (used only when MONGO_URI is unset).
EMBEDDED_DB_PATH = os.environ.get("SIBYL_DB_PATH", "var/db")
EMBEDDED_DB_PORT = _int("SIBYL_DB_PORT", 0)  # 0: pick a free port

# --- HTTP -----------------------------------------------------------------
HOST = os.environ.get("SIBYL_HOST", "127.0.0.1")
PORT = _int("SIBYL_PORT", 5000)
WEB_WORKERS = _int("SIBYL_WEB_WORKERS", 1)
WEB_THREADS = _int("SIBYL_WEB_THREADS", 16)
# Flask answers 413 past this; a job with a few thousand instances fits.
MAX_CONTENT_LENGTH = _int("SIBYL_MAX_CONTENT_LENGTH", 8 * 1024 * 1024)
# JSON nested deeper than this is refused with a 400: no tensor needs more, and
# Python's parser would otherwise raise RecursionError (a 500) on deep arrays.
MAX_JSON_DEPTH = _int("SIBYL_MAX_JSON_DEPTH", 32)
# URLs (path and query string) longer than this get a JSON 414, from the front
# (service/api/front.py) before they are parsed. A `where` with the `$in` of a
# thousand ObjectIds fits.
MAX_URL_BYTES = _int("SIBYL_MAX_URL_BYTES", 64 * 1024)
# The front's other bounds: all headers together (431), and how long a request's
# line and headers (408) and then its body (408) may take to arrive.
MAX_HEADER_BYTES = _int("SIBYL_MAX_HEADER_BYTES", 64 * 1024)
HEADER_TIMEOUT_S = _int("SIBYL_HEADER_TIMEOUT_S", 10)
BODY_TIMEOUT_S = _int("SIBYL_BODY_TIMEOUT_S", 30)
# Bodies still arriving are held in memory, at most this much per API process in all
# (a 503 past it): slow bodies on many connections cannot take the memory either.
MAX_BUFFERED_MB = _int("SIBYL_MAX_BUFFERED_MB", 256)

# --- operations -------------------------------------------------------------
# /metrics (Prometheus) answers admins, and without a key these addresses (a list).
METRICS_ADDRESSES = [
    address.strip()
    for address in os.environ.get("SIBYL_METRICS_ADDRESSES", "").split(",")
    if address.strip()
]
# `run.py worker` serves its own metrics on this port of 127.0.0.1 (0: none).
METRICS_PORT = _int("SIBYL_METRICS_PORT", 0)
# Where the API processes of `run.py serve` keep their counts (emptied at start).
METRICS_DIR = os.environ.get("SIBYL_METRICS_DIR", "var/metrics")
# Sibyl's log lines (service/logs.py), each with its request's id: text for people,
# json for log shippers (one object a line: time, level, logger, message, request_id,
# exception). Gunicorn's own lines keep gunicorn's format.
LOG_FORMAT = _choice("SIBYL_LOG_FORMAT", "text", ("text", "json"))

# --- access control ---------------------------------------------------------
# Every request needs an API key (service/api/auth.py). Only an explicit "off"
# turns that off, and the API then warns at every start.
AUTH = _choice("SIBYL_AUTH", "on", ("on", "off")) == "on"
# A key revoked in another process stops working here within this many seconds.
KEY_CACHE_SECONDS = float(_int("SIBYL_KEY_CACHE_MS", 2000)) / 1000
# run.py serve creates an admin key on first start and writes it here (mode 0600),
# unless SIBYL_ADMIN_KEY (read by run.py only, never kept in the config) gives one.
ADMIN_KEY_FILE = os.environ.get("SIBYL_ADMIN_KEY_FILE", "var/admin.key")

# --- rate limits --------------------------------------------------------------
# service/api/rate_limits.py. Requests are counted per verified API key at its
# role's rate; requests without a valid key per client address ("anonymous"), so a
# wrong key spends nobody's quota and guessing keys is slow; and per key again for
# the costly operations: model uploads, jobs submitted (a bulk POST counts each job
# it stores), exports. Over a limit: a 429 with Retry-After and RateLimit-* headers.
# SIBYL_RATE_LIMITS changes any of them: `name=rate;name=rate`, a rate in the
# notation of `limits` ("100/second", "20/second,1000/minute", "10 per 5 minutes")
# or "none"; SIBYL_RATE_LIMITS=off turns rate limiting off. With SIBYL_AUTH=off
# there are no verified keys to count by, and no rate limits. The defaults stop a
# runaway client without throttling normal use: the request rates lie well above
# what one 2-core machine serves (about 300 jobs/s), so `make test` and `make
# bench` never meet them; lower them to each client's share of your capacity.
DEFAULT_RATE_LIMITS = {
    "admin": "2000/second",
    "client": "1000/second",
    "analyst": "500/second",
    "anonymous": "50/second,1000/minute",  # per client address
    "uploads": "300/hour",  # each upload is loaded in a child process: seconds of CPU
    "jobs": "3000/second",  # single jobs meet the request rate first; bulk POSTs this
    "exports": "10/minute",  # no export route yet: ready for the first one
}


def _rate_limits(name: str, defaults: dict[str, str]) -> dict[str, str]:
    """Read `name=rate;name=rate` over the defaults (the rates are checked at start-up)."""
    rates = dict(defaults)
    raw = os.environ.get(name, "").strip()
    if raw == "off":
        return rates
    for pair in filter(str.strip, raw.split(";")):
        scope, equals, rate = (part.strip() for part in pair.partition("="))
        if not equals or scope not in defaults:
            raise SystemExit(
                f"{name}: expected name=rate;... with names among {', '.join(defaults)}, "
                f"got {pair.strip()!r}"
            )
        rates[scope] = rate
    return rates


RATE_LIMITING = os.environ.get("SIBYL_RATE_LIMITS", "").strip() != "off"
RATE_LIMITS = _rate_limits("SIBYL_RATE_LIMITS", DEFAULT_RATE_LIMITS)
# Where the counts live:
#   memory:  in each API process (the default): every gunicorn worker counts alone,
#            so with SIBYL_WEB_WORKERS=N a client may get up to N times each limit;
#   mongodb: Sibyl's own database (MONGO_URI): one count across workers and API
#            nodes, for 3 database round trips a request (the count, and the
#            headers' remaining and reset), a POST /v1/jobs 7;
#   or a URI of `limits`' storages: mongodb://host/ (another MongoDB), redis://host
#   (needs `pip install redis`), memory://.
RATE_LIMIT_STORAGE = os.environ.get("SIBYL_RATE_LIMIT_STORAGE", "memory")

# --- Eve ------------------------------------------------------------------
API_VERSION = "v1"
URL_PREFIX = ""
# The versions served (service/api/versioning.py). "1" is what Eve stores and serves
# under /v1; another is a view of it: {"renamed": {resource: {v1 field: its name}},
# "deprecated": "2027-01-01", "sunset": "2027-07-01"} (ISO dates, UTC; either marks
# the version's answers with Deprecation and Sunset headers).
API_VERSIONS = {"1": {}}
# JSON only: Eve's XML renderer wrote field names as tags unescaped
# (service/api/negotiation.py).
RENDERERS = ["eve.render.JSONRenderer"]
RESOURCE_METHODS = ["GET"]
ITEM_METHODS = ["GET"]
PAGINATION_DEFAULT = _int("SIBYL_PAGE_DEFAULT", 25)
PAGINATION_LIMIT = _int("SIBYL_PAGE_LIMIT", 500)
# Counting matching documents costs a scan; list endpoints skip it. Clients page
# with the `next` link until it is absent.
OPTIMIZE_PAGINATION_FOR_SPEED = True
# Answer errors as JSON for these codes too (Eve's list lacks 413/414/500/503).
STANDARD_ERRORS = [
    *(400, 401, 403, 404, 405, 406, 409, 410, 412, 413, 414, 415, 422, 428, 429, 500, 503)
]
# A resource is filtered (`where`) on the fields its schemas/ entry lists in
# `allowed_filters`, and sorted on those of them an index serves; one that lists
# none is neither filtered nor sorted (Eve's default would allow any field).
ALLOWED_FILTERS = []
# Operators refused anywhere in `where`: server-side JavaScript, regexes (which can
# be made to run for minutes), $expr (aggregation expressions: arbitrary work per
# document, and a way to compare fields that may not be filtered on), $jsonSchema
# (a whole-document check, same way round) and $text (no resource has a text index).
MONGO_QUERY_BLACKLIST = [
    "$where",
    "$function",
    "$accumulator",
    "$regex",
    "$expr",
    "$jsonSchema",
    "$text",
]
# Stale writes are refused: PATCH and DELETE need the item's current ETag.
IF_MATCH = True
ENFORCE_IF_MATCH = True
# Model files are served from a URL instead of inlined as base64.
RETURN_MEDIA_AS_BASE64_STRING = False
RETURN_MEDIA_AS_URL = True
EXTENDED_MEDIA_INFO = ["content_type", "name", "length"]
# Timestamps are ISO 8601 in UTC, which browsers, pandas and jq all parse; the
# same format is accepted in `where` filters ({"_created": {"$gte": "..."}}).
DATE_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
X_DOMAINS = None
DOMAIN = schemas.DOMAIN

# Model uploads come as multipart forms: a field that holds JSON (labels) is
# decoded, any other stays a string.
MULTIPART_FORM_FIELDS_AS_JSON = True

# --- inference ------------------------------------------------------------
# in-process: a dispatcher thread in each API process runs the jobs;
# workers: the API only queues, `python run.py worker` processes run them.
INFERENCE = _choice("SIBYL_INFERENCE", "in-process", ("in-process", "workers"))
# Dynamic batching: instances of concurrent jobs for one model version share a
# model call of at most MAX_BATCH_SIZE rows. Jobs arriving while a batch runs
# join the next one anyway; MAX_WAIT_MS > 0 also holds a batch back that long
# for more, trading latency at low load for bigger batches.
MAX_BATCH_SIZE = _int("SIBYL_MAX_BATCH_SIZE", 256)
MAX_WAIT_MS = _int("SIBYL_MAX_WAIT_MS", 0)
# Fair service: while other jobs keep arriving, a job larger than this runs in
# slices of this many rows, each batch after the newcomers' own.
FAIR_SLICE_ROWS = _int("SIBYL_FAIR_SLICE_ROWS", 32)
MAX_INSTANCES_PER_JOB = _int("SIBYL_MAX_INSTANCES_PER_JOB", 10_000)
# A job whose worker disappears is claimed again once its lease expires; after
# MAX_ATTEMPTS claims it fails with the last error.
LEASE_SECONDS = _int("SIBYL_LEASE_SECONDS", 30)
MAX_ATTEMPTS = _int("SIBYL_MAX_ATTEMPTS", 3)
# How often idle dispatchers and workers look for left-behind or expired jobs.
POLL_SECONDS = float(_int("SIBYL_POLL_MS", 1000)) / 1000
# How long a process may reuse "the production version of <name>" before asking
# MongoDB again (an upload is seen at once by the process that received it).
MODEL_LOOKUP_TTL_S = float(_int("SIBYL_MODEL_LOOKUP_TTL_MS", 1000)) / 1000
# Longest ?wait= a request may hold a connection for.
MAX_REQUEST_WAIT_S = _int("SIBYL_MAX_REQUEST_WAIT_S", 30)
# Requests of one process that may wait at once (?wait=) longer than a second: each
# holds a request thread, so the rest stay free for everyone else; past it a request
# waits at most a second (service/jobs/service.py UNSLOTTED_WAIT_S).
MAX_WAITING_REQUESTS = _int("SIBYL_MAX_WAITING_REQUESTS", max(1, WEB_THREADS // 2))
# Loaded models kept per process (least recently used dropped first), and where
# their files are copied from GridFS.
MODEL_CACHE_SIZE = _int("SIBYL_MODEL_CACHE_SIZE", 8)
MODEL_CACHE_DIR = os.environ.get("SIBYL_MODEL_CACHE_DIR", "var/models")
# Models run only in runner processes the operating system confines (README,
# "Hostile models"): one per model version, loaded within MODEL_LOAD_TIMEOUT_S,
# its address space capped at RUNNER_MEMORY_MB, restarted once it holds more than
# RUNNER_RECYCLE_MB after a call. A model call is killed past MODEL_CALL_TIMEOUT_S,
# plus ten times the time its upload's test call took per row, times the batch's rows
# (at most three times MODEL_CALL_TIMEOUT_S).
MAX_MODEL_BYTES = _int("SIBYL_MAX_MODEL_BYTES", 64 * 1024 * 1024)
MODEL_LOAD_TIMEOUT_S = _int("SIBYL_MODEL_LOAD_TIMEOUT_S", 60)
RUNNER_MEMORY_MB = _int("SIBYL_RUNNER_MEMORY_MB", 4096)
RUNNER_RECYCLE_MB = _int("SIBYL_RUNNER_RECYCLE_MB", 2048)
MODEL_CALL_TIMEOUT_S = float(_int("SIBYL_MODEL_CALL_TIMEOUT_MS", 5000)) / 1000
# required: a runner that cannot be confined by every mechanism (Landlock, seccomp,
# network namespace) refuses to load its model; best-effort: it runs, and Sibyl logs
# what is missing at start-up and on each runner's start.
RUNNER_CONFINEMENT = _choice("SIBYL_RUNNER_CONFINEMENT", "required", ("required", "best-effort"))
# Tests only: skip the static scan of uploads, to show what the runner's confinement
# holds on its own. Not read from the environment.
STATIC_SCAN = True
# Register the iris and digits demo models on first start (run.py serve).
DEMO_MODELS = os.environ.get("SIBYL_DEMO_MODELS", "1") not in ("0", "false", "no")

# --- quotas and caps --------------------------------------------------------
# Against unbounded resource consumption (OWASP API4): past each cap a request
# gets a JSON 413, 422 or 429 naming the limit, and nothing is stored.
# Instances one owner may have queued or running at once (429 past it): queued
# instances are stored, and wait for model calls every other client shares. With
# authentication off every request is the same anonymous owner, so the quota then
# bounds the whole queue. 0 turns the quota off.
MAX_ACTIVE_INSTANCES_PER_OWNER = _int("SIBYL_MAX_ACTIVE_INSTANCES_PER_OWNER", 100_000)
# Jobs one owner may have queued or running at once (429 past it). Besides bounding
# the queue, it bounds the read that counts them on each POST: the embedded
# database reads every active job of the owner (about 25 µs each), so 100,000
# one-instance jobs would cost each POST some 2.5 s. 0 turns the quota off.
MAX_ACTIVE_JOBS_PER_OWNER = _int("SIBYL_MAX_ACTIVE_JOBS_PER_OWNER", 1000)
# Jobs in one bulk POST (413 past it), counted before any is validated: 100,000
# empty objects (400 KB) cost 8.5 s of CPU and an 8.8 MB answer before this cap.
MAX_JOBS_PER_POST = _int("SIBYL_MAX_JOBS_PER_POST", 1000)
# A 422 lists at most this many issues (and says how many more there were), so
# that an answer stays small whatever the request.
MAX_ERROR_ISSUES = _int("SIBYL_MAX_ERROR_ISSUES", 50)
# A job's tags are copied onto each of its predictions: 1 MB of tags on a job of
# 10,000 instances would be 10 GB of writes. Past any of these, a 422 naming tags.
MAX_TAGS_BYTES = _int("SIBYL_MAX_TAGS_BYTES", 4096)  # encoded as compact JSON (UTF-8)
MAX_TAGS_KEYS = _int("SIBYL_MAX_TAGS_KEYS", 32)  # names at every level, counted together
MAX_TAGS_DEPTH = _int("SIBYL_MAX_TAGS_DEPTH", 3)  # {"a": {"b": [1]}} is 3 deep
