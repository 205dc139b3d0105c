"""Misbehaving models for the fault scenarios, built in code (nothing is downloaded).

Each is a zipped SavedModel computing 2x + body(x) on 3 floats, made only of
operations the upload scan allows, and harmless on the upload's test run (zeros):
it misbehaves only on the instances a scenario sends to set it off, those whose
first feature is above 0.5.

TensorFlow is imported when a model is built, not with the scenarios.
"""

import zipfile
from pathlib import Path

# An instance that sets a model off, and one that does not.
TRIGGER = [1.0, 0.0, 0.0]
HARMLESS = [0.1, 0.2, 0.3]


def zip_folder(folder: Path, path: Path) -> Path:
    """Zip a SavedModel folder as clients upload it."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in sorted(folder.rglob("*")):
            archive.write(file, Path(folder.name) / file.relative_to(folder))
    return path


def savedmodel_folder(folder: Path, body) -> Path:
    """A SavedModel whose serving_default returns 2x + body(x) on 3 floats."""
    import tensorflow as tf

    class Module(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")])
        def serve(self, x):
            return {"y": 2.0 * x + body(x)}

    module = Module()
    tf.saved_model.save(module, str(folder), signatures={"serving_default": module.serve})
    return folder


def serving_savedmodel(path: Path, body) -> Path:
    """savedmodel_folder, zipped as clients upload it."""
    return zip_folder(savedmodel_folder(path.parent / path.stem, body), path)


def trigger(x):
    """The largest first feature of the batch: the instance that sets a model off."""
    import tensorflow as tf

    return tf.reduce_max(x[:, 0])


def raising(path: Path) -> Path:
    """Raises (InvalidArgumentError, an assertion) on a batch holding a trigger."""
    import tensorflow as tf

    def body(x):
        check = tf.debugging.assert_less_equal(
            x[:, 0], 0.5, message="the first feature must be at most 0.5"
        )
        with tf.control_dependencies([check]):
            return tf.zeros_like(x[:, :1])

    return serving_savedmodel(path, body)


def not_a_number(path: Path) -> Path:
    """log(0.5 - first feature): NaN for a trigger's row only, finite for the others."""
    import tensorflow as tf

    return serving_savedmodel(path, lambda x: tf.math.log(0.5 - x[:, :1]))


def looping(path: Path) -> Path:
    """A while loop of 10**10 steps (hours) when a batch holds a trigger, none otherwise."""
    import tensorflow as tf

    def body(x):
        steps = tf.cast(trigger(x) > 0.5, tf.int64) * 10**10
        _, total = tf.while_loop(
            lambda i, _: i < steps, lambda i, t: (i + 1, t + 1.0), (tf.constant(0, tf.int64), 0.0)
        )
        return 0.0 * total

    return serving_savedmodel(path, body)


def aborting(path: Path) -> Path:
    """Conv2DBackpropInput (an allowed op) asked for a negative input size when a batch
    holds a trigger: oneDNN aborts the process (SIGABRT), as in issue 18."""
    import tensorflow as tf

    def body(x):
        side = tf.cast(trigger(x) > 0.5, tf.int32) * -5
        gradient = tf.raw_ops.Conv2DBackpropInput(
            input_sizes=tf.stack([1, side, side, 1]),
            filter=tf.ones([3, 3, 1, 1]),
            out_backprop=tf.ones([1, 2, 2, 1]),
            strides=[1, 1, 1, 1],
            padding="VALID",
        )
        return 0.0 * tf.reduce_sum(gradient)

    return serving_savedmodel(path, body)


def plain(path: Path) -> Path:
    """2x, and nothing else."""
    return serving_savedmodel(path, lambda x: 0.0)
