"""Slow clients, as an attacker without a key sends them: the request line and headers a
byte at a time, bodies that drip, connections held idle after a request.

Used by tests/test_front.py (and the fault suite): while they are open, the service must
keep answering everyone else.
"""

import contextlib
import socket
import threading
import time
from contextlib import contextmanager

import requests


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def slow_header(port: int, until: float, interval_s: float, opened: list) -> None:
    """Send a request's head a byte per interval_s, never finishing it."""
    head = b"GET /v1/healthz HTTP/1.1\r\nHost: sibyl\r\nX-Padding: " + b"x" * 100_000
    with _connect(port) as connection:
        opened.append(connection)
        for byte in head:
            if time.monotonic() > until:
                return
            connection.send(bytes([byte]))
            time.sleep(interval_s)


def slow_body(port: int, until: float, interval_s: float, opened: list) -> None:
    """Declare a 1 MB JSON body, then send it a byte per interval_s."""
    head = (
        b"POST /v1/jobs HTTP/1.1\r\nHost: sibyl\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000000\r\n\r\n"
    )
    with _connect(port) as connection:
        opened.append(connection)
        connection.sendall(head)
        while time.monotonic() < until:
            connection.send(b" ")
            time.sleep(interval_s)


def idle_keep_alive(port: int, until: float, interval_s: float, opened: list) -> None:
    """One whole request, then the connection held open without another."""
    with _connect(port) as connection:
        opened.append(connection)
        connection.sendall(b"GET /v1/healthz HTTP/1.1\r\nHost: sibyl\r\n\r\n")
        connection.recv(4096)
        while time.monotonic() < until:
            time.sleep(interval_s)


@contextmanager
def slow_clients(port: int, seconds: float, headers: int = 100, bodies: int = 24, idle: int = 50):
    """Open the slow connections (in threads) for `seconds`; yields a dict whose
    "opened" list grows as they connect and whose "errors" collects what ended them
    early (a server closing them is an error for the attacker, not for the test)."""
    until = time.monotonic() + seconds
    state: dict[str, list] = {"opened": [], "errors": []}

    def run(kind, interval_s):
        try:
            kind(port, until, interval_s, state["opened"])
        except OSError as error:
            state["errors"].append(error)

    kinds = [(slow_header, 0.3)] * headers + [(slow_body, 1.0)] * bodies
    kinds += [(idle_keep_alive, 0.5)] * idle
    threads = [threading.Thread(target=run, args=kind, daemon=True) for kind in kinds]
    for thread in threads:
        thread.start()
    try:
        yield state
    finally:
        for thread in threads:
            thread.join(timeout=seconds + 30)


def healthz_under_slow_clients(url: str, port: int, seconds: float, timeout_s: float = 3) -> dict:
    """GET /v1/healthz about once a second (each given timeout_s) while the slow
    connections of slow_clients are open: {"answered", "tries"}."""
    answered = tries = 0
    with slow_clients(port, seconds) as attack:
        began = time.monotonic()
        while len(attack["opened"]) < 174 and time.monotonic() - began < 10:
            time.sleep(0.1)
        while time.monotonic() - began < seconds - 3:
            tries += 1
            with contextlib.suppress(requests.RequestException):
                answered += requests.get(url + "/v1/healthz", timeout=timeout_s).ok
            time.sleep(1)
    return {"answered": answered, "tries": tries}
