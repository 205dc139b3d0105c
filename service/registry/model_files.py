"""Uploaded model files: recognise and check them statically, then inspect them in a sandbox.

`inspect` does, in order:

1. here, reading bytes only: the size, the format (HDF5 and pickles refused), the
   zip's layout, a .keras file's config.json and a SavedModel's reachable
   operations (service/registry/model_scan.py). A refusal here costs milliseconds
   and nothing of the file has run;
2. `python -I -B -c ...` running service/registry/inspect_model.py in a child: an
   empty working directory, a minimal environment, limits on memory, file writes
   (none), open files and time. When Sibyl runs as root, the child imports
   TensorFlow, then becomes SANDBOX_USER (the interpreter may live where that user
   cannot read) before it opens the model, which is shared with that user's group,
   read-only. The child loads the model, checks its batch dimension and test-runs it.
"""

import json
import logging
import os
import pwd
import resource
import subprocess
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

from service.registry import model_scan
from service.registry.model_scan import ModelFileError

__all__ = ["ModelFileError", "check_labels", "inspect", "loadable_path", "sniff_format"]

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]  # where the `service` package lives
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
ZIP_MAGIC = b"PK\x03\x04"
# The user the inspection child runs as when Sibyl runs as root.
SANDBOX_USER = "nobody"
# TensorFlow holds ~60 descriptors open once imported; a model needs a handful more.
SANDBOX_MAX_OPEN_FILES = 256


def sniff_format(path: Path, max_bytes: int) -> str:
    """Return "keras" or "savedmodel" from the file's bytes, or raise ModelFileError.

    Reads the zip's directory and a .keras file's config.json or a SavedModel's
    saved_model.pb; nothing is extracted to disk and nothing is loaded.
    """
    size = path.stat().st_size
    if size > max_bytes:
        raise ModelFileError(f"the file is {size} bytes; models may be at most {max_bytes} bytes")
    with open(path, "rb") as handle:
        head = handle.read(8)
    if head.startswith(HDF5_MAGIC):
        raise ModelFileError(
            "HDF5 (.h5) models are not accepted: save the model in the Keras 3 format "
            "with model.save('model.keras')"
        )
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        raise ModelFileError("pickled files are refused: unpickling runs arbitrary code")
    if not head.startswith(ZIP_MAGIC) or not zipfile.is_zipfile(path):
        raise ModelFileError(
            "unsupported file: expected a Keras 3 .keras file or a zipped TensorFlow SavedModel"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            model_scan.check_archive(archive, max_unpacked_bytes=4 * max_bytes)
            return check_contents(archive, max_bytes)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error) as error:
        raise ModelFileError(f"the zip file cannot be read: {error}") from None


def check_contents(archive: zipfile.ZipFile, max_bytes: int) -> str:
    """The format of a checked zip, once its config or its graph passed the scan."""
    names = archive.namelist()
    if "config.json" in names and "model.weights.h5" in names:
        try:
            model_scan.check_keras_archive(archive)
        except ModelFileError as error:
            # The words clients saw when Keras' safe_mode refused a file, and the reason.
            raise ModelFileError(f"not a loadable Keras 3 model: {error}") from None
        return "keras"
    graphs = [name for name in names if Path(name).name == "saved_model.pb"]
    if len(graphs) > 1:
        raise ModelFileError("the archive holds more than one saved_model.pb")
    if graphs:
        graph_size = archive.getinfo(graphs[0]).file_size
        if graph_size > max_bytes:
            raise ModelFileError(
                f"saved_model.pb unpacks to {graph_size} bytes; at most {max_bytes} are read"
            )
        model_scan.check_savedmodel_graph(archive.read(graphs[0]))
        return "savedmodel"
    raise ModelFileError(
        "a zip file, but neither a Keras 3 .keras file nor a zipped SavedModel "
        "(a folder with saved_model.pb)"
    )


def unpack_savedmodel(archive_path: Path, target: Path) -> Path:
    """Extract a zipped SavedModel and return the folder that holds saved_model.pb."""
    with zipfile.ZipFile(archive_path) as archive:
        archive.extractall(target)  # paths, links and sizes were checked by sniff_format
    found = next(target.rglob("saved_model.pb"), None)
    if found is None:
        raise ModelFileError("no saved_model.pb in the archive")
    return found.parent


def loadable_path(path: Path, model_format: str, workdir: Path) -> Path:
    """The path TensorFlow loads: the file itself, or the unpacked SavedModel folder."""
    if model_format == "savedmodel":
        return unpack_savedmodel(path, workdir / "savedmodel")
    # Keras checks the extension.
    keras_path = workdir / "model.keras"
    if path != keras_path:
        keras_path.write_bytes(path.read_bytes())
    return keras_path


def sandbox_user() -> tuple[int, int] | None:
    """(uid, gid) the child drops to when Sibyl runs as root; None when it need not."""
    if os.geteuid() != 0:
        return None
    try:
        user = pwd.getpwnam(SANDBOX_USER)
    except KeyError:
        log.warning("no user %r: model inspection runs as root", SANDBOX_USER)
        return None
    return user.pw_uid, user.pw_gid


def sandbox_limits(memory_mb: int) -> Callable[[], None]:
    """The child's preexec function: its address space, no file writes, few open files."""

    def limit() -> None:
        cap = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        # Not one byte may be written to any file (Python ignores SIGXFSZ: writes
        # fail with EFBIG); no core dumps either.
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_NOFILE, (SANDBOX_MAX_OPEN_FILES, SANDBOX_MAX_OPEN_FILES))

    return limit


def share_with_sandbox(path: Path, gid: int) -> None:
    """Let the sandbox's group read (never write) path and everything under it."""
    for item in [path, *(path.rglob("*") if path.is_dir() else [])]:
        os.chown(item, -1, gid, follow_symlinks=False)
        os.chmod(item, 0o750 if item.is_dir() else 0o640)


def child_command(model_format: str, path: Path, user: tuple[int, int] | None) -> list[str]:
    """`python -I -B -c ...`: isolated from the environment, the cwd and user site-packages."""
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT)!r}); "
        "from service.registry.inspect_model import main; main(sys.argv[1:])"
    )
    command = [sys.executable, "-I", "-B", "-c", code, model_format, str(path)]
    if user is not None:
        command.append(f"--drop-to={user[0]}:{user[1]}")
    return command


def inspect_in_child(path: Path, model_format: str, timeout_s: float, memory_mb: int) -> dict:
    """Load the model in a sandboxed child process; return its signature."""
    user = sandbox_user()
    with tempfile.TemporaryDirectory(prefix="sibyl-sandbox-") as empty:
        cwd = Path(empty)
        if user is not None:
            share_with_sandbox(cwd, user[1])
        try:
            finished = subprocess.run(
                child_command(model_format, path, user),
                cwd=cwd,
                capture_output=True,
                text=True,
                timeout=timeout_s,
                preexec_fn=sandbox_limits(memory_mb),
                env={
                    "PATH": "/usr/bin:/bin",
                    "HOME": str(cwd),
                    "TF_CPP_MIN_LOG_LEVEL": "3",
                    "CUDA_VISIBLE_DEVICES": "",
                },
            )
        except subprocess.TimeoutExpired:
            raise ModelFileError(f"loading the model took longer than {timeout_s:g} s") from None
    lines = finished.stdout.strip().splitlines()
    try:
        result = json.loads(lines[-1])
    except (IndexError, ValueError):
        if "MemoryError" in finished.stderr or "bad_alloc" in finished.stderr:
            raise ModelFileError(f"loading the model needed more than {memory_mb} MB") from None
        tail = finished.stderr.strip().splitlines()[-1:] or [f"exit code {finished.returncode}"]
        raise ModelFileError(f"the model could not be loaded: {tail[0][:300]}") from None
    if "error" in result:
        raise ModelFileError(result["error"])
    return result["signature"]


def inspect(path: Path, *, max_bytes: int, timeout_s: float, memory_mb: int) -> dict:
    """Check a model file statically, then load it in a sandboxed child: {"format", "signature"}."""
    model_format = sniff_format(path, max_bytes)
    with tempfile.TemporaryDirectory(prefix="sibyl-model-") as workdir:
        loadable = loadable_path(path, model_format, Path(workdir))
        user = sandbox_user()
        if user is not None:
            share_with_sandbox(Path(workdir), user[1])
        signature = inspect_in_child(loadable, model_format, timeout_s, memory_mb)
    return {"format": model_format, "signature": signature}


def check_labels(labels: list[str] | None, signature: dict) -> None:
    """Labels name the classes of a classifier: one per unit of its output."""
    if not labels:
        return
    shape = signature["outputs"][0]["shape"]
    if len(shape) != 2 or shape[1] != len(labels):
        raise ModelFileError(
            f"{len(labels)} labels, but the model's output has shape {shape}: "
            "give one label per output unit, or none"
        )
    if len(set(labels)) != len(labels):
        raise ModelFileError("labels must be distinct")
