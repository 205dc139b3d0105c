"""Checking instances against signatures: pure NumPy, no server."""

import numpy as np
import pytest

from service.errors import InputError
from service.registry.signature import check_inputs

IRIS = [{"name": "measurements", "shape": [None, 4], "dtype": "float32"}]
PAIR = [
    {"name": "a", "shape": [None, 2], "dtype": "float32"},
    {"name": "b", "shape": [None], "dtype": "int32"},
]
OPEN = [{"name": "tokens", "shape": [None, None], "dtype": "int64"}]


def test_instances_become_one_batch_of_the_model_dtype():
    arrays, count = check_inputs([[1, 2, 3, 4], [5.5, 6, 7, 8]], IRIS, 10)
    assert count == 2
    assert arrays["measurements"].dtype == np.float32
    np.testing.assert_array_equal(arrays["measurements"], [[1, 2, 3, 4], [5.5, 6, 7, 8]])


def test_named_inputs_per_instance_and_columnar_agree():
    per_instance, _ = check_inputs([{"a": [1, 2], "b": 3}, {"a": [4, 5], "b": 6}], PAIR, 10)
    columnar, _ = check_inputs({"a": [[1, 2], [4, 5]], "b": [3, 6]}, PAIR, 10)
    for name in ("a", "b"):
        np.testing.assert_array_equal(per_instance[name], columnar[name])
    assert per_instance["b"].dtype == np.int32


def test_open_dimensions_accept_any_length_but_one_per_job():
    arrays, _ = check_inputs([[1, 2, 3], [4, 5, 6]], OPEN, 10)
    assert arrays["tokens"].shape == (2, 3)
    with pytest.raises(InputError, match="instances differ in shape"):
        check_inputs([[1, 2, 3], [4, 5]], OPEN, 10)


@pytest.mark.parametrize(
    ("inputs", "specs", "message"),
    [
        ([[1, 2, 3]], IRIS, "inputs[0]: expected shape [4], got [3]"),
        ([[1, 2, 3, 4], [[1, 2, 3, 4]]], IRIS, "inputs[1]: expected shape [4], got [1, 4]"),
        ([[1, 2, 3, 4]] * 3, IRIS, "inputs: 3 instances, at most 2 per job"),
        ([[1, 2, 3, float("inf")]], IRIS, "inputs[0]: NaN, Infinity or null"),
        ([{"a": [1, 2], "b": 2.5}], PAIR, "inputs[0].b: expected integers (the model takes int32)"),
        ([{"a": [1, 2], "b": 2**40}], PAIR, "inputs[0].b: a value is out of range for int32"),
        (
            {"a": [[1, 2]], "b": [1, 2]},
            PAIR,
            "every named input needs the same number of instances",
        ),
        ({"a": [[1, 2]], "b": 1}, PAIR, "inputs.b: expected a list of instances"),
        ({"a": [[1, 2]], "b": [1], "c": [1]}, PAIR, "no input named c (its inputs: a, b)"),
        ([[1, 2]], PAIR, "inputs[0]: this model takes named inputs (a, b)"),
        ([{"a": [1, "x"], "b": 1}], PAIR, "inputs[0].a: expected numbers, got a string"),
        ({"a": [[1, 2], [1]], "b": [1, 2]}, PAIR, "inputs.a[1]: expected shape [2], got [1]"),
    ],
)
def test_errors_name_the_instance(inputs, specs, message):
    with pytest.raises(InputError) as raised:
        check_inputs(inputs, specs, 2)
    assert message in str(raised.value)
