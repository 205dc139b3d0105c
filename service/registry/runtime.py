"""The TensorFlow runtime: load a model file, call it through one compiled function.

The only module that imports TensorFlow; the API and the hooks never import it.
`model.predict` costs ~50 ms of fixed overhead per call here, a compiled
`tf.function` ~0.3 ms, so every model is wrapped in one whose input signature
leaves the batch dimension open: one trace serves every batch size.
"""

import os
import zipfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from service.registry import model_scan  # noqa: E402

SAVEDMODEL_SIGNATURE = "serving_default"


class ModelLoadError(ValueError):
    """The file is not a model Sibyl can serve; the message says why."""


class CompiledModel:
    """A loaded model: load() once, predict(batch) many times."""

    def __init__(self, path: str, model_format: str, static_scan: bool = True):
        if static_scan:
            check_statically(path, model_format)
        if model_format == "keras":
            self._load_keras(path)
        elif model_format == "savedmodel":
            self._load_savedmodel(path)
        else:
            raise ModelLoadError(f"unknown model format {model_format!r}")

    def _load_keras(self, path: str) -> None:
        try:
            # safe_mode refuses Lambda layers and anything that would run
            # Python code from the file; unknown custom classes fail too.
            model = keras.saving.load_model(path, safe_mode=True, compile=False)
        except Exception as error:
            raise ModelLoadError(f"not a loadable Keras 3 model: {_first_line(error)}") from None
        if not getattr(model, "inputs", None):
            raise ModelLoadError("the model has no defined inputs: build it with keras.Input")
        outputs = model.outputs
        if len(outputs) != 1:
            raise ModelLoadError(f"the model has {len(outputs)} outputs; Sibyl serves one")
        self.inputs = [_spec(t.name, t.shape, t.dtype) for t in model.inputs]
        self.outputs = [_spec(t.name, t.shape, t.dtype) for t in outputs]
        specs = [_tensor_spec(spec) for spec in self.inputs]
        single = len(specs) == 1

        @tf.function(input_signature=specs, autograph=False, reduce_retracing=True)
        def call(*tensors):
            return model(tensors[0] if single else list(tensors), training=False)

        self._model = model
        self._call = call

    def _load_savedmodel(self, path: str) -> None:
        try:
            loaded = tf.saved_model.load(path)
        except Exception as error:
            raise ModelLoadError(f"not a loadable SavedModel: {_first_line(error)}") from None
        signature = loaded.signatures.get(SAVEDMODEL_SIGNATURE)
        if signature is None:
            raise ModelLoadError(f"the SavedModel has no {SAVEDMODEL_SIGNATURE!r} signature")
        _, input_specs = signature.structured_input_signature
        output_specs = signature.structured_outputs
        if len(output_specs) != 1:
            raise ModelLoadError(
                f"the SavedModel has {len(output_specs)} outputs; Sibyl serves one"
            )
        self.inputs = [
            _spec(name, s.shape, s.dtype.name) for name, s in sorted(input_specs.items())
        ]
        self.outputs = [_spec(name, s.shape, s.dtype.name) for name, s in output_specs.items()]
        output_name = next(iter(output_specs))
        names = [spec["name"] for spec in self.inputs]

        # The signature is already a graph; this only maps positions to names.
        def call(*tensors):
            return signature(**dict(zip(names, tensors, strict=True)))[output_name]

        self._model = loaded
        self._call = call

    @property
    def signature(self) -> dict:
        return {"inputs": self.inputs, "outputs": self.outputs}

    def check_batch_polymorphic(self) -> None:
        """Refuse models whose batch dimension is fixed: batching needs it open."""
        for spec in self.inputs + self.outputs:
            if not spec["shape"] or spec["shape"][0] is not None:
                raise ModelLoadError(
                    f"tensor {spec['name']!r} has shape {spec['shape']}: the first "
                    "(batch) dimension must be open (None)"
                )

    def predict(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """Run one batch: {input name: array with the batch first} -> output array."""
        tensors = [batch[spec["name"]] for spec in self.inputs]
        return np.asarray(self._call(*tensors))


def check_statically(path: str, model_format: str) -> None:
    """The checks an upload passed, again before every load: models stored before a
    check existed, or written to GridFS by other means, are held to it too."""
    try:
        if model_format == "keras":
            with zipfile.ZipFile(path) as archive:
                model_scan.check_keras_archive(archive)
        elif model_format == "savedmodel":
            model_scan.check_savedmodel_graph((Path(path) / "saved_model.pb").read_bytes())
    except (model_scan.ModelFileError, OSError, zipfile.BadZipFile) as error:
        raise ModelLoadError(f"refused before loading: {error}") from None


def _spec(name: str, shape, dtype) -> dict:
    return {
        "name": str(name).split(":")[0],
        "shape": [None if d is None else int(d) for d in shape],
        "dtype": str(getattr(dtype, "name", dtype)),
    }


def _tensor_spec(spec: dict) -> tf.TensorSpec:
    return tf.TensorSpec([None, *spec["shape"][1:]], tf.as_dtype(spec["dtype"]), spec["name"])


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:300]
