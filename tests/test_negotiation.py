"""Content negotiation: JSON for every client that can take it, a 406 for one that cannot."""

import pytest

BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


@pytest.mark.parametrize(
    "accept",
    [
        None,
        "application/json",
        "*/*",
        "application/*",
        "application/json; version=1",
        # Parameters other than the version do not change the type (many clients send these).
        "application/json; charset=utf-8",
        "application/json; charset=utf-8; version=1",
    ],
)
def test_json_for_any_accept_that_takes_it(api, demo_models, accept):
    headers = {"Accept": accept} if accept else {}
    answer = api.get("/models", headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.headers["Content-Type"] == "application/json"
    assert [model["name"] for model in answer.json()["_items"]]
    # The answer depends on Accept, and is not to be sniffed into anything else.
    assert "Accept" in answer.headers["Vary"]
    assert answer.headers["X-Content-Type-Options"] == "nosniff"


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


def test_an_error_quotes_a_long_value_cut_short(api, db):
    sent = "x" * 5000
    for answer in (
        api.get("/jobs", params={"format": sent}),
        api.get("/jobs", headers={"Accept": "text/" + sent}),
        api.get("/jobs", params={"version": sent}),
    ):
        assert answer.status_code in (404, 406)
        message = answer.json()["_error"]["message"]
        assert "xxxxxxxxxx…" in message and len(message) < 300, message


@pytest.mark.parametrize(("accept", "params"), [(BROWSER, {}), ("*/*", {"format": "html"})])
def test_a_browser_gets_html(api, demo_models, accept, params):
    page = api.get("/models", headers={"Accept": accept}, params=params)
    assert page.status_code == 200
    assert page.headers["Content-Type"].startswith("text/html")
    assert "iris" in page.text
    assert page.headers["X-Sibyl-Page"] == "1"  # what the page's script puts in place


@pytest.mark.parametrize("accept", ["text/html; level=1", "text/html; charset=utf-8"])
def test_html_with_parameters_is_html(api, demo_models, accept):
    page = api.get("/models", headers={"Accept": accept})
    assert page.status_code == 200
    assert page.headers["Content-Type"].startswith("text/html")


def test_a_model_file_is_served_as_itself(api, demo_models):
    model = api.get("/models", params={"where": '{"name": "iris"}'}).json()["_items"][0]
    download = api.session.get(
        api.base_url.removesuffix("/v1") + model["file"]["file"],
        headers={"Accept": "application/octet-stream"},
    )
    assert download.status_code == 200
    assert download.content[:2] == b"PK"  # a .keras file is a zip
