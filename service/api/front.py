"""The HTTP front: whole requests are read in an event loop before a thread takes them.

Gunicorn's threaded worker gives a connection a thread as soon as its first byte
arrives, and the thread then waits for the rest: twenty connections sending their
headers a byte at a time held every thread, and nobody was served. Here gunicorn stays
the process manager, but each worker is uvicorn's event loop (uvicorn-worker): a
connection costs a few hundred bytes while its request arrives, and the Flask app, run
in a thread by a2wsgi, only sees requests that are complete. Every request must
arrive in time and in bounds, or it gets a JSON error in Eve's shape and the
connection is closed:

- the request line and headers within HEADER_TIMEOUT_S (408), the URL within
  MAX_URL_BYTES (414), the headers within MAX_HEADER_BYTES (431), all counted before
  they are parsed;
- the body within BODY_TIMEOUT_S (408) and the largest body its route accepts (413,
  refused from Content-Length before a byte of it is read); bodies still arriving
  hold at most MAX_BUFFERED_MB of memory in all (503).
"""

import asyncio
import contextlib
import json
import uuid

from a2wsgi import WSGIMiddleware
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn_worker import UvicornWorker

from service.api import request_ids
from service.metrics import REQUESTS

# The route label of requests the front refuses before the app sees them.
FRONT_ROUTE = "(front)"

# After a refusal, what the client is still sending is read and dropped for up to this
# long before the connection closes: closing with unread bytes would reset it, and the
# client could lose the answer before reading it (nginx's "lingering close").
LINGER_S = 2.0


class Refusal(Exception):
    """A request the front answers itself, before the app sees it."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message

    def answer(self, method: str, headers: dict) -> tuple[list[tuple[bytes, bytes]], bytes]:
        """Its answer's headers and body (Eve's error shape, as the app's own errors
        have it), with a request id like every answer, counted in /metrics like them."""
        REQUESTS.labels(FRONT_ROUTE, method or "-", str(self.status)).inc()
        sent = headers.get(b"x-request-id", b"").decode("latin-1")
        error = {"_status": "ERR", "_error": {"code": self.status, "message": self.message}}
        body = json.dumps(error).encode()
        head = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
            (b"x-request-id", (request_ids.accepted(sent) or uuid.uuid4().hex).encode()),
        ]
        if self.status == 503:
            head.append((b"retry-after", b"1"))
        return head, body


def refusal_response(refusal: Refusal, method: str, headers: dict) -> bytes:
    """A whole HTTP/1.1 response that closes the connection."""
    head, body = refusal.answer(method, headers)
    lines = b"".join(b"%s: %s\r\n" % pair for pair in head)
    return STATUS_LINE[refusal.status] + lines + b"\r\n" + body


class FrontProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol with deadlines and bounds on the request head.

    `limits` (a dict: header_timeout_s, max_url_bytes, max_header_bytes) is set on a
    subclass by `protocol_for`; uvicorn makes one instance per connection."""

    limits: dict = {}

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.head_bytes = 0
        self.reading_head = True
        self.refusal: Refusal | None = None
        self.lingering = False
        self.head_deadline = self.loop.call_later(
            self.limits["header_timeout_s"], self.head_too_slow
        )

    def connection_lost(self, exc) -> None:
        self.head_deadline.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.lingering:
            return
        if self.reading_head:
            self.head_bytes += len(data)
        super().data_received(data)
        limit = self.limits["max_url_bytes"] + self.limits["max_header_bytes"]
        if self.reading_head and self.head_bytes > limit and not self.transport.is_closing():
            self.refuse(Refusal(431, f"the request line and headers exceed {limit} bytes"))

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if not self.reading_head:
            # The next request on a kept-alive connection: its head has the same deadline.
            self.reading_head = True
            self.head_bytes = 0
            self.head_deadline = self.loop.call_later(
                self.limits["header_timeout_s"], self.head_too_slow
            )

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        limit = self.limits["max_url_bytes"]
        if len(self.url) > limit:
            # Raised inside the parser: uvicorn answers with send_400_response.
            self.refusal = Refusal(414, f"the URL is longer than {limit} bytes")
            raise self.refusal

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        limit = self.limits["max_header_bytes"]
        if sum(len(n) + len(v) + 4 for n, v in self.headers) > limit:
            self.refusal = Refusal(431, f"the headers exceed {limit} bytes")
            raise self.refusal

    def on_headers_complete(self) -> None:
        self.reading_head = False
        self.head_deadline.cancel()
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request it cannot parse, as JSON (or the refusal)."""
        self.refuse(self.refusal or Refusal(400, "the request is not valid HTTP/1.1"))

    def head_too_slow(self) -> None:
        if self.head_bytes == 0:
            self.transport.close()  # an idle connection that never sent a byte
            return
        seconds = self.limits["header_timeout_s"]
        self.refuse(Refusal(408, f"the request line and headers took longer than {seconds} s"))

    def method_so_far(self) -> str:
        """The request's method, once its URL began (else "")."""
        if not getattr(self, "url", b""):
            return ""
        try:
            return self.parser.get_method().decode("latin-1")
        except Exception:  # httptools: no method parsed
            return ""

    def refuse(self, refusal: Refusal) -> None:
        self.head_deadline.cancel()
        if not self.transport.is_closing() and not self.lingering:
            headers = dict(getattr(self, "headers", None) or [])
            self.transport.write(refusal_response(refusal, self.method_so_far(), headers))
            self.lingering = True
            self.loop.call_later(LINGER_S, self.transport.close)


def protocol_for(config: dict) -> type[FrontProtocol]:
    """A FrontProtocol bound to one app's limits."""
    limits = {
        "header_timeout_s": config["HEADER_TIMEOUT_S"],
        "max_url_bytes": config["MAX_URL_BYTES"],
        "max_header_bytes": config["MAX_HEADER_BYTES"],
    }
    return type("BoundFrontProtocol", (FrontProtocol,), {"limits": limits})


def body_limits(flask_app) -> dict[str, int]:
    """The largest body each route accepts: a model upload's (with its form) on the
    routes that take one, MAX_CONTENT_LENGTH on every other."""
    config = flask_app.config
    upload = config["MAX_MODEL_BYTES"] + 1024 * 1024
    uploads = {rule.rule for rule in flask_app.url_map.iter_rules("models|resource")}
    return {"default": config["MAX_CONTENT_LENGTH"], **dict.fromkeys(uploads, upload)}


class WholeRequests:
    """ASGI middleware: the app is called once the whole body is here, in bounds and in time.

    Bodies waiting for their last byte are held in memory, up to max_bytes each and
    max_buffered_bytes in all (past that, a 503 with Retry-After), so that slow
    bodies from many connections cannot take the process's memory either."""

    def __init__(self, app, limits: dict[str, int], body_timeout_s: float, max_buffered_bytes: int):
        self.app = app
        self.limits = limits
        self.body_timeout_s = body_timeout_s
        self.max_buffered_bytes = max_buffered_bytes
        self.buffered_bytes = 0  # only touched from the event loop's thread

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.limits.get(scope["path"], self.limits["default"])
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            return await self.refuse(scope, receive, send, Refusal(413, self.too_large(limit)))
        held = [0]
        try:
            body = await asyncio.wait_for(self.read_body(receive, limit, held), self.body_timeout_s)
            if body is None:
                return None  # the client went away
            pending = [{"type": "http.request", "body": body, "more_body": False}]

            async def replay():
                return pending.pop() if pending else await receive()

            return await self.app(scope, replay, send)
        except TimeoutError:
            message = f"the request body took longer than {self.body_timeout_s} s"
            return await self.refuse(scope, receive, send, Refusal(408, message))
        except Refusal as refusal:
            return await self.refuse(scope, receive, send, refusal)
        finally:
            self.buffered_bytes -= held[0]

    async def read_body(self, receive, limit: int, held: list[int]) -> bytes | None:
        """The whole body; held[0] counts its bytes in buffered_bytes meanwhile."""
        chunks = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            if held[0] + len(chunk) > limit:
                raise Refusal(413, self.too_large(limit))
            if self.buffered_bytes + len(chunk) > self.max_buffered_bytes:
                raise Refusal(503, "too many request bodies are arriving at once; retry later")
            held[0] += len(chunk)
            self.buffered_bytes += len(chunk)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    @staticmethod
    def too_large(limit: int) -> str:
        return f"the body is larger than {limit} bytes"

    @staticmethod
    async def refuse(scope, receive, send, refusal: Refusal) -> None:
        headers, body = refusal.answer(scope["method"], dict(scope["headers"]))
        await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": True})
        # uvicorn closes the connection when the response ends: end it once the rest
        # of the body is read and dropped (at most LINGER_S), so the client reads it.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(WholeRequests.drop_body(receive), LINGER_S)
        await send({"type": "http.response.body", "body": b""})

    @staticmethod
    async def drop_body(receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect" or not message.get("more_body", False):
                return


def asgi_app(flask_app):
    """The Flask app behind the front: whole requests, run in WEB_THREADS threads."""
    config = flask_app.config
    threads = WSGIMiddleware(flask_app, workers=config["WEB_THREADS"])
    return WholeRequests(
        threads,
        body_limits(flask_app),
        config["BODY_TIMEOUT_S"],
        config["MAX_BUFFERED_MB"] * 1024 * 1024,
    )


class FrontWorker(UvicornWorker):
    """Gunicorn's worker class for Sibyl: uvicorn's loop, FrontProtocol, the app in threads.

    `flask_app` stays reachable for gunicorn's hooks (run.py warms up and closes it)."""

    CONFIG_KWARGS = {
        "loop": "uvloop",
        "lifespan": "off",
        "ws": "none",
        # Sibyl reads the peer's address itself; an X-Forwarded-For from a local
        # client must not change it (uvicorn trusts 127.0.0.1 by default).
        "proxy_headers": False,
        "server_header": False,
    }

    def load_wsgi(self) -> None:
        super().load_wsgi()
        self.flask_app = self.wsgi
        self.wsgi = asgi_app(self.flask_app)
        self.config.http = protocol_for(self.flask_app.config)
