"""A closed-loop HTTP load generator: N clients, each sending its next request when
the last one answered, over keep-alive connections. Bounded in count and time."""

import http.client
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class LoadResult:
    concurrency: int
    requests: int = 0
    errors: int = 0
    # What the failures were: "HTTP 503", "not finished", or the exception's name.
    failures: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def summary(self) -> dict:
        return {
            "concurrency": self.concurrency,
            "requests": self.requests,
            "errors": self.errors,
            "failures": dict(self.failures),
            "seconds": round(self.seconds, 3),
            "throughput_per_s": round(self.throughput, 1),
            "p50_ms": round(self.percentile(0.50), 2),
            "p99_ms": round(self.percentile(0.99), 2),
        }


def run_load(
    url: str,
    make_body: Callable[[int], dict | bytes],
    concurrency: int,
    max_requests: int,
    max_seconds: float,
    is_success: Callable[[int, bytes], bool] = lambda status, body: status < 300,
    warmup: int = 5,
    headers: dict[str, str] | None = None,
    on_started: Callable[[], None] = lambda: None,
) -> LoadResult:
    """POST make_body(i) to url from `concurrency` clients until either bound is hit,
    with headers besides Content-Type (an API key's Authorization). A body already
    encoded (bytes) is sent as is: large ones cost the shared CPUs little that way.
    on_started() runs once every client has warmed up, before the measured requests
    (to read the servers' CPU counters)."""
    parts = urlsplit(url)
    request_headers = {"Content-Type": "application/json", **(headers or {})}
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    result = LoadResult(concurrency)
    lock = threading.Lock()
    counter = iter(range(10**9))
    warmed = threading.Barrier(concurrency + 1)
    start_gate = threading.Barrier(concurrency + 1)
    deadline = [0.0]

    def post(connection: http.client.HTTPConnection, number: int) -> tuple[int, bytes]:
        body = make_body(number)
        if not isinstance(body, bytes):
            body = json.dumps(body).encode()
        connection.request("POST", path, body=body, headers=request_headers)
        response = connection.getresponse()
        return response.status, response.read()

    def client() -> None:
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        for _ in range(warmup):
            try:
                post(connection, next(counter))
            except (OSError, http.client.HTTPException):
                # A server too slow to answer a warm-up is measured as it is; a client
                # that died here would leave the others waiting at the barrier forever.
                connection.close()
                connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        warmed.wait()
        start_gate.wait()
        # A fresh connection: the server may have closed the warm one while it idled
        # past its keep-alive at the barrier (a BrokenPipeError on the first request).
        connection.close()
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        while True:
            with lock:
                if (
                    result.requests + result.errors >= max_requests
                    or time.perf_counter() > deadline[0]
                ):
                    break
                number = next(counter)
            began = time.perf_counter()
            failure = None
            try:
                status, answer = post(connection, number)
                if not is_success(status, answer):
                    failure = "not finished" if status == 201 else f"HTTP {status}"
            except (OSError, http.client.HTTPException) as error:
                connection.close()
                connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
                failure = type(error).__name__
            elapsed_ms = (time.perf_counter() - began) * 1000
            with lock:
                if failure is None:
                    result.requests += 1
                    result.latencies_ms.append(elapsed_ms)
                else:
                    result.errors += 1
                    result.failures[failure] += 1
        connection.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    deadline[0] = time.perf_counter() + 3600  # set for real once everyone warmed up
    warmed.wait()
    on_started()
    start_gate.wait()
    began = time.perf_counter()
    deadline[0] = began + max_seconds
    for thread in threads:
        thread.join(max_seconds + 120)
    result.seconds = time.perf_counter() - began
    return result
