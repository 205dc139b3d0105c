"""The in-process limit: the model through a compiled tf.function, and insert_many,
with no HTTP, no Eve and no job bookkeeping; and what a model runner adds to it."""

import functools
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from bson import ObjectId
from pymongo.database import Database

from service.registry.runner import ModelRunner, RunnerLimits, sample_batch

# The time limit of a runner's call here: the bench measures the hop, not the limit
# (the CNN at batch 256 takes seconds on a busy machine).
RUNNER_CALL_TIMEOUT_S = 300.0


def best_rate(run, items_per_call: int, min_seconds: float) -> float:
    """Items per second of run(), over repeated calls for at least min_seconds."""
    run()  # warm
    calls, began = 0, time.perf_counter()
    while time.perf_counter() - began < min_seconds:
        run()
        calls += 1
    return calls * items_per_call / (time.perf_counter() - began)


def seconds_per_call(run, calls: int) -> float:
    run()
    began = time.perf_counter()
    for _ in range(calls):
        run()
    return (time.perf_counter() - began) / calls


def p50_seconds_per_call(run, calls: int) -> float:
    """The median seconds of one run(), over `calls` calls after a warm one."""
    run()
    seconds = []
    for _ in range(calls):
        began = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - began)
    return statistics.median(seconds)


def rows_per_s(predict, inputs: list[dict], batch_sizes: list[int], min_seconds: float) -> dict:
    """Rows/s of predict(batch) on zeros shaped like inputs, at each batch size."""
    rates = {}
    for size in batch_sizes:
        batch = sample_batch(inputs, size)
        rates[str(size)] = round(best_rate(lambda b=batch: predict(b), size, min_seconds))
    return rates


def model_rates(model_path: str, batch_sizes: list[int], min_seconds: float) -> dict:
    """Rows/s of the engine's compiled model at each batch size, and its per-call overhead."""
    import tensorflow as tf

    from service.registry.runtime import CompiledModel

    model = CompiledModel(model_path, "keras")
    rates = rows_per_s(model.predict, model.inputs, batch_sizes, min_seconds)

    # A bare compiled call of the same Keras model, for the overhead of the engine's wrapper.
    keras_model = model._model
    spec = model.inputs[0]
    bare = tf.function(
        lambda x: keras_model(x, training=False),
        input_signature=[tf.TensorSpec([None, *spec["shape"][1:]], spec["dtype"])],
    )
    one = sample_batch(model.inputs, 1)[spec["name"]]
    calls = max(200, int(min_seconds * 2000))
    bare_s = seconds_per_call(lambda: bare(one), calls)
    engine_s = seconds_per_call(lambda: model.predict({spec["name"]: one}), calls)
    return {
        "rows_per_s": rates,
        "bare_call_ms": round(bare_s * 1000, 4),
        "engine_call_ms": round(engine_s * 1000, 4),
    }


def prediction_documents(count: int, width: int, labels: list[str]) -> list[dict]:
    """Documents shaped like the engine's, for insert_many."""
    now = datetime.now(UTC)
    job, batch = ObjectId(), {"id": ObjectId(), "size": count}
    rng = np.random.default_rng(0)
    outputs = rng.random((count, width)).tolist()
    return [
        {
            "job": job,
            "model": "iris",
            "model_version": 1,
            "index": i,
            "output": outputs[i],
            "label": labels[i % len(labels)],
            "score": max(outputs[i]),
            "tags": {},
            "owner": None,
            "batch": batch,
            "_created": now,
            "_updated": now,
        }
        for i in range(count)
    ]


def insert_rate(db: Database, batch_size: int, batches: int, width: int = 3) -> float:
    """Prediction documents (of `width` outputs) per second through insert_many, into an
    indexed collection like the predictions one."""
    scratch = db["bench_insert_limit"]
    scratch.drop()
    scratch.create_index([("job", 1), ("index", 1)], unique=True)
    scratch.create_index([("model", 1), ("_created", -1)])
    scratch.create_index([("label", 1)])
    scratch.create_index([("score", -1)])
    scratch.create_index([("_created", -1)])
    labels = [f"class {i}" for i in range(width)]
    batches_of_docs = [prediction_documents(batch_size, width, labels) for _ in range(batches)]
    began = time.perf_counter()
    for documents in batches_of_docs:
        scratch.insert_many(documents, ordered=False)
    rate = batch_size * batches / (time.perf_counter() - began)
    scratch.drop()
    return rate


def single_instance_limit(
    model_path: str, batch_sizes: list[int], min_seconds: float, db: Database, documents: int
) -> dict:
    """Single-instance jobs per second the model allows in-process at each batch size:
    one compiled call for the batch, then one insert_many of its prediction documents
    (about `documents` of them timed per size); no HTTP, no job documents."""
    from service.registry.runtime import CompiledModel

    model = CompiledModel(model_path, "keras")
    rates = rows_per_s(model.predict, model.inputs, batch_sizes, min_seconds)
    width = model.outputs[0]["shape"][-1]
    docs_per_s = {
        str(size): round(insert_rate(db, size, max(2, documents // size), width))
        for size in batch_sizes
    }
    jobs_per_s = {size: round(1 / (1 / rates[size] + 1 / docs_per_s[size]), 1) for size in rates}
    return {"rows_per_s": rates, "docs_per_s": docs_per_s, "jobs_per_s": jobs_per_s}


def runner_cost(model_path: str, batch_sizes: list[int], calls: int, min_seconds: float) -> dict:
    """One model file called in this process (a CompiledModel) and through a ModelRunner
    (a confined child process, one socket round trip per call), measured alike: the p50
    of `calls` calls at batch 1, and rows/s at each batch size; then what the runner
    adds: ms per call at p50, and the share of rows/s it loses."""
    from service.registry.runtime import CompiledModel

    model = CompiledModel(model_path, "keras")
    runner = ModelRunner(Path(model_path), "keras", RunnerLimits())
    runner.start()
    first_pid = runner.pid
    sides = {
        "in_process": model.predict,
        "runner": lambda batch: runner.predict(batch, RUNNER_CALL_TIMEOUT_S),
    }
    try:
        # Each measure on both sides in turn, so that both see the machine alike.
        one = sample_batch(model.inputs, 1)
        measured = {name: {"rows_per_s": {}} for name in sides}
        for name, predict in sides.items():
            seconds = p50_seconds_per_call(functools.partial(predict, one), calls)
            measured[name]["p50_ms_at_1"] = round(seconds * 1000, 4)
        for size in batch_sizes:
            for name, predict in sides.items():
                rates = rows_per_s(predict, model.inputs, [size], min_seconds)
                measured[name]["rows_per_s"].update(rates)
        # A runner restarted mid-measure (grown past its memory threshold) would time
        # a model load too.
        restarted = runner.pid != first_pid
    finally:
        runner.stop()
    inside, outside = measured["in_process"], measured["runner"]
    return {
        **measured,
        "calls_at_1": calls,
        "extra_ms_at_1": round(outside["p50_ms_at_1"] - inside["p50_ms_at_1"], 4),
        "fewer_rows_per_s": {
            size: round(1 - outside["rows_per_s"][size] / rate, 3)
            for size, rate in inside["rows_per_s"].items()
        },
        "runner_restarted": restarted,
    }
