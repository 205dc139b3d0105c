"""Small real models built by the tests, saved the ways clients upload them."""

import zipfile
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf


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


def zip_folder(folder: Path, path: Path) -> Path:
    """Zip a SavedModel folder as clients upload it."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in sorted(folder.rglob("*")):
            archive.write(file, Path(folder.name) / file.relative_to(folder))
    return path


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
