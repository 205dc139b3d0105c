"""The usual way to serve a model from Flask: one request, one `model.predict` call.

    NAIVE_MODEL_DIR=dir gunicorn 'bench.baselines.naive_flask:create_app()'

Loads every `<name>.keras` in NAIVE_MODEL_DIR. It stores nothing: no job, no
prediction, no record of anything, which is what Sibyl adds.
"""

import os
from pathlib import Path

import keras
import numpy as np
from flask import Flask, jsonify, request


def create_app() -> Flask:
    app = Flask(__name__)
    folder = Path(os.environ["NAIVE_MODEL_DIR"])
    models = {
        path.stem: keras.saving.load_model(path, safe_mode=True, compile=False)
        for path in folder.glob("*.keras")
    }

    @app.get("/healthz")
    def healthz():
        return jsonify(status="ok")

    @app.post("/predict")
    def predict():
        body = request.get_json()
        model = models[body["model"]]
        outputs = model.predict(np.asarray(body["inputs"], dtype="float32"), verbose=0)
        return jsonify(outputs=outputs.tolist())

    return app
