"""The embedded database: SecantusDB as a child process on 127.0.0.1.

Used when MONGO_URI is unset (`make run`) and by the tests. The service talks to
it through PyMongo over a real socket, exactly as it talks to MongoDB.
"""

import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pymongo
from pymongo.errors import PyMongoError

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1


def free_port(host: str = "127.0.0.1") -> int:
    """Ask the kernel for a port nobody listens on."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def _die_with_parent() -> None:
    """In the child: get SIGTERM if the parent dies, so no database is orphaned."""
    # Off Linux there is no prctl: the parent's own cleanup still stops the child.
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class EmbeddedDatabase:
    """A SecantusDB server process with its data in one directory."""

    def __init__(self, path: str | Path, port: int = 0, host: str = "127.0.0.1"):
        self.path = Path(path)
        self.host = host
        self.port = port or free_port(host)
        self.process: subprocess.Popen | None = None
        self.owner_pid = 0  # the process that started the server
        self._stopping = threading.Event()

    @property
    def uri(self) -> str:
        # directConnection: talk to this one server, whatever replica set it
        # advertises (SecantusDB poses as a single-node set for change streams).
        # retryWrites=false: one node has no failover to retry across, and
        # SecantusDB's bookkeeping of retryable writes costs a quarter of its CPU.
        return f"mongodb://{self.host}:{self.port}/?directConnection=true&retryWrites=false"

    def start(self, timeout: float = 30.0) -> "EmbeddedDatabase":
        """Start the server and return once it answers a ping."""
        self.path.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable,
            "-m",
            "secantus",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--storage-path",
            str(self.path),
            "--log-level",
            "WARNING",
        ]
        with open(self.path / "secantusdb.log", "ab") as log_file:
            self.process = subprocess.Popen(
                command,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                # Its own session: Ctrl-C reaches the API, which stops first and
                # then stops the database, in that order.
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        self.owner_pid = os.getpid()
        self._wait_until_ready(timeout)
        return self

    def _wait_until_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        client = pymongo.MongoClient(self.uri, serverSelectionTimeoutMS=500)
        try:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"SecantusDB exited with code {self.process.returncode}; "
                        f"see {self.path / 'secantusdb.log'}"
                    )
                try:
                    client.admin.command("ping")
                    return
                except PyMongoError:
                    if time.monotonic() > deadline:
                        self.process.kill()
                        self.process.wait()
                        raise RuntimeError(
                            f"SecantusDB did not answer within {timeout} s"
                        ) from None
        finally:
            client.close()

    @property
    def owned_here(self) -> bool:
        """Whether this process started the server (a forked child, such as a
        gunicorn worker, inherits the object but must not stop the server)."""
        return self.process is not None and self.owner_pid == os.getpid()

    def supervise(self, backoff_s: float = 1.0, max_backoff_s: float = 30.0) -> None:
        """Restart the server, on the same data and port, whenever it exits until stop()
        (waiting backoff_s between failed starts, doubling up to max_backoff_s): with the
        embedded default there is nobody else to bring it back, and until then every
        request that needs it answers 503."""

        def watch() -> None:
            wait_s = backoff_s
            while not self._stopping.wait(0.5):
                if self.process.poll() is None:
                    continue
                log.warning(
                    "the embedded database exited (code %s); restarting it",
                    self.process.returncode,
                )
                try:
                    self.start()
                    log.info("the embedded database is back at %s", self.uri)
                    wait_s = backoff_s
                except RuntimeError as error:
                    log.warning("%s; trying again in %s s", error, wait_s)
                    self._stopping.wait(wait_s)
                    wait_s = min(wait_s * 2, max_backoff_s)

        threading.Thread(target=watch, name="sibyl-database-supervisor", daemon=True).start()

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the server cleanly (SIGTERM lets it flush), killing it if it hangs."""
        self._stopping.set()
        if not self.owned_here or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("SecantusDB did not stop within %s s; killing it", timeout)
            self.process.kill()
            self.process.wait()
