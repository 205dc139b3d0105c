"""Uploaded model files: recognise and check them statically, then inspect them in a sandbox.

`inspect` does, in order:

1. here, reading bytes only: the size, the format (HDF5 and pickles refused), the
   zip's layout, a .keras file's config.json and a SavedModel's reachable
   operations (service/registry/model_scan.py). A refusal here costs milliseconds
   and nothing of the file has run;
2. a model runner (service/registry/runner.py), the confined process every job's
   model call runs in too: it loads the model, checks its batch dimension, and is
   test-run on zeros; the time of that call sets the model's call time limit.
"""

import tempfile
import time
import zipfile
import zlib
from pathlib import Path

from service.registry import model_scan
from service.registry.model_scan import ModelFileError
from service.registry.runner import (
    TEST_ROWS,
    ModelCallError,
    ModelRunner,
    RunnerLimits,
    RunnerUnavailable,
    sample_batch,
)

__all__ = ["ModelFileError", "check_labels", "inspect", "loadable_path", "sniff_format"]

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
ZIP_MAGIC = b"PK\x03\x04"


def sniff_format(path: Path, max_bytes: int, static_scan: bool = True) -> str:
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
            return check_contents(archive, max_bytes, static_scan)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error):
        raise ModelFileError("the zip file cannot be read (damaged or truncated?)") from None


def check_contents(archive: zipfile.ZipFile, max_bytes: int, static_scan: bool = True) -> str:
    """The format of a checked zip, once its config or its graph passed the scan
    (skipped only by tests that show what the runner's confinement holds alone)."""
    names = archive.namelist()
    if "config.json" in names and "model.weights.h5" in names:
        try:
            if static_scan:
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
        if static_scan:
            model_scan.check_savedmodel_graph(archive.read(graphs[0]))
        return "savedmodel"
    raise ModelFileError(
        "a zip file, but neither a Keras 3 .keras file nor a zipped SavedModel "
        "(a folder with saved_model.pb)"
    )


def unpack_savedmodel(archive_path: Path, target: Path) -> Path:
    """Extract a zipped SavedModel and return the folder that holds saved_model.pb."""
    with zipfile.ZipFile(archive_path) as archive:
        # Links and sizes were checked by sniff_format; the names again here, since
        # extraction would overwrite a file named twice (a stored model's too).
        model_scan.check_member_names(archive)
        archive.extractall(target)
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


@model_scan.refusals_in_client_words
def inspect(path: Path, *, max_bytes: int, limits: RunnerLimits) -> dict:
    """Check a model file statically, then load and test-run it in a model runner:
    {"format", "signature", "test_call_ms"}."""
    model_format = sniff_format(path, max_bytes, static_scan=limits.static_scan)
    with tempfile.TemporaryDirectory(prefix="sibyl-model-") as workdir:
        loadable = loadable_path(path, model_format, Path(workdir))
        runner = ModelRunner(loadable, model_format, limits)
        try:
            signature = runner.start()
            # A model that cannot run on a sample input cannot serve jobs either.
            sample = sample_batch(signature["inputs"], TEST_ROWS)
            started = time.perf_counter()
            runner.predict(sample, limits.load_timeout_s)
            test_call_ms = (time.perf_counter() - started) * 1000
        except RunnerUnavailable as error:
            raise ModelFileError(str(error)) from None
        except ModelCallError as error:
            raise ModelFileError(f"the model failed on a sample input: {error}") from None
        finally:
            runner.stop()
    return {"format": model_format, "signature": signature, "test_call_ms": test_call_ms}


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
