"""Hostile model files are refused before anything of them runs; the inspection child
runs sandboxed; stored files download as bytes."""

import errno
import importlib
import json
import os
import pickle
import pwd
import stat
import subprocess
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path

import gridfs
import keras
import model_builders
import pytest
import tensorflow as tf
from bson import ObjectId
from conftest import ROOT, upload_model

from service.registry import confine, model_files, model_scan, model_store
from service.registry.model_files import ModelFileError
from service.registry.runner import SANDBOX_USER, ModelRunner, RunnerLimits, RunnerUnavailable
from service.store.access import Store

LIMITS = {"max_bytes": 64 * 1024 * 1024, "limits": RunnerLimits()}
SECRET = "canary-secret-4f1d"


@pytest.fixture
def canary(tmp_path) -> Path:
    """A file of the server a hostile model reaches for."""
    path = tmp_path / "canary.txt"
    path.write_text(SECRET)
    return path


@pytest.fixture
def no_child(monkeypatch):
    """Fail the test if a model runner is started."""

    def no_runner(*args, **kwargs):
        raise AssertionError(f"a model runner was started: {args}")

    monkeypatch.setattr(model_files, "ModelRunner", no_runner)


@pytest.fixture(scope="module")
def tiny_keras(tmp_path_factory) -> Path:
    return model_builders.tiny_classifier(tmp_path_factory.mktemp("tiny") / "tiny.keras")


def edited_keras(base: Path, path: Path, edit=None, extra: dict | None = None) -> Path:
    """A copy of a .keras file, its config.json changed by edit(config), extra files added."""
    with zipfile.ZipFile(base) as source, zipfile.ZipFile(path, "w") as target:
        for name in source.namelist():
            data = source.read(name)
            if name == "config.json" and edit is not None:
                config = json.loads(data)
                edit(config)
                data = json.dumps(config).encode()
            target.writestr(name, data)
        for name, data in (extra or {}).items():
            target.writestr(name, data)
    return path


def layers(config: dict) -> list:
    return config["config"]["layers"]


def refuse(path: Path) -> str:
    """inspect() must refuse the file, without starting the child: the reason."""
    with pytest.raises(ModelFileError) as refused:
        model_files.inspect(path, **LIMITS)
    assert SECRET not in str(refused.value)
    return str(refused.value)


# --- .keras files whose config names code or files ---------------------------------------


def add_layer(layer: dict):
    return lambda config: layers(config).append(layer)


KERAS_EDITS = {
    "os.system": (
        lambda canary: add_layer(
            {"module": "os", "class_name": "system", "config": {}, "registered_name": None}
        ),
        "names os.system, which is not a Keras class",
    ),
    "a function outside the activations": (
        lambda canary: (
            lambda config: layers(config)[1]["config"].update(
                activation={
                    "module": "keras.utils",
                    "class_name": "function",
                    "config": "get_file",
                    "registered_name": "get_file",
                }
            )
        ),
        "names the function keras.utils.get_file",
    ),
    "a builtins function": (
        lambda canary: (
            lambda config: layers(config)[1]["config"].update(
                activation={
                    "module": "builtins",
                    "class_name": "function",
                    "config": "exec",
                    "registered_name": None,
                }
            )
        ),
        "names the function builtins.exec",
    ),
    "a registered_name outside Keras": (
        lambda canary: lambda config: layers(config)[1].update(registered_name="evil>Backdoor"),
        "registered_name 'evil>Backdoor'",
    ),
    "a serialised lambda": (
        lambda canary: (
            lambda config: layers(config)[1]["config"].update(
                activation={"class_name": "__lambda__", "config": {"value": "..."}}
            )
        ),
        "Lambda layer (Python code)",
    ),
    "a StringLookup reading its vocabulary from a file": (
        lambda canary: add_layer(
            {
                "module": "keras.layers",
                "class_name": "StringLookup",
                "config": {"name": "lookup", "vocabulary": str(canary)},
                "registered_name": None,
            }
        ),
        "a file path",
    ),
    "a TextVectorization vocabulary given by a relative path": (
        lambda canary: add_layer(
            {
                "module": "keras.layers",
                "class_name": "TextVectorization",
                "config": {"name": "words", "vocabulary": "canary.txt"},
                "registered_name": None,
            }
        ),
        "a file path",
    ),
    "a TFSMLayer": (
        lambda canary: add_layer(
            {
                "module": "keras.layers",
                "class_name": "TFSMLayer",
                "config": {"name": "saved", "filepath": str(canary.parent)},
                "registered_name": None,
            }
        ),
        "keras.layers.TFSMLayer",
    ),
}


@pytest.mark.parametrize("case", KERAS_EDITS)
def test_keras_config_naming_code_or_files_is_refused_unrun(
    no_child, tiny_keras, tmp_path, canary, case
):
    edit, message = KERAS_EDITS[case]
    hostile = edited_keras(tiny_keras, tmp_path / "hostile.keras", edit(canary))
    assert message in refuse(hostile)
    assert canary.read_text() == SECRET


def test_keras_lambda_layer_is_refused_unrun(no_child, tmp_path):
    lambda_model = model_builders.lambda_model(tmp_path / "lambda.keras")
    assert "Lambda layer (Python code)" in refuse(lambda_model)


def test_keras_file_with_assets_is_refused(no_child, tiny_keras, tmp_path):
    hostile = edited_keras(
        tiny_keras, tmp_path / "assets.keras", extra={"assets/vocabulary.txt": b"a\nb\n"}
    )
    assert "assets" in refuse(hostile)


def test_keras_file_with_a_member_dotted_or_twice_is_refused(no_child, tiny_keras, tmp_path):
    dotted = edited_keras(tiny_keras, tmp_path / "dotted.keras", extra={"./config.json": b"{}"})
    assert "'.' or empty components" in refuse(dotted)
    # The runtime's check before every load (check_keras_archive) refuses it too.
    twice = tmp_path / "twice.keras"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns of the duplicate it writes
        edited_keras(tiny_keras, twice, extra={"config.json": b"{}"})
    with zipfile.ZipFile(twice) as archive, pytest.raises(ModelFileError, match="twice"):
        model_scan.check_keras_archive(archive)


def test_pickle_renamed_keras_is_refused(no_child, tmp_path):
    renamed = tmp_path / "model.keras"
    renamed.write_bytes(pickle.dumps({"weights": [1, 2]}))
    assert "pickled files are refused" in refuse(renamed)


# --- zips that escape their folder or unpack to far more than they weigh ------------------


def zip_with(path: Path, members: dict) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def symlink_zip(path: Path) -> Path:
    link = zipfile.ZipInfo("model/saved_model.pb")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(link, "/etc/passwd")
    return path


def twice_zip(path: Path) -> Path:
    with warnings.catch_warnings(), zipfile.ZipFile(path, "w") as archive:
        warnings.simplefilter("ignore")  # zipfile warns of the duplicate it writes
        archive.writestr("model/saved_model.pb", b"x")
        archive.writestr("model/saved_model.pb", b"y")
    return path


def lying_sizes_zip(path: Path) -> Path:
    """A tiny member whose headers declare ~2 GB (compressed and unpacked alike)."""
    zip_with(path, {"model/saved_model.pb": b"x" * 10})
    data = bytearray(path.read_bytes())
    for signature, offset in ((b"PK\x03\x04", 18), (b"PK\x01\x02", 20)):
        start = data.find(signature)
        data[start + offset : start + offset + 8] = (0x7FFFFFF0).to_bytes(4, "little") * 2
    path.write_bytes(bytes(data))
    return path


ZIPS = {
    "../ path": (lambda path: zip_with(path, {"../evil/saved_model.pb": b"x"}), "outside"),
    "absolute path": (lambda path: zip_with(path, {"/etc/saved_model.pb": b"x"}), "outside"),
    "backslash path": (lambda path: zip_with(path, {"..\\x\\saved_model.pb": b"x"}), "outside"),
    "drive path": (lambda path: zip_with(path, {"C:\\x\\saved_model.pb": b"x"}), "outside"),
    "symbolic link": (symlink_zip, "symbolic link"),
    # zipfile.extractall drops "." and empty components: these would overwrite model/x.
    "./ path": (
        lambda path: zip_with(path, {"model/x": b"x", "model/./x": b"y"}),
        "'.' or empty components",
    ),
    "// path": (
        lambda path: zip_with(path, {"model/x": b"x", "model//x": b"y"}),
        "'.' or empty components",
    ),
    "a path twice": (twice_zip, "'model/saved_model.pb' twice"),
    "a file and a folder": (
        lambda path: zip_with(path, {"model/saved_model.pb": b"x", "model/saved_model.pb/y": b"y"}),
        "both as a file and as a folder",
    ),
    "a name too long": (
        lambda path: zip_with(path, {"model/saved_model.pb": b"x", "model/" + "a" * 256: b"y"}),
        "a file name in the archive is too long",
    ),
    "compression ratio": (
        lambda path: zip_with(path, {"model/saved_model.pb": bytes(8 * 1024 * 1024)}),
        "compression ratio above 200:1",
    ),
    "declared size": (lying_sizes_zip, "bytes unpacked (a zip bomb?)"),
}


@pytest.mark.parametrize("case", ZIPS)
def test_hostile_zip_is_refused_unextracted(no_child, monkeypatch, tmp_path, case):
    build, message = ZIPS[case]

    def no_extraction(*args, **kwargs):
        raise AssertionError("the archive was extracted")

    monkeypatch.setattr(zipfile.ZipFile, "extractall", no_extraction)
    assert message in refuse(build(tmp_path / "upload.zip"))


# --- SavedModels whose serving (or loading) touches the world ------------------------------


def hostile_savedmodels(folder: Path, canary: Path, written: Path) -> dict:
    """Builders of SavedModels reaching for the canary or writing `written`."""
    read, write = str(canary), str(written)

    @tf.function
    def inner_read():
        return tf.cast(tf.strings.length(tf.io.read_file(read)), tf.float32)

    def write_then_zero():
        tf.io.write_file(write, "written")
        return 0.0

    return {
        "ReadFile": lambda: model_builders.serving_module(
            folder / "read.zip",
            lambda: tf.cast(tf.strings.length(tf.io.read_file(read)), tf.float32),
        ),
        "WriteFile": lambda: model_builders.serving_module(folder / "write.zip", write_then_zero),
        "TextLineDataset": lambda: model_builders.serving_module(
            folder / "lines.zip",
            lambda: tf.data.TextLineDataset(read).reduce(0.0, lambda total, line: total + 1.0),
        ),
        "EagerPyFunc": lambda: model_builders.serving_module(
            folder / "python.zip",
            lambda: tf.reshape(tf.py_function(lambda: 1.0, [], tf.float32), []),
        ),
        "MatchingFiles": lambda: model_builders.serving_module(
            folder / "glob.zip",
            lambda: tf.cast(tf.size(tf.io.matching_files(read + "*")), tf.float32),
        ),
        # Hidden one call deep, and in a branch of a condition.
        "ReadFile (in a called function)": lambda: model_builders.serving_module(
            folder / "nested.zip", inner_read
        ),
        "ReadFile (in a branch)": lambda: model_builders.serving_module(
            folder / "branch.zip",
            lambda: tf.cond(tf.random.uniform([]) > 2.0, inner_read, lambda: 0.0),
        ),
        # Not in serving at all: in what tf.saved_model.load runs.
        "WriteFile (when loaded)": lambda: model_builders.serving_module(
            folder / "on_load.zip",
            lambda: 0.0,
            table=model_builders.FileWritingResource(write),
        ),
    }


HOSTILE_SAVEDMODELS = [
    "ReadFile",
    "WriteFile",
    "TextLineDataset",
    "EagerPyFunc",
    "MatchingFiles",
    "ReadFile (in a called function)",
    "ReadFile (in a branch)",
    "WriteFile (when loaded)",
]


@pytest.mark.parametrize("case", HOSTILE_SAVEDMODELS)
def test_savedmodel_touching_files_or_python_is_refused_unrun(no_child, tmp_path, canary, case):
    written = tmp_path / "written.txt"
    hostile = hostile_savedmodels(tmp_path, canary, written)[case]()
    written.unlink(missing_ok=True)  # whatever building it did; inspecting must not write

    message = refuse(hostile)

    assert case.split()[0] in message
    assert "Only inference operations are accepted" in message
    assert canary.read_text() == SECRET
    assert not written.exists()


@pytest.mark.parametrize(
    ("graph", "message"),
    [
        (b"\x12\x05ab", "not a SavedModel protocol buffer"),
        (b"", "a TensorFlow 1 SavedModel (without an object graph) is not accepted"),
    ],
)
def test_savedmodel_that_cannot_be_scanned_is_refused(no_child, tmp_path, graph, message):
    assert message in refuse(zip_with(tmp_path / "odd.zip", {"model/saved_model.pb": graph}))


def assert_upload_refused(api, db, path: Path, message: str) -> None:
    """POST /v1/models answers a 422 naming the problem, quoting no path of the server,
    and stores nothing."""
    response = upload_model(api, "hostile", path)
    assert response.status_code == 422, response.text
    assert message in str(response.json()["_issues"]["file"])
    assert SECRET not in response.text
    for server_path in ("/tmp/", tempfile.gettempdir(), str(path.parent)):
        assert server_path not in response.text
    assert api.get("/models").json()["_items"] == []
    assert db["fs.files"].count_documents({}) == 0
    assert db["fs.chunks"].count_documents({}) == 0


def test_hostile_savedmodel_upload_is_422_and_nothing_is_stored(api, db, tmp_path, canary):
    hostile = hostile_savedmodels(tmp_path, canary, tmp_path / "written.txt")["ReadFile"]()
    assert_upload_refused(api, db, hostile, "ReadFile")


# --- SavedModels TensorFlow's loader reads differently from a naive scan -------------------


@pytest.mark.parametrize(
    ("second_map", "message"),
    [(False, "names 'serving_default' twice"), (True, "names 'signatures' twice")],
)
def test_savedmodel_swapping_its_serving_signature_is_refused_at_upload(
    api, db, tmp_path, canary, second_map, message
):
    written = tmp_path / "written.txt"
    hostile = model_builders.swapped_serving_default(
        tmp_path / "swapped.zip", canary, written, second_map
    )
    # What TensorFlow would serve as serving_default: "zz", which reads and writes files.
    loaded = tf.saved_model.load(str(tmp_path / "swapped"))
    assert loaded.signatures["serving_default"] is loaded.signatures["zz"]

    assert_upload_refused(api, db, hostile, message)
    assert not written.exists()
    assert canary.read_text() == SECRET


def disguised_resource(folder: Path, written: Path) -> Path:
    hostile = model_builders.disguised_resource(folder / "disguised.zip", written)
    tf.saved_model.load(str(folder / "disguised"))
    assert written.exists()  # TensorFlow's loader ran the hidden WriteFile
    return hostile


def signatures_with_a_get(folder: Path, written: Path) -> Path:
    hostile = model_builders.signatures_with_a_get(folder / "get.zip", written)
    # What the runtime asks of every SavedModel runs its WriteFile.
    tf.saved_model.load(str(folder / "get")).signatures.get("serving_default")
    assert written.exists()
    return hostile


def function_twice(folder: Path, written: Path) -> Path:
    def duplicate(nodes, meta_graph) -> None:
        functions = meta_graph.graph_def.library.function
        functions.add().CopyFrom(functions[0])

    return model_builders.edited_doubler(folder / "twice.zip", duplicate)


def registered_class(folder: Path, written: Path) -> Path:
    def register(nodes, meta_graph) -> None:
        nodes[0].registered_name = "evil.Backdoor"

    return model_builders.edited_doubler(folder / "class.zip", register)


LOADER_TRICKS = {
    "a resource disguised as a registered class": (disguised_resource, "WriteFile"),
    "a signatures object with a get method": (signatures_with_a_get, "one signature map"),
    "a function defined twice": (function_twice, "defines the function"),
    "a class built by code of its own": (registered_class, "'evil.Backdoor', which Sibyl"),
}


@pytest.mark.parametrize("case", LOADER_TRICKS)
def test_savedmodel_the_loader_reads_otherwise_is_refused_unrun(no_child, tmp_path, case):
    build, message = LOADER_TRICKS[case]
    written = tmp_path / "written.txt"
    hostile = build(tmp_path, written)
    written.unlink(missing_ok=True)  # what loading it here wrote; inspecting must not write

    assert message in refuse(hostile)
    assert not written.exists()


@pytest.mark.parametrize(
    ("case", "message"),
    [("ReadFile", "ReadFile"), ("swapped", "names 'serving_default' twice")],
)
def test_savedmodel_stored_before_the_scan_is_refused_when_loaded(tmp_path, canary, case, message):
    """The engine loads stored models through the runtime, which scans them again."""
    from service.registry.runtime import CompiledModel, ModelLoadError

    written = tmp_path / "written.txt"
    if case == "ReadFile":
        hostile = hostile_savedmodels(tmp_path, canary, written)["ReadFile"]()
    else:
        hostile = model_builders.swapped_serving_default(
            tmp_path / "swapped.zip", canary, written, second_map=False
        )
    folder = model_files.loadable_path(hostile, "savedmodel", tmp_path / "unpacked")
    with pytest.raises(ModelLoadError, match=message):
        CompiledModel(str(folder), "savedmodel")
    assert not written.exists()


def test_zip_entry_overwriting_another_when_unpacked_is_refused(api, db, tmp_path):
    doubler = model_builders.savedmodel_zip(tmp_path / "doubler.zip")
    hostile = model_builders.zip_with_extra(
        doubler, tmp_path / "dotted.zip", {"doubler/./variables/variables.index": b"junk"}
    )
    assert_upload_refused(api, db, hostile, "'.' or empty components")
    # A model stored before the check is refused when unpacked to be served: its jobs
    # fail saying why (RunnerUnavailable), and nothing of it stays in the model cache.
    with pytest.raises(ModelFileError, match="'.' or empty components"):
        model_files.loadable_path(hostile, "savedmodel", tmp_path / "unpacked")
    assert not (tmp_path / "unpacked").exists()
    stored = {
        "_id": ObjectId(),
        "format": "savedmodel",
        "file": gridfs.GridFS(db).put(hostile.read_bytes()),
    }
    with pytest.raises(RunnerUnavailable, match="'.' or empty components"):
        model_store.local_copy(Store(db), stored, tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


# --- refusals in a client's words ----------------------------------------------------------


def test_too_long_a_file_name_is_a_422_without_server_paths(api, db, tmp_path):
    doubler = model_builders.savedmodel_zip(tmp_path / "doubler.zip")
    hostile = model_builders.zip_with_extra(
        doubler, tmp_path / "long.zip", {"doubler/assets/" + "a" * 300: b"x"}
    )
    assert_upload_refused(api, db, hostile, "a file name in the archive is too long")


def test_too_deeply_nested_savedmodel_is_a_422_without_server_paths(api, db, tmp_path):
    """Nested in fields the scan skips: TensorFlow's own parser refuses it, in the runner."""
    nested = model_builders.nested_savedmodel(tmp_path / "nested.zip")
    assert_upload_refused(api, db, nested, "saved_model.pb is nested too deeply")


@pytest.mark.parametrize(
    ("failure", "message"),
    [
        (
            OSError(errno.ENAMETOOLONG, "File name too long", "/tmp/sibyl-model-x/a"),
            "a file name in the archive is too long",
        ),
        (RecursionError("maximum recursion depth exceeded"), "nested too deeply"),
        (
            ModelFileError(
                "not a loadable SavedModel: Cannot parse file b'/tmp/sibyl-model-x/m/"
                "saved_model.pb': Error parsing message: Exceeded upb_DecodeOptions_MaxDepth."
            ),
            "saved_model.pb is nested too deeply",
        ),
        (
            ModelFileError(f"not a loadable Keras 3 model: '{tempfile.gettempdir()}/x/y'"),
            model_scan.WITHHELD,
        ),
        (KeyError("an internal name"), model_scan.WITHHELD),
        (ModelFileError("labels must be distinct"), "labels must be distinct"),
    ],
)
def test_refusals_reach_clients_in_their_words(failure, message):
    @model_scan.refusals_in_client_words
    def inspect() -> dict:
        raise failure

    with pytest.raises(ModelFileError) as refused:
        inspect()
    assert message in str(refused.value)
    assert "/tmp/" not in str(refused.value)


# --- ordinary models pass ------------------------------------------------------------------


@pytest.fixture(scope="module")
def ordinary_models(tmp_path_factory) -> dict[str, Path]:
    """Demo-like models saved every way clients upload them."""
    folder = tmp_path_factory.mktemp("ordinary")
    cnn, rnn = model_builders.ordinary_cnn(), model_builders.ordinary_rnn()
    cnn.save(folder / "cnn.keras")
    rnn.save(folder / "rnn.keras")
    iris = keras.Sequential(
        [
            keras.Input(shape=(4,), name="measurements"),
            keras.layers.Normalization(mean=[5.8, 3.0, 3.8, 1.2], variance=[0.7, 0.2, 3.1, 0.6]),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    iris.save(folder / "iris.keras")
    return {
        "cnn.keras": folder / "cnn.keras",
        "rnn.keras": folder / "rnn.keras",
        "iris.keras": folder / "iris.keras",
        "cnn export": model_builders.keras_export_zip(cnn, folder / "cnn_export.zip"),
        "rnn export": model_builders.keras_export_zip(rnn, folder / "rnn_export.zip"),
        "cnn tf.saved_model.save": model_builders.keras_tf_saved_model_zip(
            cnn, folder / "cnn_saved.zip"
        ),
        "tf.Module": model_builders.savedmodel_zip(folder / "doubler.zip"),
    }


def test_ordinary_models_pass_the_static_checks(no_child, ordinary_models):
    formats = {
        name: model_files.sniff_format(path, LIMITS["max_bytes"])
        for name, path in ordinary_models.items()
    }
    assert formats == {
        name: "keras" if name.endswith(".keras") else "savedmodel" for name in ordinary_models
    }


@pytest.mark.parametrize("name", ["cnn.keras", "cnn export"])
def test_ordinary_model_is_accepted_by_the_sandboxed_child(ordinary_models, name):
    inspection = model_files.inspect(ordinary_models[name], **LIMITS)
    assert inspection["signature"]["inputs"][0]["shape"] == [None, 8, 8, 1]
    assert inspection["signature"]["outputs"][0]["shape"] == [None, 3]


# --- the allow-lists stay true to the libraries -------------------------------------------


def test_keras_allow_list_names_keras_classes_and_functions():
    for module, names in model_scan.KERAS_CLASSES.items():
        namespace = importlib.import_module(module)
        for name in names:
            assert isinstance(getattr(namespace, name, None), type), f"{module}.{name}"
    for module, names in model_scan.KERAS_FUNCTIONS.items():
        namespace = importlib.import_module(module)
        for name in names:
            assert callable(getattr(namespace, name, None)), f"{module}.{name}"


def test_op_allow_list_names_registered_operations_and_no_io():
    from tensorflow.python.framework import op_def_registry

    assert not [op for op in model_scan.ALLOWED_OPS if op_def_registry.get(op) is None]
    for refused in ["ReadFile", "WriteFile", "MatchingFiles", "PyFunc", "EagerPyFunc", "SaveV2"]:
        assert refused not in model_scan.ALLOWED_OPS


def test_registered_classes_are_tensorflows():
    from tensorflow.python.saved_model import registration

    for name in model_scan.REGISTERED_CLASSES:
        assert registration.get_registered_class(name) is not None, name


def test_scan_reads_tensorflows_field_numbers():
    """The scan's reduced protos have TensorFlow's field numbers, message by message."""
    from tensorflow.core.protobuf import saved_model_pb2, saved_object_graph_pb2

    def compare(ours: str, theirs, seen: set) -> None:
        if ours in seen:
            return
        seen.add(ours)
        for field, (number, kind, repeated) in model_scan._PROTO_FIELDS[ours].items():
            real = theirs.fields_by_name[field]
            assert (real.number, real.is_repeated) == (number, repeated), f"{ours}.{field}"
            if kind in model_scan._PROTO_FIELDS:
                compare(kind, real.message_type, seen)

    seen: set = set()
    compare("SavedModel", saved_model_pb2.SavedModel.DESCRIPTOR, seen)
    assert seen == set(model_scan._PROTO_FIELDS)
    # Every kind of object, so that the last kind in a file is the object's for both.
    kinds = saved_object_graph_pb2.SavedObject.DESCRIPTOR.oneofs_by_name["kind"].fields
    assert {field.name for field in kinds} == model_scan._SAVED_OBJECT_KINDS


# --- the sandbox ---------------------------------------------------------------------------


def run_limited(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
        preexec_fn=lambda: confine.limit_resources(memory_mb=1024),
    )


def test_sandboxed_child_cannot_write_a_byte(tmp_path):
    finished = run_limited("handle = open('x', 'w'); handle.write('y'); handle.close()", tmp_path)
    assert finished.returncode != 0
    assert "File too large" in finished.stderr
    assert (tmp_path / "x").stat().st_size == 0


def test_sandboxed_child_cannot_open_many_files(tmp_path):
    finished = run_limited("files = [open('/dev/null') for _ in range(300)]", tmp_path)
    assert finished.returncode != 0
    assert "Too many open files" in finished.stderr


def test_runner_starts_in_an_empty_directory_with_a_minimal_environment(tiny_keras):
    runner = ModelRunner(tiny_keras, "keras", RunnerLimits())
    try:
        runner.start()
        proc = Path(f"/proc/{runner.pid}")
        cwd = proc / "cwd"
        assert os.listdir(cwd) == []
        assert Path(os.readlink(cwd)).resolve() != ROOT
        command = (proc / "cmdline").read_bytes().split(b"\0")
        assert command[:3] == [sys.executable.encode(), b"-I", b"-B"]
        environment = (proc / "environ").read_bytes().strip(b"\0").split(b"\0")
        names = {entry.split(b"=")[0].decode() for entry in environment}
        assert names == {"PATH", "HOME", "TF_CPP_MIN_LOG_LEVEL", "CUDA_VISIBLE_DEVICES"}
        status = (proc / "status").read_text()
        if os.geteuid() == 0:
            nobody = pwd.getpwnam(SANDBOX_USER)
            assert f"Uid:\t{nobody.pw_uid}\t{nobody.pw_uid}\t{nobody.pw_uid}" in status
        assert "NoNewPrivs:\t1" in status
        assert "Seccomp:\t2" in status  # a filter is loaded
    finally:
        runner.stop()


needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="dropping privileges needs root (as a user, there are none to drop)"
)


@needs_root
def test_drop_privileges_is_for_good(tmp_path):
    nobody = pwd.getpwnam(SANDBOX_USER)
    code = (
        "import os; from service.registry.confine import drop_privileges; "
        f"drop_privileges({nobody.pw_uid}, {nobody.pw_gid}); "
        "print(os.getuid(), os.getgid(), os.getgroups()); os.setuid(0)"
    )
    finished = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert finished.stdout.split() == [str(nobody.pw_uid), str(nobody.pw_gid), "[]"]
    assert "PermissionError" in finished.stderr


# --- downloads -----------------------------------------------------------------------------


def test_model_file_downloads_as_bytes_whatever_its_claimed_type(api, tiny_keras):
    with open(tiny_keras, "rb") as handle:
        created = api.post(
            "/models",
            data={"name": "tiny"},
            files={"file": ("<b>page</b>.html", handle, "text/html")},
        )
    assert created.status_code == 201, created.text
    model = api.get(f"/models/{created.json()['_id']}").json()

    download = api.session.get(api.base_url.removesuffix("/v1") + model["file"]["file"])

    assert download.status_code == 200
    assert download.headers["Content-Type"] == "application/octet-stream"
    assert download.headers["X-Content-Type-Options"] == "nosniff"
    assert download.headers["Content-Disposition"] == 'attachment; filename="b_page__b_.html"'
    assert download.content == tiny_keras.read_bytes()
