"""What the baselines that store nothing share: POST /predict and GET /healthz."""

from collections.abc import Callable

import numpy as np
from flask import Flask, jsonify, request


def predicting_app(predictors: dict[str, Callable[[list], np.ndarray]]) -> Flask:
    """POST /predict {"model": name, "inputs": [...]} -> {"outputs": [...]}, by name."""
    app = Flask(__name__)

    @app.get("/healthz")
    def healthz():
        return jsonify(status="ok")

    @app.post("/predict")
    def predict():
        body = request.get_json()
        outputs = predictors[body["model"]](body["inputs"])
        return jsonify(outputs=outputs.tolist())

    return app
