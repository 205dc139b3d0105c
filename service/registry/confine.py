"""What the operating system enforces on a model runner, whatever the model does.

Uploaded models are programs, and the static scan (model_scan.py) is one line of
defence, not the only one. A runner process (runner_child.py) calls `confine()`
while it is still single-threaded, before TensorFlow is imported, so that every
thread TensorFlow starts later inherits each restriction:

- resource limits: its address space (a memory cap), no byte written to any file,
  no core dump, few open files;
- network and IPC namespaces of its own (no interface but a loopback that is down, no
  shared memory with the host), and a user namespace too when Sibyl does not run as
  root: no connection can leave it;
- a seccomp filter: no new socket by any path (socket, socketpair, connect, io_uring),
  no exec, no new process, session or namespace, no ptrace, bpf or perf;
- Landlock (landlockpy): reads only under the interpreter, the `service` package,
  the system's libraries, a few /proc and /sys files and the model's own folder;
  no file written, created or removed anywhere; no TCP bind or connect; no signal
  or abstract socket outside its own domain.

Then, when Sibyl runs as root, `drop_privileges` makes it an unprivileged user once
TensorFlow is imported (the interpreter may live where that user cannot read).
`support()` says which of these the machine offers; start-up logs it.
"""

import ctypes
import errno
import os
import resource
import sys
from pathlib import Path

import landlockpy
from landlockpy import AccessFS, Ruleset, Scope

# Asked once, at import: landlockpy finds libc the first time, with a subprocess.
LANDLOCK_ABI = landlockpy.abi_version()

# Imported here, before any limit: finding libseccomp runs ldconfig. Debian's
# libseccomp2 provides it; without it, support() and confine() say so.
try:
    import pyseccomp
except (OSError, RuntimeError) as error:
    pyseccomp, NO_SECCOMP = None, str(error)

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
# TensorFlow holds ~60 descriptors open once imported; a model needs a handful more.
MAX_OPEN_FILES = 256
SERVICE_PACKAGE = Path(__file__).resolve().parents[1]
# Read-only, besides the interpreter's own prefixes and the model's folder.
SYSTEM_READS = [
    "/usr",
    "/lib",
    "/lib64",
    "/etc/ld.so.cache",
    "/proc/self",
    "/proc/cpuinfo",
    "/proc/meminfo",
    "/sys/devices/system/cpu",
    "/sys/fs/cgroup",
    "/dev/urandom",
    "/dev/null",
]
# Refused with EPERM: no new socket, by any way there is (io_uring can open and connect
# sockets without the socket syscall), no exec, no new process or session (threads are
# clone with CLONE_THREAD: still allowed), no new namespace, no tracing or kernel hooks.
DENIED_SYSCALLS = [
    "socket",
    "socketpair",
    "connect",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "execve",
    "execveat",
    "fork",
    "vfork",
    "setsid",
    "unshare",
    "setns",
    "ptrace",
    "bpf",
    "perf_event_open",
    "keyctl",
    "add_key",
    "request_key",
]
CLONE_THREAD = 0x00010000
CLONE_NEWIPC = 0x08000000


class ConfinementError(RuntimeError):
    """A confinement the runner was asked for could not be applied."""


def support() -> dict:
    """What this machine offers a runner: {mechanism: True, or why not}."""
    found: dict = {}
    abi = LANDLOCK_ABI
    found["landlock"] = True if abi >= 4 else f"Landlock ABI {abi} (4 or newer is needed)"
    found["seccomp"] = True if pyseccomp is not None else f"unavailable ({NO_SECCOMP})"
    found["network namespace"] = _probe_unshare()
    return found


def _probe_unshare() -> bool | str:
    """Whether a child process can take a network namespace of its own."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child exits at once)
        os._exit(0 if _unshare_network() is None else 1)
    _, status = os.waitpid(pid, 0)
    return True if os.waitstatus_to_exitcode(status) == 0 else "unshare is refused"


def _unshare_network() -> str | None:
    """Enter new network and IPC namespaces (and a user namespace when not root); None or
    why not."""
    flags = CLONE_NEWNET | CLONE_NEWIPC
    if os.geteuid() != 0:
        flags |= CLONE_NEWUSER
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(flags) != 0:
        return os.strerror(ctypes.get_errno())
    return None


def limit_resources(memory_mb: int) -> None:
    """The address space cap, no file writes (Python ignores SIGXFSZ: writes fail with
    EFBIG), no core dumps, few open files."""
    cap = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (MAX_OPEN_FILES, MAX_OPEN_FILES))


def confine(model_path: str, memory_mb: int, required: bool) -> list[str]:
    """Apply every confinement to this (still single-threaded) process.

    required: refuse to go on (ConfinementError) when one is missing; otherwise the
    missing ones are returned, for the runner to report.
    """
    limit_resources(memory_mb)
    missing = []
    why = _unshare_network()
    if why is not None:
        missing.append(f"network namespace ({why})")
    for name, step in (("seccomp", _deny_syscalls), ("landlock", _landlock)):
        try:
            step(model_path) if name == "landlock" else step()
        except Exception as error:  # noqa: BLE001 (reported below, or fatal)
            missing.append(f"{name} ({error})")
    if missing and required:
        raise ConfinementError("cannot confine the model runner: " + ", ".join(missing))
    return missing


def _deny_syscalls() -> None:
    if pyseccomp is None:
        raise ConfinementError(NO_SECCOMP)
    syscalls = pyseccomp.SyscallFilter(defaction=pyseccomp.ALLOW)
    for name in DENIED_SYSCALLS:
        syscalls.add_rule(pyseccomp.ERRNO(errno.EPERM), name)
    # A clone without CLONE_THREAD is a new process; clone3 hides its flags in memory,
    # so it is refused as unknown (glibc then starts threads with clone).
    no_thread = pyseccomp.Arg(0, pyseccomp.MASKED_EQ, CLONE_THREAD, 0)
    syscalls.add_rule(pyseccomp.ERRNO(errno.EPERM), "clone", no_thread)
    syscalls.add_rule(pyseccomp.ERRNO(errno.ENOSYS), "clone3")
    syscalls.load()


def _landlock(model_path: str) -> None:
    if LANDLOCK_ABI < 4:
        raise ConfinementError(f"Landlock ABI {LANDLOCK_ABI} cannot deny TCP")

    def readable(path) -> AccessFS:
        # A rule on a file may only grant rights that apply to files.
        return AccessFS.READ_FILE | (AccessFS.READ_DIR if os.path.isdir(path) else 0)

    reads = {sys.prefix, sys.base_prefix, str(Path(sys.executable).resolve().parent)}
    with Ruleset(scoped=Scope.ABSTRACT_UNIX_SOCKET | Scope.SIGNAL) as rules:
        for path in sorted(reads) + [*SYSTEM_READS]:
            if os.path.exists(path):
                rules.allow_path(path, readable(path) | AccessFS.EXECUTE)
        rules.allow_path(SERVICE_PACKAGE, readable(SERVICE_PACKAGE))
        rules.allow_path(model_path, readable(model_path))
        rules.restrict()


def drop_privileges(uid: int, gid: int) -> None:
    """Become uid:gid for good, with no supplementary groups (needs root)."""
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)  # as root this sets the real, effective and saved ids: no way back
    if os.getuid() != uid or os.geteuid() != uid or os.getegid() != gid:
        raise ConfinementError("could not drop privileges")
