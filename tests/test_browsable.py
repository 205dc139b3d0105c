"""The browsable API in a real browser: headless Chromium (Debian's, installed by
`make browser`) driven by Playwright, against a live server and real models."""

import json
import os
import shutil
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

SETOSA = "[[5.1, 3.5, 1.4, 0.2]]"
# Generous on 2 loaded cores: a model upload starts a model runner (TensorFlow's import).
expect.set_options(timeout=60_000)
XSS = '<script>alert("tag")</script><img src=x onerror=alert("img")>'


@pytest.fixture(scope="module")
def browser():
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    assert executable, "Chromium is missing: `make browser` installs Debian's chromium"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory) -> Path:
    """Where pages are photographed: the test's temporary directory, or with
    SIBYL_SCREENSHOTS (make screenshots), that folder."""
    folder = os.environ.get("SIBYL_SCREENSHOTS")
    path = Path(folder) if folder else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def visit(browser, live_server, api, demo_models, screenshots):
    """Open a page as a visitor with a key: a fresh tab, no dialogs allowed (an XSS
    would open one); yields (page, go, shoot)."""
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    page.set_default_timeout(60_000)
    dialogs = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))

    def log_in(path: str, key: str, server=live_server) -> None:
        page.goto(server.url + path)
        expect(page.locator("#key-form")).to_be_visible()
        page.fill("#key-form input[name=key]", key)
        page.click("#key-form button")
        expect(page.locator("#key-form")).to_have_count(0)

    def shoot(name: str) -> None:
        page.screenshot(path=screenshots / f"{name}.png", full_page=True)

    yield page, log_in, shoot
    context.close()
    assert dialogs == [], f"the page opened dialogs: {dialogs}"
    assert errors == [], f"the page's script failed: {errors}"


def test_a_client_submits_a_job_and_follows_it_to_its_predictions(visit, live_server):
    page, log_in, shoot = visit
    log_in("/v1/jobs", live_server.key("client", "alice"))
    expect(page.locator(".role")).to_have_text("client")
    expect(page.locator("#model-signature")).to_contain_text("float32")
    page.select_option("#job-form select[name=model]", label="iris@1 (production)")
    page.fill("#job-form textarea[name=inputs]", SETOSA)
    page.fill("#job-form input[name=tags]", '{"from": "browser"}')
    shoot("jobs-form")
    page.click("#job-form button")
    expect(page.locator("#result")).to_contain_text("setosa")
    expect(page.locator("#result .code")).to_have_text("201")
    shoot("job-submitted")

    page.click("#result a")
    expect(page.locator("#answer")).to_contain_text('"succeeded"')
    expect(page.locator("#answer")).to_contain_text('"browser"')
    shoot("job")
    page.click("#predictions-link")
    expect(page.locator("#answer")).to_contain_text('"setosa"')
    assert "/v1/predictions" in page.url
    shoot("predictions")
    # Readable on a phone: nothing wider than the screen.
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    shoot("predictions-phone")
    page.set_viewport_size({"width": 1280, "height": 860})

    # CSV rows are instances too; and the filter box finds the job by its tag.
    page.goto(live_server.url + "/v1/jobs")
    page.select_option("#job-form select[name=model]", label="iris@1 (production)")
    page.check("#job-form input[value=csv]")
    page.fill("#job-form textarea[name=inputs]", "6.7, 3.0, 5.2, 2.3\n5.0, 3.4, 1.5, 0.2")
    page.click("#job-form button")
    expect(page.locator("#result table")).to_contain_text("virginica")
    expect(page.locator("#result table")).to_contain_text("setosa")
    page.fill("#filter-form input[name=where]", '{"tags.from": "browser"}')
    page.click("#filter-form button")
    expect(page.locator("#answer")).to_contain_text('"browser"')
    assert page.locator("#answer").inner_text().count('"status": "succeeded"') == 1


def test_a_job_page_follows_a_queued_job_until_it_finishes(
    visit, queueing_server, queue_api, queue_demo_models, start_worker
):
    # The queueing app only queues: the job waits for a worker, started once the page is open.
    page, log_in, shoot = visit
    job = queue_api.post("/jobs", json={"model": "iris", "inputs": json.loads(SETOSA) * 3}).json()
    assert job["status"] == "queued"
    log_in(f"/v1/jobs/{job['_id']}", queueing_server.key("admin"), server=queueing_server)
    expect(page.locator("#job-status")).to_have_text("queued")
    expect(page.locator(".live")).to_be_visible()
    page.evaluate("window.notReloaded = true")
    shoot("job-queued")

    start_worker()
    expect(page.locator("#job-status")).to_have_text("succeeded", timeout=90_000)
    expect(page.locator("#job-progress")).to_have_attribute("value", "3")
    expect(page.locator(".live")).to_have_count(0)
    assert page.evaluate("window.notReloaded") is True  # updated in place, not reloaded
    assert page.url.endswith(f"/v1/jobs/{job['_id']}")  # the polling ?wait= is not kept
    page.click("#predictions-link")
    expect(page.locator("#answer")).to_contain_text('"setosa"')
    assert "/v1/predictions" in page.url
    assert page.locator("#answer").inner_text().count('"setosa"') == 3


def test_a_client_sees_no_upload_form_nor_other_owners_jobs(visit, live_server, api):
    page, log_in, _ = visit
    bob = live_server.api("client", "bob")
    bobs = bob.post("/jobs?wait=30", json={"model": "iris", "inputs": [[5.1, 3.5, 1.4, 0.2]]})
    assert bobs.status_code == 201, bobs.text
    log_in("/v1/models", live_server.key("client", "alice"))
    expect(page.locator("#answer")).to_contain_text('"iris"')
    expect(page.locator("#create-form")).to_have_count(0)
    expect(page.locator(".allow")).to_have_text("Allow: GET")
    page.click("nav.links >> text=jobs")
    expect(page.locator("#job-form")).to_be_visible()
    assert bobs.json()["_id"] not in page.content()
    page.goto(live_server.url + f"/v1/jobs/{bobs.json()['_id']}")
    expect(page.locator(".status .code")).to_have_text("404")


def test_an_admin_uploads_a_model_and_sees_its_signature(visit, live_server, model_files):
    page, log_in, shoot = visit
    log_in("/v1/models", live_server.key("admin"))
    # The form built from the models' schema: a file input, labels as JSON, multipart.
    expect(page.locator("#create-form")).to_be_visible()
    page.fill("#create-form input[name=name]", "tiny")
    page.set_input_files("#create-form input[name=file]", str(model_files["tiny"]))
    page.fill("#create-form [name=labels]", '["a", "b", "c"]')
    shoot("models")
    page.click("#create-form button")
    expect(page.locator("#result .code")).to_have_text("201")
    page.click("#result a")
    expect(page.locator("#answer")).to_contain_text('"signature"')
    expect(page.locator("#answer")).to_contain_text('"float32"')
    shoot("model")
    # Its file downloads with the key (a plain navigation would be a 401).
    with page.expect_download() as download:
        page.click("#answer a[href^='/v1/media/']")
    assert Path(download.value.path()).read_bytes() == model_files["tiny"].read_bytes()


def test_markup_in_data_shows_as_text(visit, live_server):
    page, log_in, shoot = visit
    client = live_server.api("client", "mallory")
    job = client.post(
        "/jobs?wait=30", json={"model": "iris", "inputs": [[1, 2, 3, 4]], "tags": {"x": XSS}}
    )
    assert job.status_code == 201, job.text
    log_in(f"/v1/jobs/{job.json()['_id']}", live_server.key("client", "mallory"))
    expect(page.locator("#answer")).to_contain_text(XSS.replace('"', '\\"'))
    assert page.locator("#answer script, #answer img").count() == 0
    expect(page.locator(".allow")).to_have_text("Allow: GET, PATCH, DELETE")
    shoot("escaped")
    # The change form (the jobs' changeable fields: tags) holds them as JSON, and saving
    # a change shows the job again.
    assert json.loads(page.input_value("#change-form [name=tags]")) == {"x": XSS}
    expect(page.locator("#change-form [name=model]")).to_have_count(0)
    page.fill("#change-form [name=tags]", '{"x": "fixed"}')
    page.click("#change-form button")
    expect(page.locator("#answer")).to_contain_text('"fixed"')


def test_a_link_in_data_cannot_make_a_page_of_it(visit, live_server, api):
    # A client's tag links to an answer that repeats markup (a 406 quoting ?format=):
    # were it parsed as a page, its body's data-url and armed button would turn an
    # admin's next click into a DELETE of a key, sent with the admin's key.
    page, log_in, _ = visit
    victim = api.post("/keys", json={"role": "analyst", "name": "victim"}).json()["_id"]
    bait = (
        f"/v1/jobs?format=<body data-url=/v1/keys/{victim} data-etag=x>"
        "<button id=delete data-armed=true>Show this job</button>"
    )
    client = live_server.api("client", "mallory")
    job = client.post(
        "/jobs?wait=30", json={"model": "iris", "inputs": [[1, 2, 3, 4]], "tags": {"see": bait}}
    ).json()
    log_in(f"/v1/jobs/{job['_id']}", live_server.key("admin"))
    page.click("#answer a[href*='format=']")
    expect(page.locator("h1")).to_have_text("jobs")  # the jobs page, ?format= dropped
    assert page.evaluate("document.body.dataset.url") == "/v1/jobs"
    expect(page.locator("#delete")).to_have_count(0)
    assert api.get(f"/keys/{victim}").json()["revoked"] is False


def test_pages_forbid_foreign_script_and_log_out_forgets_the_key(visit, live_server):
    page, log_in, _ = visit
    response = page.goto(live_server.url + "/v1/models")
    assert response.status == 401
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    log_in("/v1/models", live_server.key("analyst"))
    page.click("#logout")
    expect(page.locator("#key-form")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('sibyl.key')") is None


def test_swagger_ui_tries_an_endpoint_with_a_key(browser, live_server, demo_models, screenshots):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(live_server.url + "/v1/docs")
    page.click("button.authorize")
    page.fill(".modal-ux input", live_server.key("analyst"))
    page.click(".modal-ux button.authorize")
    page.click(".modal-ux button.btn-done")
    operation = page.locator("#operations-models-get_models_resource")
    operation.locator(".opblock-summary").click()
    operation.locator("button.try-out__btn").click()
    operation.locator("button.execute").click()
    status = operation.locator(".live-responses-table tbody .response-col_status").first
    expect(status).to_have_text("200")
    expect(operation.locator(".live-responses-table")).to_contain_text('"iris"')
    page.screenshot(path=screenshots / "docs.png")
    page.close()


def test_a_resource_added_in_schemas_has_its_pages(visit, experiments_server, experiments_db):
    """The guide's experiments (docs/EXTENDING.md): a link in the navigation bar, and the
    forms built from the schema create and change one."""
    page, log_in, shoot = visit
    log_in("/v1/jobs", experiments_server.key("client", "alice"), server=experiments_server)
    page.click("nav.links >> text=experiments")
    page.fill("#create-form input[name=name]", "lr-sweep")
    page.fill("#create-form input[name=goal]", "pick a rate")
    page.uncheck("#create-form input[name=active]")
    page.click("#create-form button")
    expect(page.locator("#result .code")).to_have_text("201")
    page.click("#result a")
    expect(page.locator("#answer")).to_contain_text('"lr-sweep"')
    expect(page.locator("#answer")).to_contain_text('"active": false')
    page.fill("#change-form input[name=goal]", "a better rate")
    page.click("#change-form button")
    expect(page.locator("#answer")).to_contain_text('"a better rate"')
    shoot("experiment")
    assert experiments_db.experiments.find_one({})["goal"] == "a better rate"
