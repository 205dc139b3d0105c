"""Small real models built by the tests, saved the ways clients upload them."""

import zipfile
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from bench.reliability.models import zip_folder


def tiny_classifier(path: Path) -> Path:
    """4 features -> 3 softmax classes, random weights."""
    keras.utils.set_random_seed(1)
    model = keras.Sequential(
        [keras.Input(shape=(4,), name="features"), keras.layers.Dense(3, activation="softmax")]
    )
    model.save(path)
    return path


def two_input_model(path: Path) -> Path:
    """A functional model with named inputs "a" (3 floats) and "b" (2 floats)."""
    keras.utils.set_random_seed(2)
    a = keras.Input(shape=(3,), name="a")
    b = keras.Input(shape=(2,), name="b")
    joined = keras.layers.Concatenate()([a, keras.layers.Dense(4, activation="tanh")(b)])
    output = keras.layers.Dense(2, name="score")(joined)
    keras.Model(inputs=[a, b], outputs=output).save(path)
    return path


def overflowing_model(path: Path) -> Path:
    """Sums its 2 inputs: finite inputs near float32's limit give an infinite output."""
    dense = keras.layers.Dense(1, kernel_initializer="ones", bias_initializer="zeros")
    keras.Sequential([keras.Input(shape=(2,)), dense]).save(path)
    return path


def embedding_model(path: Path) -> Path:
    """Looks up 2 integer ids in a table of 5: an id of 5 or more raises inside the model."""
    keras.utils.set_random_seed(3)
    model = keras.Sequential(
        [
            keras.Input(shape=(2,), dtype="int32"),
            keras.layers.Embedding(5, 3),
            keras.layers.Flatten(),
            keras.layers.Dense(1),
        ]
    )
    model.save(path)
    return path


def lambda_model(path: Path) -> Path:
    """A model with a Lambda layer: Python code inside, refused by safe_mode."""
    model = keras.Sequential([keras.Input(shape=(4,)), keras.layers.Lambda(lambda x: x * 2)])
    model.save(path)
    return path


def fixed_batch_model(path: Path) -> Path:
    """A model whose batch dimension is fixed to 1: it cannot be batched."""
    keras.Sequential([keras.Input(shape=(4,), batch_size=1), keras.layers.Dense(2)]).save(path)
    return path


def h5_model(path: Path) -> Path:
    """The legacy HDF5 format."""
    keras.Sequential([keras.Input(shape=(4,)), keras.layers.Dense(2)]).save(path)
    return path


class Doubler(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")])
    def serve(self, x):
        return {"y": 2.0 * x + 1.0}


def savedmodel_zip(path: Path) -> Path:
    """A SavedModel (y = 2x + 1 on 3 floats), zipped as clients upload it."""
    folder = path.parent / "doubler"
    module = Doubler()
    tf.saved_model.save(module, str(folder), signatures={"serving_default": module.serve})
    with zipfile.ZipFile(path, "w") as archive:
        for file in folder.rglob("*"):
            archive.write(file, Path("doubler") / file.relative_to(folder))
    return path


def direct_outputs(model_path: Path, inputs) -> np.ndarray:
    """What the model itself computes: model(x), no Sibyl in between."""
    model = keras.saving.load_model(model_path, safe_mode=True, compile=False)
    return np.asarray(model(inputs, training=False))


# --- Hostile models (tests/test_hostile_models.py) ------------------------------------


def serving_module(path: Path, extra, **attributes) -> Path:
    """A zipped tf.Module whose serving_default returns 2x + extra(), on 3 floats.

    extra() is traced into the serving function: whatever it calls is in the graph.
    """

    class Module(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")])
        def serve(self, x):
            return {"y": 2.0 * x + extra()}

    module = Module()
    for name, value in attributes.items():
        setattr(module, name, value)
    folder = path.parent / path.stem
    tf.saved_model.save(module, str(folder), signatures={"serving_default": module.serve})
    return zip_folder(folder, path)


class FileWritingResource(tf.saved_model.experimental.TrackableResource):
    """A resource whose initialiser, which tf.saved_model.load runs, writes a file."""

    def __init__(self, target: str):
        super().__init__()
        self.target = target

    def _create_resource(self):
        return tf.raw_ops.HashTableV2(key_dtype=tf.string, value_dtype=tf.int64)

    def _initialize(self):
        tf.io.write_file(self.target, "written when loaded")


def keras_export_zip(model, path: Path) -> Path:
    """A Keras model exported with model.export(), zipped."""
    folder = path.parent / path.stem
    model.export(str(folder), verbose=False)
    return zip_folder(folder, path)


def keras_tf_saved_model_zip(model, path: Path) -> Path:
    """A Keras model saved with tf.saved_model.save, zipped."""
    folder = path.parent / path.stem
    tf.saved_model.save(model, str(folder))
    return zip_folder(folder, path)


def ordinary_cnn() -> keras.Model:
    """The layers of ordinary models: conv, batch norm, pooling, dropout, dense, softmax."""
    keras.utils.set_random_seed(4)
    model = keras.Sequential(
        [
            keras.Input(shape=(8, 8, 1), name="pixels"),
            keras.layers.Rescaling(1 / 16),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.BatchNormalization(),
            keras.layers.MaxPooling2D(),
            keras.layers.AveragePooling2D(1),
            keras.layers.Dropout(0.2),
            keras.layers.Flatten(),
            keras.layers.Dense(8, activation="gelu", kernel_regularizer="l2"),
            keras.layers.LayerNormalization(),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def ordinary_rnn() -> keras.Model:
    """A functional recurrent model: embedding, LSTM, GRU, concatenation."""
    keras.utils.set_random_seed(5)
    tokens = keras.Input(shape=(5,), dtype="int32", name="tokens")
    extra = keras.Input(shape=(2,), name="extra")
    sequence = keras.layers.Embedding(10, 4)(tokens)
    sequence = keras.layers.LSTM(4, return_sequences=True)(sequence)
    summary = keras.layers.GRU(3)(sequence)
    joined = keras.layers.Concatenate()([summary, extra])
    return keras.Model([tokens, extra], keras.layers.Dense(2, activation="sigmoid")(joined))


# --- SavedModels that TensorFlow's loader reads differently from a naive scan ------------


def edit_saved_model(folder: Path, edit) -> None:
    """Rewrite a SavedModel folder's saved_model.pb: edit(object graph nodes, meta graph)."""
    from tensorflow.core.protobuf import saved_model_pb2

    path = folder / "saved_model.pb"
    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString(path.read_bytes())
    meta_graph = saved_model.meta_graphs[0]
    edit(meta_graph.object_graph_def.nodes, meta_graph)
    path.write_bytes(saved_model.SerializeToString())


def child_id(node, local_name: str) -> int:
    return next(ref.node_id for ref in node.children if ref.local_name == local_name)


def swapped_serving_default(path: Path, secret: Path, canary: Path, second_map: bool) -> Path:
    """A zipped SavedModel whose `serving_default` (2x) the loader replaces by "zz", a
    function that reads `secret` into its output and writes `canary`.

    Saved with both signatures, then either one more `serving_default` child pointing
    at zz's node in the signature map (the loader keeps the last child of a name), or
    (second_map) a second `signatures` child of the root: a copy of the map whose
    `serving_default` is zz.
    """
    spec = [tf.TensorSpec([None, 3], tf.float32, name="x")]

    class Module(tf.Module):
        @tf.function(input_signature=spec)
        def clean(self, x):
            return {"y": 2.0 * x}

        @tf.function(input_signature=spec)
        def evil(self, x):
            tf.io.write_file(str(canary), "written")
            read = tf.strings.length(tf.io.read_file(str(secret)))
            return {"y": 2.0 * x + tf.cast(read, tf.float32)}

    module = Module()
    folder = path.parent / path.stem
    tf.saved_model.save(
        module, str(folder), signatures={"serving_default": module.clean, "zz": module.evil}
    )

    def swap(nodes, meta_graph) -> None:
        signatures = child_id(nodes[0], "signatures")
        evil = child_id(nodes[signatures], "zz")
        if not second_map:
            nodes[signatures].children.add(node_id=evil, local_name="serving_default")
            return
        copy = nodes.add()
        copy.CopyFrom(nodes[signatures])
        for ref in copy.children:
            if ref.local_name == "serving_default":
                ref.node_id = evil
        nodes[0].children.add(node_id=len(nodes) - 1, local_name="signatures")

    edit_saved_model(folder, swap)
    return zip_folder(folder, path)


def disguised_resource(path: Path, written: Path) -> Path:
    """A zipped SavedModel whose loading writes `written`: FileWritingResource saved as
    a plain object of the registered class tf.StaticHashTable, its creator named as a
    dependency rather than a child (the loader makes it a resource all the same)."""
    folder = path.parent / path.stem

    class Module(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")])
        def serve(self, x):
            return {"y": 2.0 * x}

    module = Module()
    module.table = FileWritingResource(str(written))
    tf.saved_model.save(module, str(folder), signatures={"serving_default": module.serve})

    def disguise(nodes, meta_graph) -> None:
        resource = next(saved for saved in nodes if saved.HasField("resource"))
        creator = child_id(resource, "_create_resource")
        others = [ref for ref in resource.children if ref.local_name != "_create_resource"]
        del resource.children[:]
        resource.children.extend(others)
        resource.dependencies.add(node_id=creator, local_name="_create_resource")
        resource.user_object.identifier = "_generic_user_object"  # no longer a resource
        resource.registered_name = "tf.StaticHashTable"

    edit_saved_model(folder, disguise)
    return zip_folder(folder, path)


def signatures_with_a_get(path: Path, canary: Path) -> Path:
    """A zipped SavedModel whose root `signatures` is a plain object with a `get`
    method writing `canary`: `loaded.signatures.get("serving_default")` runs it."""

    class Signatures(tf.Module):
        def __init__(self, serving):
            self.serving_default = serving

        @tf.function(input_signature=[tf.TensorSpec([], tf.string)])
        def get(self, name):
            tf.io.write_file(str(canary), name)
            return name

    class Module(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")])
        def serve(self, x):
            return {"y": 2.0 * x}

    module = Module()
    module.fake_signatures = Signatures(module.serve)  # `signatures` is reserved on save
    folder = path.parent / path.stem
    tf.saved_model.save(module, str(folder), signatures={"serving_default": module.serve})

    def replace_signatures(nodes, meta_graph) -> None:
        root = nodes[0]
        others = [ref for ref in root.children if ref.local_name != "signatures"]
        del root.children[:]
        root.children.extend(others)
        for ref in root.children:
            if ref.local_name == "fake_signatures":
                ref.local_name = "signatures"

    edit_saved_model(folder, replace_signatures)
    return zip_folder(folder, path)


def edited_doubler(path: Path, edit) -> Path:
    """A zipped SavedModel (y = 2x + 1 on 3 floats) whose saved_model.pb edit() changed."""
    folder = path.parent / path.stem
    module = Doubler()
    tf.saved_model.save(module, str(folder), signatures={"serving_default": module.serve})
    edit_saved_model(folder, edit)
    return zip_folder(folder, path)


def nested_savedmodel(path: Path, depth: int = 60) -> Path:
    """A zipped SavedModel whose functions' output structures are nested `depth` lists
    deep: more than protobuf parses (100 messages deep), in fields the scan skips."""

    def nest(nodes, meta_graph) -> None:
        for function in meta_graph.object_graph_def.concrete_functions.values():
            for _ in range(depth):
                nested = type(function.output_signature)()
                nested.list_value.values.add().CopyFrom(function.output_signature)
                function.output_signature.CopyFrom(nested)

    return edited_doubler(path, nest)


def zip_with_extra(source: Path, path: Path, extra: dict[str, bytes]) -> Path:
    """A copy of a zip with more members."""
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(path, "w") as copy:
        for name in original.namelist():
            copy.writestr(name, original.read(name))
        for name, data in extra.items():
            copy.writestr(name, data)
    return path
