"""The tutorial way to serve a model from Flask: one request, one `model.predict` call.

    BASELINE_MODEL_DIR=dir gunicorn 'bench.baselines.tutorial:create_app()'

Loads every `<name>.keras` in BASELINE_MODEL_DIR. Keras documents `predict` as made for
large inputs: it builds a dataset and an iterator on every call, ~50 ms of overhead
here. It stores nothing: no job, no prediction, no record of anything.
"""

import os
from pathlib import Path

import keras
import numpy as np
from flask import Flask

from bench.baselines.common import predicting_app


def create_app() -> Flask:
    folder = Path(os.environ["BASELINE_MODEL_DIR"])
    predictors = {}
    for path in folder.glob("*.keras"):
        model = keras.saving.load_model(path, safe_mode=True, compile=False)
        predictors[path.stem] = lambda inputs, model=model: model.predict(
            np.asarray(inputs, dtype="float32"), verbose=0
        )
    return predicting_app(predictors)
