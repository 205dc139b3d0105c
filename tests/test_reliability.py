"""`make reliability`'s fault scenarios, each once at a tiny size: nothing lost,
duplicated, orphaned or hidden, no wrong answer, no undocumented 5xx."""

import json

import pytest

from bench.reliability.harness import passed
from bench.reliability.scenarios import SCENARIOS


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """One data folder for every scenario: the demo models are trained once."""
    return tmp_path_factory.mktemp("reliability")


@pytest.mark.parametrize("scenario", SCENARIOS.values(), ids=list(SCENARIOS))
def test_scenario(folder, scenario):
    row = scenario(folder, "tiny")
    assert passed(row), json.dumps(row)  # whole: pytest shortens a dict
    assert row["trials"] > 0 and row["jobs_finished"] > 0
