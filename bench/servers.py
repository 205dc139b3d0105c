"""Starting and stopping the servers a benchmark measures, by process id."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from service.store.embedded_db import free_port
from service.store.keys import new_key

ROOT = Path(__file__).resolve().parent.parent
# Rate limits are on, as they are by default, but far above any rate the bench reaches:
# they are counted on every request and refuse none.
BENCH_RATE_LIMITS = "client=100000/second;analyst=100000/second;jobs=1000000/second"


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    tree, stack = [], [pid]
    while stack:
        current = stack.pop()
        tree.append(current)
        stack.extend(children.get(current, []))
    return tree


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


class Server:
    """A child process serving HTTP on 127.0.0.1:port."""

    admin_key: str | None = None  # Sibyl's

    def __init__(self, name: str, command: list[str], env: dict, port: int, health: str, log: Path):
        self.name = name
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.health = health
        with open(log, "wb") as output:
            self.process = subprocess.Popen(
                command,
                cwd=ROOT,
                env={**os.environ, **env},
                stdout=output,
                stderr=subprocess.STDOUT,
            )

    def wait_until_healthy(self, timeout: float = 180) -> "Server":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with code {self.process.returncode}")
            try:
                if requests.get(self.url + self.health, timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"{self.name} did not become healthy in {timeout} s")

    def cpu_by_role(self) -> dict[str, float]:
        """CPU seconds used so far by the database and by the API (or app) processes."""
        usage = {"db": 0.0, "app": 0.0}
        for pid in process_tree(self.process.pid):
            role = "db" if "secantus" in command_line(pid) else "app"
            usage[role] += cpu_seconds(pid)
        return usage

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_sibyl(
    workdir: Path,
    extra_env: dict | None = None,
    mongo_uri: str = "",
    admin_key: str = "",
    script: str = "run.py",
) -> Server:
    """Sibyl as `make run` starts it: embedded database (or the one at mongo_uri),
    gunicorn, demo models, access control; its admin key admin_key (else a new one).
    script: run.py, or bench/threaded_front.py for Sibyl on its former front."""
    port = free_port()
    admin_key = admin_key or new_key()[1]
    env = {
        "SIBYL_PORT": str(port),
        "SIBYL_DB_PATH": str(workdir / "db"),
        "SIBYL_MODEL_CACHE_DIR": str(workdir / "models"),
        "SIBYL_ADMIN_KEY": admin_key,
        "SIBYL_ADMIN_KEY_FILE": str(workdir / "admin.key"),
        "SIBYL_METRICS_DIR": str(workdir / "metrics"),
        "SIBYL_RATE_LIMITS": BENCH_RATE_LIMITS,
        **(extra_env or {}),
        "MONGO_URI": mongo_uri,  # empty: the embedded database, whatever the environment says
    }
    command = [sys.executable, script, "serve"]
    server = Server("sibyl", command, env, port, "/v1/healthz", workdir / "sibyl.log")
    server.admin_key = admin_key
    return server


# The baselines: Flask apps in bench/baselines/<name>.py, served as Sibyl is.
BASELINES = ("tutorial", "fast_no_record", "same_work")


def start_baseline(
    name: str, model_dir: Path, workdir: Path, workers: int, threads: int, mongo_uri: str = ""
) -> Server:
    """A baseline app under the same gunicorn settings as Sibyl (run.py serve)."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "--workers",
        str(workers),
        "--threads",
        str(threads),
        "--worker-class",
        "gthread",
        "--timeout",
        "120",
        "--bind",
        f"127.0.0.1:{port}",
        f"bench.baselines.{name}:create_app()",
    ]
    env = {
        "BASELINE_MODEL_DIR": str(model_dir),
        "BASELINE_MONGO_URI": mongo_uri,
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    log = workdir / f"{name}-{workers}-workers.log"  # one app may run with 1 and 2 at once
    return Server(name, command, env, port, "/healthz", log)
