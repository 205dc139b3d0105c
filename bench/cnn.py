"""The bench's expensive model: an EfficientNet-B0-like image classifier built in code.

    python -m bench.cnn [--quick] PATH    (builds it, prints what a call costs)

MobileNetV2's inverted residual blocks with squeeze-and-excitation and swish, in
EfficientNet-B0's stages, with random weights and no download: what it predicts does
not matter, what a call costs does. Only stock Keras layers (no Lambda), so Sibyl's
upload checks accept it. Its input is 8-bit RGB images as numbers 0-255 (a Rescaling
layer makes them 0-1), the way a client sends pixels.
"""

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from service.registry.runner import sample_batch

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# EfficientNet-B0's stages: (expansion, output channels, blocks, first stride, kernel).
STAGES = [
    (1, 16, 1, 1, 3),
    (6, 24, 2, 2, 3),
    (6, 40, 2, 2, 5),
    (6, 80, 3, 2, 3),
    (6, 112, 3, 1, 5),
    (6, 192, 4, 2, 5),
    (6, 320, 1, 1, 3),
]
# The bench's model, and the tiny one of bench --quick (make test).
FULL = {"side": 96, "width": 1.0, "stages": STAGES}
QUICK = {"side": 32, "width": 0.25, "stages": [(e, c, 1, s, k) for e, c, _, s, k in STAGES[:3]]}
CLASSES = [f"class {i}" for i in range(10)]


def channels(count: float) -> int:
    """A channel count rounded to a multiple of 8, as MobileNet and EfficientNet do."""
    return max(8, int(count + 4) // 8 * 8)


def build(path: Path, side: int, width: float, stages: list) -> Path:
    """Build the classifier for side x side x 3 images; save it as .keras at path."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(0)
    image = keras.Input(shape=(side, side, 3), name="image")
    x = layers.Rescaling(1 / 255)(image)
    x = layers.Conv2D(channels(32 * width), 3, strides=2, padding="same", use_bias=False)(x)
    x = layers.Activation("swish")(layers.BatchNormalization()(x))
    for expansion, filters, blocks, first_stride, kernel in stages:
        for block in range(blocks):
            stride = first_stride if block == 0 else 1
            x = mobile_block(x, expansion, channels(filters * width), stride, kernel)
    x = layers.Conv2D(channels(1280 * width), 1, use_bias=False)(x)
    x = layers.Activation("swish")(layers.BatchNormalization()(x))
    x = layers.GlobalAveragePooling2D()(x)
    probabilities = layers.Dense(len(CLASSES), activation="softmax", name="probabilities")(x)
    keras.Model(image, probabilities, name="bench_cnn").save(path)
    return path


def mobile_block(x, expansion: int, filters: int, stride: int, kernel: int):
    """Expand (1x1), depthwise (kernel x kernel), squeeze-and-excite, project (1x1);
    a shortcut when the shapes allow."""
    from keras import layers

    inputs, width = x, x.shape[-1]
    if expansion != 1:
        x = layers.Conv2D(width * expansion, 1, use_bias=False)(x)
        x = layers.Activation("swish")(layers.BatchNormalization()(x))
    x = layers.DepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=False)(x)
    x = layers.Activation("swish")(layers.BatchNormalization()(x))
    squeezed = layers.GlobalAveragePooling2D(keepdims=True)(x)
    squeezed = layers.Conv2D(max(1, width // 4), 1, activation="swish")(squeezed)
    x = layers.Multiply()([x, layers.Conv2D(x.shape[-1], 1, activation="sigmoid")(squeezed)])
    x = layers.BatchNormalization()(layers.Conv2D(filters, 1, use_bias=False)(x))
    if stride == 1 and width == filters:
        x = layers.Add()([inputs, x])
    return x


def sample_images(count: int, side: int, seed: int = 0) -> list:
    """Random 8-bit pixels, as JSON-ready nested lists of ints."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (count, side, side, 3)).tolist()


def call_costs(path: Path, calls: int = 20) -> dict:
    """Milliseconds of one compiled call (Sibyl's runtime) at batch 1 and at batch 32,
    the best of three rounds."""
    from service.registry.runtime import CompiledModel

    model = CompiledModel(str(path), "keras")
    costs = {}
    for size in (1, 32):
        batch = sample_batch(model.inputs, size)
        model.predict(batch)  # trace and warm
        rounds = []
        for _ in range(3):
            repeats = max(2, calls // size)
            began = time.perf_counter()
            for _ in range(repeats):
                model.predict(batch)
            rounds.append((time.perf_counter() - began) * 1000 / repeats)
        costs[f"batch_{size}_ms"] = round(min(rounds), 2)
    costs["batch_32_over_single"] = round(costs["batch_32_ms"] / costs["batch_1_ms"], 1)
    return costs


def describe(path: Path, shape: dict) -> str:
    """What the model is, in a line."""
    return (
        f"EfficientNet-B0-like CNN on {shape['side']}×{shape['side']}×3 images, width "
        f"{shape['width']}, random weights, {path.stat().st_size / 1e6:.1f} MB"
    )


def describe_costs(costs: dict) -> str:
    return (
        f"compiled call at batch 1: {costs['batch_1_ms']} ms, at batch 32: "
        f"{costs['batch_32_ms']} ms ({costs['batch_32_over_single']}× a single call, where "
        "32 single calls cost 32×)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the tiny model of bench --quick")
    parser.add_argument("path", type=Path)
    args = parser.parse_args(argv)
    shape = QUICK if args.quick else FULL
    build(args.path, **shape)
    print(f"{describe(args.path, shape)}; {describe_costs(call_costs(args.path))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
