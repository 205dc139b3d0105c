"""Pure functions, no server needed."""

import pytest

from hooks.pagination import on_fetched_resource
from run import redact
from service.api.request_checks import nesting_exceeds


@pytest.mark.parametrize(
    ("value", "limit", "expected"),
    [
        (1, 1, False),
        ([], 1, False),
        ([[]], 1, True),
        ([[]], 2, False),
        ({"a": [{"b": 1}]}, 3, False),
        ({"a": [{"b": []}]}, 3, True),
        ([1, 2, [3, [4]]], 3, False),
        ([1, 2, [3, [4, [5]]]], 3, True),
    ],
)
def test_nesting_exceeds(value, limit, expected):
    assert nesting_exceeds(value, limit) is expected


def test_redact_hides_only_the_password():
    assert (
        redact("mongodb://sibyl:s3cret@db.example:27017/x")
        == "mongodb://sibyl:***@db.example:27017/x"
    )
    assert redact("mongodb://127.0.0.1:27017") == "mongodb://127.0.0.1:27017"


@pytest.mark.parametrize(("returned", "has_next"), [(2, False), (3, True)])
def test_next_link_only_on_full_pages(returned, has_next):
    response = {"_items": [{}] * returned, "_meta": {"max_results": 3}, "_links": {"next": {}}}
    on_fetched_resource("jobs", response)
    assert ("next" in response["_links"]) is has_next
