"""Liveness and readiness probes: /v1/healthz and /v1/readyz."""

import pymongo
from flask import Blueprint, current_app, jsonify
from pymongo.errors import PyMongoError

from service.api.described import described, json_body

health = Blueprint("health", __name__)

READY_TIMEOUT_SECONDS = 1.0


@health.get("/healthz")
@described(
    summary="Liveness: the process serves HTTP",
    responses={"200": json_body({"type": "object", "properties": {"status": {"const": "ok"}}})},
)
def healthz():
    """The process is up and serving HTTP; says nothing about the database."""
    return jsonify(status="ok")


@health.get("/readyz")
@described(
    summary="Readiness: the database answers a ping within a second",
    responses={
        "200": json_body({"type": "object", "properties": {"status": {"const": "ready"}}}),
        "503": json_body(
            {"type": "object", "properties": {"status": {"const": "unavailable"}}},
            "the database does not answer (Retry-After)",
        ),
    },
)
def readyz():
    """The database answers a ping within a second: 200, else 503 naming the problem."""
    try:
        with pymongo.timeout(READY_TIMEOUT_SECONDS):
            current_app.data.driver.db.command("ping")
    except PyMongoError as error:
        body = {"status": "unavailable", "database": f"{type(error).__name__}: {error}"[:300]}
        return jsonify(body), 503, {"Retry-After": "5"}
    return jsonify(status="ready", database="ok")
