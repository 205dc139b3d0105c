"""The model registry: uploads checked in a sandbox, versions per name, safe deletes."""

import io
import pickle
import zipfile

import pytest
from conftest import upload_model

LABELS = ["a", "b", "c"]


def test_upload_records_signature_and_versions(api, db, model_files):
    first = upload_model(
        api, "tiny", model_files["tiny"], labels=LABELS, description="three classes"
    )
    assert first.status_code == 201, first.text
    model = api.get(f"/models/{first.json()['_id']}").json()
    assert model["version"] == 1
    assert model["format"] == "keras"
    assert model["status"] == "ready"
    assert model["labels"] == LABELS
    assert model["description"] == "three classes"
    assert model["signature"]["inputs"] == [
        {"name": "features", "shape": [None, 4], "dtype": "float32"}
    ]
    assert model["signature"]["outputs"][0]["shape"] == [None, 3]

    second = upload_model(api, "tiny", model_files["tiny"])
    assert second.status_code == 201, second.text
    listed = api.get("/models", params={"where": '{"name": "tiny"}', "sort": "version"}).json()
    assert [m["version"] for m in listed["_items"]] == [1, 2]

    # The file downloads from the URL Eve gives for the media field.
    download = api.session.get(api.base_url.removesuffix("/v1") + model["file"]["file"])
    assert download.status_code == 200
    assert download.content == model_files["tiny"].read_bytes()


def test_savedmodel_zip_is_accepted(api, model_files):
    response = upload_model(api, "doubler", model_files["savedmodel"])
    assert response.status_code == 201, response.text
    model = api.get(f"/models/{response.json()['_id']}").json()
    assert model["format"] == "savedmodel"
    assert model["signature"]["inputs"] == [{"name": "x", "shape": [None, 3], "dtype": "float32"}]
    assert model["signature"]["outputs"] == [{"name": "y", "shape": [None, 3], "dtype": "float32"}]


def zip_bytes(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("upload", "field", "message"),
    [
        ("h5", "file", "HDF5 (.h5) models are not accepted"),
        ("lambda", "file", "not a loadable Keras 3 model"),
        ("fixed_batch", "file", "the first (batch) dimension must be open"),
        (pickle.dumps({"weights": [1, 2]}), "file", "pickled files are refused"),
        (b"just some text", "file", "unsupported file"),
        (b"PK\x03\x04 not really a zip", "file", "unsupported file"),
        (
            zip_bytes({"notes.txt": b"hello"}),
            "file",
            "neither a Keras 3 .keras file nor a zipped SavedModel",
        ),
        (
            zip_bytes({"config.json": b"{}", "model.weights.h5": b"junk"}),
            "file",
            "not a loadable Keras 3 model",
        ),
        (zip_bytes({"../evil/saved_model.pb": b"x"}), "file", "paths outside its own folder"),
    ],
)
def test_bad_model_file_is_422_and_nothing_is_stored(
    api, db, model_files, tmp_path, upload, field, message
):
    if isinstance(upload, bytes):
        path = tmp_path / "upload.bin"
        path.write_bytes(upload)
    else:
        path = model_files[upload]
    response = upload_model(api, "bad", path)
    assert response.status_code == 422, response.text
    assert message in response.json()["_issues"][field]
    assert db.models.count_documents({}) == 0
    assert db["fs.files"].count_documents({}) == 0
    assert db["fs.chunks"].count_documents({}) == 0


def test_labels_must_match_the_output(api, db, model_files):
    response = upload_model(api, "tiny", model_files["tiny"], labels=["only", "two"])
    assert response.status_code == 422
    assert (
        "2 labels, but the model's output has shape [None, 3]"
        in response.json()["_issues"]["labels"]
    )
    assert db["fs.files"].count_documents({}) == 0


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"name": "no spaces please"}, "name", "does not match regex"),
        # A job naming it would get the model with that id instead.
        (
            {"name": "5f2b6c1d9e8a7b6c5d4e3F21"},
            "name",
            "a model name may not look like a model id (24 hex digits)",
        ),
        ({"name": "tiny", "color": "red"}, "color", "unknown field"),
        ({"name": "tiny", "version": "7"}, "version", "read-only"),
    ],
)
def test_bad_model_fields_are_422(api, db, model_files, fields, field, message):
    with open(model_files["tiny"], "rb") as handle:
        response = api.post("/models", data=fields, files={"file": ("tiny.keras", handle)})
    assert response.status_code == 422
    assert message in str(response.json()["_issues"][field])
    assert db["fs.files"].count_documents({}) == 0


def test_missing_file_is_422(api, db):
    response = api.post("/models", data={"name": "tiny"}, files={"other": ("x", b"x")})
    assert response.status_code == 422
    assert db["fs.files"].count_documents({}) == 0


def test_too_large_file_is_422(start_server, db, model_files):
    api = start_server({"MAX_MODEL_BYTES": 1000}).api()
    response = upload_model(api, "tiny", model_files["tiny"])
    assert response.status_code == 422
    assert "models may be at most 1000 bytes" in response.json()["_issues"]["file"]
    assert db["fs.files"].count_documents({}) == 0


def test_model_with_queued_jobs_cannot_be_deleted(queue_api, queue_db, queue_demo_models):
    iris = queue_api.get("/models", params={"where": '{"name": "iris"}'}).json()["_items"][0]
    assert (
        queue_api.post("/jobs", json={"model": "iris", "inputs": [[1, 2, 3, 4]]}).status_code == 201
    )
    response = queue_api.delete(f"/models/{iris['_id']}", headers={"If-Match": iris["_etag"]})
    assert response.status_code == 409
    assert "queued or running jobs" in response.json()["_error"]["message"]
    assert queue_db.models.count_documents({"name": "iris"}) == 1


def test_deleting_a_model_removes_its_file(api, db, model_files):
    created = upload_model(api, "tiny", model_files["tiny"]).json()
    model = api.get(f"/models/{created['_id']}").json()
    assert db["fs.files"].count_documents({}) == 1
    response = api.delete(f"/models/{model['_id']}", headers={"If-Match": model["_etag"]})
    assert response.status_code == 204
    assert db["fs.files"].count_documents({}) == 0
    assert db["fs.chunks"].count_documents({}) == 0


@pytest.mark.parametrize(
    "name, fields, field",
    [
        ("bad name!", {}, "name"),
        ("fine", {"colour": "blue"}, "colour"),
        ("fine", {"labels": '"not a list"'}, "labels"),
    ],
)
def test_checks_that_cost_nothing_come_before_the_sandboxed_child(
    api, db, model_files, monkeypatch, name, fields, field
):
    from service.registry import model_files as files

    started = []
    monkeypatch.setattr(files, "ModelRunner", lambda *args, **kwargs: started.append(args))
    response = upload_model(api, name, model_files["tiny"], **fields)
    assert response.status_code == 422, response.text
    assert field in response.json()["_issues"]
    assert started == []  # no model was loaded for a request refused anyway
    assert db.models.count_documents({}) == 0


@pytest.mark.parametrize(
    "description", ['the "best" one', "a\\b", "tab\there", "\x11", "42", '"quoted"', "null"]
)
def test_an_upload_description_is_any_text(api, model_files, description):
    # Eve's JSON decoding of form fields once answered these with a 500 (test_fuzz).
    response = upload_model(api, "tiny", model_files["tiny"], description=description)
    assert response.status_code == 201, response.text
    assert api.get(f"/models/{response.json()['_id']}").json()["description"] == description
