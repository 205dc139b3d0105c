"""Analysts' queries on predictions: filters, sort, projection, pagination."""

import json
from datetime import UTC, datetime, timedelta

import pytest
from bson import ObjectId

LABELS = ["setosa", "versicolor", "virginica"]


@pytest.fixture
def seeded(db):
    """Thirty predictions of two jobs, written through the driver as the engine does."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    jobs = [ObjectId(), ObjectId()]
    documents = []
    for index in range(30):
        created = start + timedelta(minutes=index)
        documents.append(
            {
                "job": jobs[index % 2],
                "model": "iris" if index < 20 else "digits",
                "model_version": 1,
                "index": index // 2,
                "output": [0.1, 0.2, 0.7],
                "label": LABELS[index % 3],
                "score": round(index / 30, 4),
                "tags": {"experiment": "a" if index < 10 else "b"},
                "owner": None,
                "_created": created,
                "_updated": created,
            }
        )
    db.predictions.insert_many(documents)
    return {"jobs": jobs, "documents": documents}


def items(response):
    assert response.status_code == 200, response.text
    return response.json()["_items"]


def where(query: dict) -> str:
    return json.dumps(query)


def test_filter_by_label_and_tag(api, seeded):
    found = items(
        api.get(
            "/predictions", params={"where": where({"label": "virginica", "tags.experiment": "b"})}
        )
    )
    expected = [
        d
        for d in seeded["documents"]
        if d["label"] == "virginica" and d["tags"]["experiment"] == "b"
    ]
    assert len(found) == len(expected) == 7
    assert {p["label"] for p in found} == {"virginica"}


def test_filter_by_job_id(api, seeded):
    job = str(seeded["jobs"][1])
    found = items(api.get("/predictions", params={"where": where({"job": job}), "max_results": 50}))
    assert len(found) == 15
    assert {p["job"] for p in found} == {job}


def test_filter_by_date_in_iso_format(api, seeded):
    found = items(
        api.get(
            "/predictions", params={"where": where({"_created": {"$gte": "2026-01-01T00:25:00Z"}})}
        )
    )
    assert sorted(p["score"] for p in found) == [round(i / 30, 4) for i in range(25, 30)]


def test_sort_by_score_descending(api, seeded):
    found = items(api.get("/predictions", params={"sort": "-score", "max_results": 5}))
    scores = [p["score"] for p in found]
    assert scores == sorted((d["score"] for d in seeded["documents"]), reverse=True)[:5]


def test_projection_limits_fields(api, seeded):
    found = items(
        api.get("/predictions", params={"projection": where({"label": 1}), "max_results": 3})
    )
    assert all("label" in p and "output" not in p and "tags" not in p for p in found)


def test_pagination_walks_every_document_once(api, seeded):
    seen, page = [], 1
    while True:
        response = api.get(
            "/predictions", params={"max_results": 8, "page": page, "sort": "_created"}
        )
        body = response.json()
        seen += [p["_id"] for p in body["_items"]]
        if "next" not in body["_links"]:
            break
        page += 1
    assert page == 4  # 8 + 8 + 8 + 6
    assert len(seen) == len(set(seen)) == 30
    assert "total" not in body["_meta"]  # lists never count


def test_page_size_is_capped(api, seeded):
    body = api.get("/predictions", params={"max_results": 100_000}).json()
    assert body["_meta"]["max_results"] == 500


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"where": '{"$where": "sleep(1000)"}'}, "where: the operator $where is not allowed"),
        ({"where": '{"label": {"$regex": "^v"}}'}, "where: the operator $regex is not allowed"),
        ({"where": '{"label": '}, "where: not a JSON object"),
        ({"where": "[1, 2]"}, "where: must be a JSON object"),
        ({"projection": '{"label": '}, "projection: not a JSON object"),
        ({"projection": '{"label": 5}'}, "projection: values must be 1 (include) or 0"),
        ({"sort": '[("score", 2)]'}, "sort: expected -field,field"),
        ({"sort": "score,,label"}, "sort: an empty field name"),
        ({"sort": "$natural"}, "sort: a field name may not start with $"),
        ({"sort": '[("$natural", 1)]'}, "sort: a field name may not start with $"),
        ({"max_results": "ten"}, "max_results must be a positive whole number"),
        ({"page": "0"}, "page must be a positive whole number"),
    ],
)
def test_bad_query_is_400_saying_why(api, seeded, params, message):
    response = api.get("/predictions", params=params)
    assert response.status_code == 400
    assert message in response.json()["_error"]["message"]


def test_python_style_where_and_mongo_style_sort_still_work(api, seeded):
    found = items(
        api.get("/predictions", params={"where": 'label == "setosa"', "sort": '[("score", -1)]'})
    )
    assert len(found) == 10
    assert [p["score"] for p in found] == sorted((p["score"] for p in found), reverse=True)


def test_item_by_id(api, seeded):
    first = items(api.get("/predictions", params={"max_results": 1}))[0]
    item = api.get(f"/predictions/{first['_id']}").json()
    assert item["output"] == [0.1, 0.2, 0.7]
