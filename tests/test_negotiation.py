"""Content negotiation: JSON for every client that can take it, a 406 for one that cannot."""

import pytest

BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


@pytest.mark.parametrize(
    "accept",
    [None, "application/json", "*/*", "application/*", "application/json; version=1"],
)
def test_json_for_any_accept_that_takes_it(api, demo_models, accept):
    headers = {"Accept": accept} if accept else {}
    answer = api.get("/models", headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.headers["Content-Type"] == "application/json"
    assert [model["name"] for model in answer.json()["_items"]]


@pytest.mark.parametrize("accept", ["text/csv", "application/xml", "image/png"])
def test_an_accept_the_api_cannot_render_is_a_406(api, db, accept):
    answer = api.get("/jobs", headers={"Accept": accept})
    assert answer.status_code == 406
    message = answer.json()["_error"]["message"]
    assert accept in message and "application/json, text/html" in message
    # Also before anything is stored.
    posted = api.post(
        "/jobs", json={"model": "iris", "inputs": [[1, 2, 3, 4]]}, headers={"Accept": accept}
    )
    assert posted.status_code == 406
    assert db.jobs.count_documents({}) == 0


def test_format_overrides_accept(api, demo_models):
    plain = api.get("/models")
    chosen = api.get("/models", params={"format": "json"}, headers={"Accept": "text/csv"})
    assert chosen.status_code == 200
    # The same answer, byte for byte, but for the request's own links.
    assert chosen.json()["_items"] == plain.json()["_items"]
    refused = api.get("/models", params={"format": "xml"})
    assert refused.status_code == 406
    assert "format=json or format=html" in refused.json()["_error"]["message"]


@pytest.mark.parametrize(("accept", "params"), [(BROWSER, {}), ("*/*", {"format": "html"})])
def test_a_browser_gets_html(api, demo_models, accept, params):
    page = api.get("/models", headers={"Accept": accept}, params=params)
    assert page.status_code == 200
    assert page.headers["Content-Type"].startswith("text/html")
    assert "iris" in page.text


def test_a_model_file_is_served_as_itself(api, demo_models):
    model = api.get("/models", params={"where": '{"name": "iris"}'}).json()["_items"][0]
    download = api.session.get(
        api.base_url.removesuffix("/v1") + model["file"]["file"],
        headers={"Accept": "application/octet-stream"},
    )
    assert download.status_code == 200
    assert download.content[:2] == b"PK"  # a .keras file is a zip
