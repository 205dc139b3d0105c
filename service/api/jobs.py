"""POST /v1/jobs: Eve's Cerberus validation, then the job service; `?wait=` on POST and GET;
POST /v1/jobs/<id>/cancel.

Eve answers every other method of /v1/jobs. Its POST would store the jobs itself,
around its insert hooks; Sibyl's job service stores them instead (the one way in
for a job), so this view takes Eve's place for POST and keeps Eve's answer shape.
"""

from bson import ObjectId
from eve.methods.common import (
    build_response_document,
    marshal_write_response,
    parse,
    payload,
    resource_link,
)
from eve.methods.get import getitem_internal
from eve.render import send_response
from eve.utils import config
from flask import Blueprint, Flask, abort, current_app, request

from service.api.described import described, json_body
from service.context import sibyl
from service.errors import Rejected, Unprocessable, echoed, issue_text
from service.store.data import request_identity

RESOURCE = "jobs"
ENDPOINT = "jobs|resource"  # Eve's endpoint name of the collection URL
ITEM_ENDPOINT = "jobs|item_lookup"
WAIT = {
    "name": "wait",
    "in": "query",
    "description": "hold the answer up to this many seconds (capped by "
    "SIBYL_MAX_REQUEST_WAIT_S) until the jobs have finished",
    "schema": {"type": "number", "minimum": 0},
}


def register(app: Flask) -> None:
    """Answer POST /v1/jobs here; every other method stays Eve's."""
    eve_view = app.view_functions[ENDPOINT]

    @described(
        POST={
            "summary": "Submit jobs: one object, or a list stored all together or not at all",
            "parameters": [WAIT],
            "responses": {
                "201": {
                    "description": "the job's meta fields and status; with ?wait=, once "
                    "finished, the job with its `predictions` (without its inputs)",
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Jobs"}}
                    },
                }
            },
        }
    )
    def jobs_collection(**lookup):
        if request.method == "POST":
            return post_jobs()
        return eve_view(**lookup)

    app.view_functions[ENDPOINT] = jobs_collection
    # GET /v1/jobs/<id>?wait= (hooks/jobs.py): the item view is Eve's, shared by every
    # resource, so the description goes on the jobs' own reference to it.
    item_view = app.view_functions[ITEM_ENDPOINT]
    app.view_functions[ITEM_ENDPOINT] = described(GET={"parameters": [WAIT]})(
        lambda **lookup: item_view(**lookup)
    )
    # A blueprint per app: its URL takes the jobs' own item URL pattern (24 hex digits),
    # so a malformed id is a 404 as it is on GET.
    actions = Blueprint("jobs", __name__)
    item_url = app.config["DOMAIN"][RESOURCE]["item_url"]
    actions.add_url_rule(f"/jobs/<{item_url}:_id>/cancel", view_func=cancel_job, methods=["POST"])
    app.register_blueprint(actions, url_prefix=app.api_prefix)


@described(
    summary="Cancel a queued or running job: its runner stops at its next batch, and it is "
    "never retried",
    requestBody={
        "required": False,
        "content": {"application/json": {"schema": {"type": "object", "maxProperties": 0}}},
    },
    responses={
        "200": json_body(
            {"$ref": "#/components/schemas/Jobs"},
            "the job as stored: `cancelled`, with `finished_at` and `error`; its predictions "
            "are deleted",
        ),
        "409": json_body(
            {"$ref": "#/components/schemas/Error"}, "the job has finished already (named)"
        ),
    },
)
def cancel_job(_id: str):
    """Cancel the job, then answer it as a GET of it does. What the request carries is
    checked first, so that a refused one changes nothing (Eve's GET would read a
    ?projection= the request checks leave unread on a POST)."""
    extra = sorted(set(request.args) - {"version", "format"})
    if extra:
        abort(
            400,
            description=f"a cancel takes no query parameter {echoed(extra[0])} "
            "(only version and format)",
        )
    if request.get_json(silent=True) not in (None, {}):
        raise Unprocessable("a cancel takes no body, or an empty JSON object")
    if not sibyl().jobs.cancel(ObjectId(_id), request_identity()):
        abort(404, description=f"no job with id {_id}")
    return send_response(RESOURCE, getitem_internal(RESOURCE, _id=_id))


def requested_wait() -> float:
    """Seconds from ?wait=, capped by MAX_REQUEST_WAIT_S; 0 when absent."""
    raw = request.args.get("wait")
    if raw is None:
        return 0.0
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < float("inf"):
        abort(400, description=f"wait must be a number of seconds, got {echoed(raw)}")
    return min(seconds, current_app.config["MAX_REQUEST_WAIT_S"])


def post_jobs():
    """Validate, submit, and answer as Eve does: 201 with each job's meta fields (and, with
    ?wait=, the finished jobs with their predictions)."""
    seconds = requested_wait()
    body = payload()
    submitted = validated(body if isinstance(body, list) else [body])
    services = sibyl()
    identity = request_identity()
    with services.jobs.wait_slot(seconds) as seconds:
        if seconds:
            documents, finished = services.jobs.submit_and_wait(submitted, identity, seconds)
        else:
            documents, finished = services.jobs.submit(submitted, identity), {}
    by_id = {document["_id"]: document for document in documents}
    hidden = identity.hidden(services.store.access[RESOURCE])
    items = [answer(finished.get(job_id), document, hidden) for job_id, document in by_id.items()]
    response = {"_status": "OK", "_items": items} if isinstance(body, list) else items[0]
    location = [("Location", f"{resource_link()}/{documents[0]['_id']}")]
    return send_response(RESOURCE, (response, None, None, 201, location))


def validated(bodies: list[dict]) -> list[dict]:
    """Each job checked against schemas/jobs.py by Eve's validator (defaults applied);
    Rejected naming every field at fault otherwise."""
    resource_def = current_app.config["DOMAIN"][RESOURCE]
    validator = current_app.validator(
        resource_def["schema"], resource=RESOURCE, allow_unknown=resource_def["allow_unknown"]
    )
    documents, issues = [], []
    for position, value in enumerate(bodies):
        if validator.validate(parsed(value)):
            documents.append(validator.document)
            continue
        for field, errors in validator.errors.items():
            issues.append((position, field, issue_text(errors)))
    if issues:
        raise Rejected(issues)
    return documents


def parsed(body: dict) -> dict:
    """Eve's parse (its serializers, dotted keys reshaped) without its walk of `inputs`,
    3 ms for 27,648 numbers: they have no serializers, and check_json_body refused
    dotted keys."""
    if "inputs" not in body:
        return parse(body, RESOURCE)
    inputs = body.pop("inputs")
    return {**parse(body, RESOURCE), "inputs": inputs}


def answer(finished: dict | None, stored: dict, hidden: tuple[str, ...] = ()) -> dict:
    """One job of a POST's answer: the finished job without its inputs (the client just
    sent them) nor the fields the caller may not see, or Eve's write answer (meta fields
    and `status`) while it runs."""
    if finished is not None:
        predictions = finished.pop("predictions")
        for field in ("inputs", *hidden):
            finished.pop(field, None)
        # No ETag: a GET computes the current one (hashing the job, inputs and all,
        # cost more than the rest of the answer).
        finished[config.ETAG] = None
        build_response_document(finished, RESOURCE, [])
        finished.pop(config.ETAG)
        return {**finished, "predictions": predictions, config.STATUS: config.STATUS_OK}
    document = dict(stored)
    build_response_document(document, RESOURCE, [])
    return {**marshal_write_response(document, RESOURCE), config.STATUS: config.STATUS_OK}


def wait_for_job(lookup: dict) -> None:
    """GET /v1/jobs/<id>?wait=: hold the request until the job finished or the wait ends."""
    seconds = requested_wait()
    if not seconds or "_id" not in lookup or not ObjectId.is_valid(str(lookup["_id"])):
        return
    with sibyl().jobs.wait_slot(seconds) as seconds:
        if seconds:
            sibyl().jobs.wait([ObjectId(str(lookup["_id"]))], seconds, request_identity())
