"""Checking a job's inputs against a model's signature, with NumPy only.

The hook on job insertion calls this before anything is stored, so a bad
instance is a 422 that names it (`inputs[3]: expected shape [4], got [5]`)
rather than a failed job later. The arrays it returns are what the engine runs.
"""

from dataclasses import dataclass

import numpy as np

from service.errors import InputError

# dtypes a signature may name, and the kinds of JSON numbers each accepts.
FLOAT_DTYPES = {"float16", "float32", "float64", "bfloat16"}
INT_DTYPES = {"int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"}


@dataclass(frozen=True)
class Place:
    """How errors name instance i of one input: `inputs[3]`, `inputs.a[3]`, `inputs[3].a`."""

    prefix: str
    suffix: str = ""

    def __call__(self, i: int) -> str:
        return f"{self.prefix}[{i}]{self.suffix}"

    @property
    def column(self) -> str:
        return f"{self.prefix}{self.suffix}"


def check_inputs(inputs, input_specs: list[dict], max_instances: int) -> tuple[dict, int]:
    """Return ({input name: batch array}, instance count), or raise InputError."""
    columns, where = _columns(inputs, input_specs)
    counts = {len(values) for values in columns.values()}
    if len(counts) != 1:
        sizes = ", ".join(f"{name}: {len(values)}" for name, values in columns.items())
        raise InputError(f"inputs: every named input needs the same number of instances ({sizes})")
    count = counts.pop()
    if count == 0:
        raise InputError("inputs: at least one instance is needed")
    if count > max_instances:
        raise InputError(f"inputs: {count} instances, at most {max_instances} per job")
    arrays = {
        spec["name"]: _to_array(columns[spec["name"]], spec, where[spec["name"]])
        for spec in input_specs
    }
    return arrays, count


def _columns(inputs, input_specs: list[dict]) -> tuple[dict, dict]:
    """Split inputs into one list of values per model input, with how to name instance i."""
    names = [spec["name"] for spec in input_specs]
    if isinstance(inputs, dict):
        # Columnar: {"a": [...], "b": [...]}.
        _check_names(set(inputs), names, "inputs")
        for name in names:
            if not isinstance(inputs[name], list):
                raise InputError(f"inputs.{name}: expected a list of instances")
        return {name: inputs[name] for name in names}, {
            name: Place(f"inputs.{name}") for name in names
        }
    if len(names) == 1 and not any(isinstance(instance, dict) for instance in inputs):
        return {names[0]: inputs}, {names[0]: Place("inputs")}
    # A list of {"a": ..., "b": ...} instances.
    columns: dict[str, list] = {name: [] for name in names}
    for i, instance in enumerate(inputs):
        if not isinstance(instance, dict):
            raise InputError(
                f"inputs[{i}]: this model takes named inputs ({', '.join(names)}); "
                "send each instance as an object"
            )
        _check_names(set(instance), names, f"inputs[{i}]")
        for name in names:
            columns[name].append(instance[name])
    return columns, {name: Place("inputs", f".{name}") for name in names}


def _check_names(given: set, names: list[str], where: str) -> None:
    missing = [name for name in names if name not in given]
    unknown = sorted(str(name) for name in given - set(names))
    if unknown:
        raise InputError(
            f"{where}: the model has no input named {', '.join(unknown)} "
            f"(its inputs: {', '.join(names)})"
        )
    if missing:
        raise InputError(f"{where}: missing input {', '.join(missing)}")


def _to_array(values: list, spec: dict, where: Place) -> np.ndarray:
    """Turn one input's instances into a batch array of the model's dtype."""
    expected = list(spec["shape"][1:])
    dtype = spec["dtype"]
    try:
        array = np.asarray(values)
    except ValueError:  # ragged nesting
        array = None
    if array is None or array.dtype.kind not in "iuf" or not _fits(array.shape[1:], expected):
        _locate_bad_instance(values, expected, where)
        raise InputError(
            f"{where.column}: instances differ in shape; all instances of a job need one shape"
        )
    if array.dtype.kind == "f":
        finite = np.isfinite(array.reshape(len(array), -1)).all(axis=1)
        if not finite.all():
            i = int(np.argmin(finite))
            raise InputError(
                f"{where(i)}: NaN, Infinity or null is not a number the model can take"
            )
    if dtype in INT_DTYPES:
        if array.dtype.kind == "f":
            integral = (array == np.floor(array)).reshape(len(array), -1).all(axis=1)
            if not integral.all():
                i = int(np.argmin(integral))
                raise InputError(f"{where(i)}: expected integers (the model takes {dtype})")
        limits = np.iinfo(np.dtype(dtype))
        inside = ((array >= limits.min) & (array <= limits.max)).reshape(len(array), -1)
        if not inside.all(axis=1).all():
            i = int(np.argmin(inside.all(axis=1)))
            raise InputError(f"{where(i)}: a value is out of range for {dtype}")
    elif dtype not in FLOAT_DTYPES:
        raise InputError(f"{where.column}: the model takes {dtype}, which Sibyl cannot feed")
    if dtype == "bfloat16":
        return array.astype(np.float32)
    return array.astype(np.dtype(dtype), copy=False)


def _fits(shape: tuple, expected: list) -> bool:
    return len(shape) == len(expected) and all(
        want is None or want == got for got, want in zip(shape, expected, strict=True)
    )


def _locate_bad_instance(values: list, expected: list, where: Place) -> None:
    """Raise InputError naming the first instance that is not a tensor of the right shape."""
    for i, instance in enumerate(values):
        try:
            array = np.asarray(instance)
        except ValueError:
            raise InputError(f"{where(i)}: nested lists of unequal lengths") from None
        if array.dtype.kind == "b":
            raise InputError(f"{where(i)}: expected numbers, got booleans")
        if array.dtype.kind not in "iuf":
            raise InputError(f"{where(i)}: expected numbers, got {_describe(instance)}")
        if not _fits(array.shape, expected):
            wanted = [("any" if d is None else d) for d in expected]
            raise InputError(f"{where(i)}: expected shape {wanted}, got {list(array.shape)}")


JSON_TYPE_NAMES = {"NoneType": "null", "str": "a string", "dict": "an object", "bool": "a boolean"}


def _describe(value) -> str:
    """Name what a client sent instead of numbers, in JSON's words."""
    if isinstance(value, list):
        kinds = {type(v).__name__ for v in value if not isinstance(v, (int, float, list))}
        names = sorted(JSON_TYPE_NAMES.get(kind, kind) for kind in kinds)
        return " and ".join(names) or "a mix of numbers and lists"
    return JSON_TYPE_NAMES.get(type(value).__name__, type(value).__name__)
