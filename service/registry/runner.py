"""Model runners: each model version runs in a confined child process, never here.

`ModelRunner` starts service/registry/runner_child.py for one model version and
calls it over a socket pair: a batch of arrays in, the output array back. The
child is confined by the operating system (service/registry/confine.py), so a
model that got past the static scan still cannot read or write the host's files
or reach the network; and because it is another process, a model that crashes,
loops or eats memory costs that process, not the API:

- a call that outlives its time limit kills the runner (CallTimedOut);
- a runner that dies mid-call (abort, segfault, out of memory) is RunnerDied;
- either way the next call starts a fresh runner;
- a runner whose memory grew past `recycle_mb` is restarted after its call.

`RunnerPool` keeps one runner per model version, the least recently used stopped
past capacity. Nothing the child sends is unpickled (service/registry/frames.py).
"""

import contextlib
import json
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np

from service.registry import frames

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]  # where the `service` package lives
# The user runners run as when Sibyl runs as root.
SANDBOX_USER = "nobody"
# The largest answer read from a runner: a hostile one cannot make the API allocate more.
MAX_ANSWER_BYTES = 512 * 1024 * 1024
# The most a prediction's output may weigh, per instance (its document holds 16 MB).
MAX_OUTPUT_BYTES_PER_ROW = 1024 * 1024
# How often a busy runner's resident memory is compared with RUNNER_RECYCLE_MB (an
# idle one's is, after its next call).
MEMORY_CHECK_EVERY_S = 1.0
# A model's call time limit grows with its measured cost up to this many times the setting.
MAX_TIMEOUT_FACTOR = 3
# Rows of zeros an upload is test-run on (service/registry/model_files.py).
TEST_ROWS = 2


class ModelCallError(RuntimeError):
    """A model call did not return an output; the message is for the job's error."""

    # True when the runner died or was killed: the batch's jobs are run again alone,
    # and a job that does it alone fails for good.
    fatal = False


class ModelRaised(ModelCallError):
    """The model raised an error on this batch; the runner is fine."""


class RunnerDied(ModelCallError):
    fatal = True


class CallTimedOut(ModelCallError):
    fatal = True


class RunnerUnavailable(RuntimeError):
    """The runner could not start or load the model; the message says why."""


class RunnerRetired(RuntimeError):
    """The pool stopped this runner for good (evicted, or shutting down): ask the pool
    for the model's runner again; nothing of the batch ran."""


@dataclass(frozen=True)
class RunnerLimits:
    """What every runner gets: memory, times, and whether confinement is required."""

    memory_mb: int = 4096
    recycle_mb: int = 2048
    load_timeout_s: float = 60.0
    call_timeout_s: float = 5.0
    confinement: str = "required"  # or "best-effort": run, and say what is missing
    static_scan: bool = True  # False only in tests of the confinement itself

    @classmethod
    def from_config(cls, config: dict) -> "RunnerLimits":
        return cls(
            memory_mb=config["RUNNER_MEMORY_MB"],
            recycle_mb=config["RUNNER_RECYCLE_MB"],
            load_timeout_s=config["MODEL_LOAD_TIMEOUT_S"],
            call_timeout_s=config["MODEL_CALL_TIMEOUT_S"],
            confinement=config["RUNNER_CONFINEMENT"],
            static_scan=config["STATIC_SCAN"],
        )


def sandbox_user() -> tuple[int, int] | None:
    """(uid, gid) runners become when Sibyl runs as root; None when it need not."""
    if os.geteuid() != 0:
        return None
    try:
        user = pwd.getpwnam(SANDBOX_USER)
    except KeyError:
        raise RunnerUnavailable(f"no user {SANDBOX_USER!r} for the model runners") from None
    return user.pw_uid, user.pw_gid


def share_with_sandbox(path: Path, gid: int) -> None:
    """Let the sandbox's group read (never write) path and everything under it."""
    for item in [path, *(path.rglob("*") if path.is_dir() else [])]:
        os.chown(item, -1, gid, follow_symlinks=False)
        os.chmod(item, 0o750 if item.is_dir() else 0o640)


def sample_batch(inputs: list[dict], size: int) -> dict[str, np.ndarray]:
    """Zeros shaped like a signature's inputs (open dimensions as 1), to test-run a model."""
    return {
        spec["name"]: np.zeros(
            [size] + [1 if d is None else d for d in spec["shape"][1:]], dtype=spec["dtype"]
        )
        for spec in inputs
    }


def storable(output: np.ndarray | None, rows: int) -> np.ndarray:
    """A runner's output as predictions can store it: one row per instance, at most
    MAX_OUTPUT_BYTES_PER_ROW each (a document holds 16 MB), numbers BSON can hold (a
    uint64 past 2**63 cannot: as float64); ModelRaised saying what is wrong otherwise."""
    if output is None or output.ndim == 0 or len(output) != rows:
        got = "no output" if output is None else f"an output of shape {list(output.shape)}"
        raise ModelRaised(f"the model answered {got} for a batch of {rows} rows")
    if rows and output.nbytes // rows > MAX_OUTPUT_BYTES_PER_ROW:
        raise ModelRaised(
            f"the model's output is {output.nbytes // rows} bytes per instance; "
            f"at most {MAX_OUTPUT_BYTES_PER_ROW} are stored"
        )
    if output.dtype.kind == "u" and output.dtype.itemsize == 8:
        return output.astype(np.float64)
    return output


class ModelRunner:
    """One model version in a confined child process; predict() calls it."""

    def __init__(self, path: Path, model_format: str, limits: RunnerLimits):
        self.source = Path(path)
        self.model_format = model_format
        self.limits = limits
        self.signature: dict | None = None
        self.unconfined: list[str] = []
        self._process: subprocess.Popen | None = None
        self._connection: Connection | None = None
        self._folder: tempfile.TemporaryDirectory | None = None
        self._stderr: deque[str] = deque(maxlen=20)
        self._lock = threading.Lock()
        self._next_memory_check = 0.0
        self._retired = False

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> dict:
        """Start the child and load the model, unless it runs; return its signature."""
        with self._lock:
            if self._retired:
                raise RunnerRetired(f"the runner of {self.source.name} was stopped for good")
            if self._process is None:
                self._start()
            return self.signature

    def predict(self, batch: dict[str, np.ndarray], timeout_s: float) -> np.ndarray:
        """One call of the model: {input name: array} -> output array, within timeout_s."""
        with self._lock:
            if self._retired:
                raise RunnerRetired(f"the runner of {self.source.name} was stopped for good")
            if self._process is None:
                self._start()
            try:
                output = self._call(batch, timeout_s)
            except ModelCallError as error:
                if error.fatal:
                    self._stop()
                raise
            if time.monotonic() >= self._next_memory_check:
                # A read of /proc costs ~30 us: not on every call of a busy runner.
                self._next_memory_check = time.monotonic() + MEMORY_CHECK_EVERY_S
                if self.rss_mb() > self.limits.recycle_mb:
                    log.info("model runner %s holds %d MB: restarting it", self.pid, self.rss_mb())
                    self._stop()
            return output

    def stop(self) -> None:
        with self._lock:
            self._stop()

    def retire(self) -> None:
        """Stop for good: a later call raises RunnerRetired instead of starting a process
        the pool no longer knows of."""
        with self._lock:
            self._retired = True
            self._stop()

    def rss_mb(self) -> float:
        """The child's resident memory, in MB (0 when it is not running)."""
        try:
            with open(f"/proc/{self.pid}/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024
        except (OSError, TypeError):
            pass
        return 0.0

    def _start(self) -> None:
        """Start the child and wait for its model to load; nothing is left behind (process,
        folder) when that fails: RunnerUnavailable says why."""
        try:
            self._spawn()
            answer = self._receive_json(self.limits.load_timeout_s, "loading the model")
            if "error" in answer:
                raise RunnerUnavailable(str(answer["error"]))
        except ModelCallError as error:
            self._stop()
            raise RunnerUnavailable(str(error)) from None
        except OSError as error:
            # The model's copy or the process could not be made (a full disk, no file
            # descriptors left): this call fails; the next one tries again.
            self._stop()
            reason = error.strerror or type(error).__name__
            raise RunnerUnavailable(f"the model runner could not be started: {reason}") from None
        except BaseException:
            self._stop()
            raise
        self.signature = answer["signature"]
        self.unconfined = answer.get("unconfined") or []
        if self.unconfined:
            log.warning("model runner %s is not confined by: %s", self.pid, self.unconfined)

    def _spawn(self) -> None:
        """The child process, on its own copy of the model, connected by a socket pair."""
        user = sandbox_user()
        self._next_memory_check = 0.0  # after its first call
        # The runner reads its own copy: a folder it may read, whatever the cache's
        # permissions, and no other model's files beside it.
        self._folder = tempfile.TemporaryDirectory(prefix="sibyl-runner-")
        folder = Path(self._folder.name)
        workdir, model_path = folder / "cwd", folder / "model" / self.source.name
        workdir.mkdir()
        copy = shutil.copytree if self.source.is_dir() else shutil.copyfile
        model_path.parent.mkdir()
        copy(self.source, model_path)
        if user is not None:
            share_with_sandbox(folder, user[1])
        ours, theirs = socket.socketpair()
        code = (
            f"import sys; sys.path.insert(0, {str(ROOT)!r}); "
            "from service.registry.runner_child import main; main(sys.argv[1:])"
        )
        command = [
            *(sys.executable, "-I", "-B", "-c", code, self.model_format, str(model_path)),
            *(str(theirs.fileno()), str(self.limits.memory_mb), self.limits.confinement),
            "scan" if self.limits.static_scan else "no-scan",
            *([f"{user[0]}:{user[1]}"] if user is not None else []),
        ]
        try:
            self._process = subprocess.Popen(
                command,
                cwd=workdir,
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
                env={
                    "PATH": "/usr/bin:/bin",
                    "HOME": str(workdir),
                    "TF_CPP_MIN_LOG_LEVEL": "2",
                    "CUDA_VISIBLE_DEVICES": "",
                },
                start_new_session=True,  # a Ctrl-C meant for the API is not the runner's
            )
        finally:
            theirs.close()
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        self._connection = Connection(ours.detach())

    def _call(self, batch: dict[str, np.ndarray], timeout_s: float) -> np.ndarray:
        try:
            self._connection.send_bytes(frames.pack(batch))
        except OSError:
            raise self._died() from None
        try:
            answer = frames.unpack(self._receive(timeout_s, "the model call"))
        except frames.FrameError as error:
            self._stop()
            raise RunnerDied(f"the model runner answered {error}") from None
        if "error" in answer:
            raise ModelRaised(f"the model raised {answer['error']}")
        return storable(answer.get("output"), len(next(iter(batch.values()))))

    def _receive_json(self, timeout_s: float, what: str) -> dict:
        try:
            answer = json.loads(self._receive(timeout_s, what))
        except ValueError:
            raise RunnerDied("the model runner answered an unreadable message") from None
        if not isinstance(answer, dict):
            raise RunnerDied("the model runner answered an unreadable message")
        return answer

    def _receive(self, timeout_s: float, what: str) -> bytes:
        try:
            if not self._connection.poll(timeout_s):
                raise CallTimedOut(
                    f"{what} took longer than {timeout_s:.3g} s (SIBYL_MODEL_CALL_TIMEOUT_MS)"
                )
            return self._connection.recv_bytes(MAX_ANSWER_BYTES)
        except (EOFError, OSError):
            raise self._died() from None

    def _died(self) -> RunnerDied:
        """The runner's end of the socket closed: say how it ended."""
        try:
            code = self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        how = signal.Signals(-code).name if code is not None and code < 0 else f"exit code {code}"
        log.warning("model runner %s died (%s): %s", self.pid, how, " | ".join(self._stderr))
        return RunnerDied(f"the model crashed while running this job ({how})")

    def _drain_stderr(self) -> None:
        process = self._process
        for line in process.stderr:
            self._stderr.append(line.rstrip()[:300])

    def _stop(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        if self._process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait()
            self._process = None
        if self._folder is not None:
            self._folder.cleanup()
            self._folder = None


class RunnerPool:
    """One started runner per model version; the least recently used stopped past capacity."""

    def __init__(self, local_path: Callable[[dict], Path], limits: RunnerLimits, capacity: int):
        """local_path(model document) -> the model's loadable local file or folder."""
        self.local_path = local_path
        self.limits = limits
        self.capacity = capacity
        self._runners: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, model: dict) -> ModelRunner:
        with self._lock:
            key = model["_id"]
            if key in self._runners:
                self._runners.move_to_end(key)
                return self._runners[key]
            runner = ModelRunner(self.local_path(model), model["format"], self.limits)
            self._runners[key] = runner
            while len(self._runners) > self.capacity:
                evicted = self._runners.popitem(last=False)[1]
                # In the background: its lock may be held by a call of another lane.
                threading.Thread(target=evicted.retire, daemon=True).start()
        return runner

    def call_timeout_s(self, model: dict, rows: int) -> float:
        """SIBYL_MODEL_CALL_TIMEOUT_MS plus ten times the call time measured at upload
        for this many rows (a slow model's big batch is not cut short), at most three
        times the setting: the upload's test call is the uploader's to make slow."""
        per_row_ms = (model.get("test_call_ms") or 0) / TEST_ROWS
        base = self.limits.call_timeout_s
        return min(base + 10 * per_row_ms * rows / 1000, MAX_TIMEOUT_FACTOR * base)

    def stop(self) -> None:
        with self._lock:
            runners, self._runners = list(self._runners.values()), OrderedDict()
        for runner in runners:
            runner.retire()
