"""The same work as Sibyl, hand-written: a compiled model call, then the job and its
predictions stored in MongoDB.

    BASELINE_MODEL_DIR=dir BASELINE_MONGO_URI=uri \
        gunicorn 'bench.baselines.same_work:create_app()'

The fast-no-record app's model call, then `insert_one` of the job (its model, its
inputs, its status and times) and `insert_many` of one prediction document per
instance, shaped like Sibyl's (output, label, score), into Sibyl's database (its
collections `baseline_jobs` and `baseline_predictions`), with Sibyl's write concern:
journaled by default, so its 201 means what Sibyl's does. The predictions carry
Sibyl's prediction indexes, so they can be queried the same ways; the jobs only the
listing ones (newest first, per owner), as it keeps no queue. No authentication and
no validation beyond what the model call refuses.
"""

import os
from datetime import UTC, datetime

import numpy as np
import pymongo
from flask import Flask, jsonify, request

import settings
from bench.baselines.fast_no_record import load_models
from schemas.jobs import JOBS
from schemas.predictions import PREDICTIONS

JOB_INDEXES = {name: JOBS["mongo_indexes"][name] for name in ("created", "owner_created")}
PREDICTION_INDEXES = PREDICTIONS["mongo_indexes"]
OWNER = "bench"


def create_indexes(collection, indexes: dict) -> None:
    """Eve's mongo_indexes notation: name -> keys, or (keys, options)."""
    for name, spec in indexes.items():
        keys, options = spec if isinstance(spec, tuple) else (spec, {})
        collection.create_index(keys, name=name, **options)


def create_app() -> Flask:
    app = Flask(__name__)
    models = load_models()
    client = pymongo.MongoClient(
        os.environ["BASELINE_MONGO_URI"], tz_aware=True, **settings.MONGO_WRITE_CONCERN
    )
    database = client[settings.MONGO_DBNAME]
    jobs, predictions = database["baseline_jobs"], database["baseline_predictions"]
    create_indexes(jobs, JOB_INDEXES)
    create_indexes(predictions, PREDICTION_INDEXES)

    @app.get("/healthz")
    def healthz():
        # The bench records the write concern the app really uses, next to its figures.
        return jsonify(status="ok", write_concern=jobs.write_concern.document)

    @app.post("/predict")
    def predict():
        body = request.get_json()
        model = models[body["model"]]
        started = datetime.now(UTC)
        outputs = model.predict(body["inputs"])
        finished = datetime.now(UTC)
        job = {
            "model": model.name,
            "inputs": body["inputs"],
            "tags": {},
            "owner": OWNER,
            "status": "succeeded",
            "queued_at": started,
            "started_at": started,
            "finished_at": finished,
            "_created": started,
            "_updated": finished,
        }
        jobs.insert_one(job)
        documents = prediction_documents(job, model.labels, outputs, finished)
        predictions.insert_many(documents, ordered=False)
        answer = [
            {key: document[key] for key in ("index", "output", "label", "score")}
            for document in documents
        ]
        return jsonify(_id=str(job["_id"]), status="succeeded", predictions=answer), 201

    return app


def prediction_documents(job: dict, labels, outputs: np.ndarray, now: datetime) -> list[dict]:
    """One document per instance: its output, and its top class and score with labels."""
    values = outputs.tolist()
    if labels and outputs.ndim == 2 and outputs.shape[1] == len(labels):
        best, scores = outputs.argmax(axis=1).tolist(), outputs.max(axis=1).tolist()
    else:
        best = scores = None
    return [
        {
            "job": job["_id"],
            "model": job["model"],
            "model_version": 1,
            "index": i,
            "output": value,
            "label": labels[best[i]] if best else None,
            "score": scores[i] if best else None,
            "tags": job["tags"],
            "owner": OWNER,
            "_created": now,
            "_updated": now,
        }
        for i, value in enumerate(values)
    ]
