"""Uploaded model files: recognise the format, then inspect them in a sandboxed child.

A file is first sniffed here without loading anything (HDF5, pickles, foreign
zips and oversized files are refused at once); a plausible one is loaded by
`python -m service.registry.inspect_model` under a time limit and an address-space cap.
"""

import json
import resource
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # where `python -m service...` runs
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
ZIP_MAGIC = b"PK\x03\x04"


class ModelFileError(ValueError):
    """The upload is not a model Sibyl accepts; the message says what to do."""


def sniff_format(path: Path, max_bytes: int) -> str:
    """Return "keras" or "savedmodel" from the file's bytes, or raise ModelFileError."""
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
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        unpacked = sum(info.file_size for info in archive.infolist())
    if unpacked > 4 * max_bytes:
        raise ModelFileError(f"the archive unpacks to {unpacked} bytes, more than allowed")
    if any(name.startswith("/") or ".." in Path(name).parts for name in names):
        raise ModelFileError("the archive has paths outside its own folder")
    if "config.json" in names and any(name.endswith(".weights.h5") for name in names):
        return "keras"
    if any(Path(name).name == "saved_model.pb" for name in names):
        return "savedmodel"
    raise ModelFileError(
        "a zip file, but neither a Keras 3 .keras file nor a zipped SavedModel "
        "(a folder with saved_model.pb)"
    )


def unpack_savedmodel(archive_path: Path, target: Path) -> Path:
    """Extract a zipped SavedModel and return the folder that holds saved_model.pb."""
    with zipfile.ZipFile(archive_path) as archive:
        archive.extractall(target)  # paths were checked by sniff_format
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


def inspect_in_child(path: Path, model_format: str, timeout_s: float, memory_mb: int) -> dict:
    """Load the model in a child process with limits; return its signature."""

    def limit_memory() -> None:
        cap = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    try:
        finished = subprocess.run(
            [sys.executable, "-m", "service.registry.inspect_model", model_format, str(path)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            preexec_fn=limit_memory,
            env={"TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin:/bin"},
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
    """Recognise a model file and load it in a sandboxed child: {"format", "signature"}."""
    model_format = sniff_format(path, max_bytes)
    with tempfile.TemporaryDirectory() as workdir:
        loadable = loadable_path(path, model_format, Path(workdir))
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
