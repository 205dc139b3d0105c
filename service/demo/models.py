"""The demo models: an iris classifier and a digits classifier, trained at first start.

    python -m service.demo.models    (run.py serve runs it on an empty database)

Both train (about half a minute together) on data shipped in service/demo/data/,
deterministically, and are registered like an upload (inspected in a sandboxed
child first).
"""

import csv
import gzip
import logging
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pymongo

import settings
from service.registry import model_store
from service.registry.runner import RunnerLimits
from service.store.access import Store

log = logging.getLogger("sibyl.demo")

DATA = Path(__file__).resolve().parent / "data"
IRIS_LABELS = ["setosa", "versicolor", "virginica"]
DIGIT_LABELS = [str(digit) for digit in range(10)]


def load_iris() -> tuple[np.ndarray, np.ndarray]:
    """150 rows of 4 measurements (cm) and the species index."""
    with open(DATA / "iris.csv") as handle:
        rows = list(csv.reader(handle))[1:]  # the first line is a header of counts
    data = np.array(rows, dtype=np.float32)
    return data[:, :4], data[:, 4].astype(np.int64)


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """1,797 images of 8x8 pixels (0-16) and the digit."""
    with gzip.open(DATA / "digits.csv.gz", "rt") as handle:
        data = np.loadtxt(handle, delimiter=",", dtype=np.float32)
    return data[:, :64].reshape(-1, 8, 8), data[:, 64].astype(np.int64)


def train_iris(path: Path) -> float:
    """Train the iris classifier, save it to path, return its training accuracy."""
    import keras

    keras.utils.set_random_seed(0)
    features, species = load_iris()
    normalize = keras.layers.Normalization(name="standardize")
    normalize.adapt(features)
    model = keras.Sequential(
        [
            keras.Input(shape=(4,), name="measurements"),
            normalize,
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(3, activation="softmax", name="species"),
        ]
    )
    return fit_and_save(model, features, species, path, learning_rate=0.02, epochs=60, batch=16)


def train_digits(path: Path) -> float:
    """Train the digits classifier, save it to path, return its training accuracy."""
    import keras

    keras.utils.set_random_seed(0)
    images, digits = load_digits()
    model = keras.Sequential(
        [
            keras.Input(shape=(8, 8), name="pixels"),
            keras.layers.Rescaling(1 / 16),
            keras.layers.Flatten(),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10, activation="softmax", name="digit"),
        ]
    )
    return fit_and_save(model, images, digits, path, learning_rate=0.005, epochs=25, batch=32)


def fit_and_save(
    model, x, y, path: Path, *, learning_rate: float, epochs: int, batch: int
) -> float:
    """Train a classifier on class indices, save it, return its training accuracy."""
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    history = model.fit(x, y, epochs=epochs, batch_size=batch, shuffle=True, verbose=0)
    model.save(path)
    return history.history["accuracy"][-1]


DEMOS = {
    "iris": (train_iris, IRIS_LABELS, "Iris species from sepal and petal length and width (cm)"),
    "digits": (train_digits, DIGIT_LABELS, "Handwritten digit from an 8x8 image, pixels 0-16"),
}


def ensure_demo_models(db, limits: dict) -> list[str]:
    """Train and register the demo models missing from the database; return their names."""
    added, store = [], Store(db)
    for name, (train, labels, description) in DEMOS.items():
        if store.models.find_one({"name": name}, {"_id": 1}) is not None:
            continue
        with tempfile.TemporaryDirectory() as workdir:
            path = Path(workdir) / f"{name}.keras"
            accuracy = train(path)
            model = model_store.register(
                store, name, path, labels=labels, description=description, limits=limits
            )
        log.info(
            "registered demo model %s v%s (training accuracy %.3f)",
            name,
            model["version"],
            accuracy,
        )
        added.append(name)
    return added


def model_limits(config) -> dict:
    """The upload limits of settings.py, as model_store.register takes them."""
    return {
        "max_bytes": config.MAX_MODEL_BYTES,
        "limits": RunnerLimits.from_config(vars(config)),
    }


def main() -> None:
    # TensorFlow's C++ start-up notices (oneDNN, CUDA drivers) are written to file
    # descriptor 2 whatever TF_CPP_MIN_LOG_LEVEL says: `make run` shows Sibyl's lines,
    # so they go nowhere, and Python's own (logs, tracebacks) to the real stderr.
    sys.stderr = os.fdopen(os.dup(2), "w", buffering=1)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    client = pymongo.MongoClient(os.environ["MONGO_URI"], tz_aware=True, **settings.MONGO_OPTIONS)
    db = client.get_default_database(settings.MONGO_DBNAME)
    ensure_demo_models(db, model_limits(settings))


if __name__ == "__main__":
    sys.exit(main())
