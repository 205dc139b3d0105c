"""What a competent engineer writes instead: one request, one compiled model call.

    BASELINE_MODEL_DIR=dir gunicorn 'bench.baselines.fast_no_record:create_app()'

Loads every `<name>.keras` in BASELINE_MODEL_DIR (and `<name>.labels.json`, the class
names, when present) and wraps each model in a `tf.function` whose batch dimension is
open, traced once: the technique of Sibyl's runtime, and faster here than
`predict_on_batch` (0.2 against 0.5 ms per iris call). No validation beyond what the
model call itself refuses, no authentication, and it stores nothing.
"""

import json
import os
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from flask import Flask

from bench.baselines.common import predicting_app


class Model:
    """A Keras model behind one compiled call, with its class names."""

    def __init__(self, path: Path):
        model = keras.saving.load_model(path, safe_mode=True, compile=False)
        (spec,) = model.inputs
        self.dtype = spec.dtype
        self.call = tf.function(
            lambda x: model(x, training=False),
            input_signature=[tf.TensorSpec([None, *spec.shape[1:]], spec.dtype)],
            autograph=False,
            reduce_retracing=True,
        )
        labels = path.with_suffix(".labels.json")
        self.labels = json.loads(labels.read_text()) if labels.exists() else None
        self.name = path.stem

    def predict(self, inputs: list) -> np.ndarray:
        return np.asarray(self.call(np.asarray(inputs, dtype=self.dtype)))


def load_models() -> dict[str, Model]:
    folder = Path(os.environ["BASELINE_MODEL_DIR"])
    return {path.stem: Model(path) for path in folder.glob("*.keras")}


def create_app() -> Flask:
    return predicting_app({name: model.predict for name, model in load_models().items()})
