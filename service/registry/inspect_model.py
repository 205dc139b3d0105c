"""Child-process entry point that loads an uploaded model and prints its signature.

    python -m service.registry.inspect_model FORMAT PATH

Uploaded models are programs: they are opened here, in a process of their own
with a time and memory limit (service/registry/model_files.py sets them), never in the API.
Prints one JSON line: {"signature": {...}} or {"error": "..."}.
"""

import json
import sys


def inspect(model_format: str, path: str) -> dict:
    """Load the model, check it can be served, and describe its tensors."""
    from service.registry.runtime import CompiledModel, ModelLoadError

    try:
        model = CompiledModel(path, model_format)
        model.check_batch_polymorphic()
        # A model that cannot run on a sample input cannot serve jobs either.
        model.predict(model.sample_batch(2))
    except ModelLoadError as error:
        return {"error": str(error)}
    except Exception as error:
        return {"error": f"the model failed on a sample input: {str(error).splitlines()[0][:300]}"}
    return {"signature": model.signature}


if __name__ == "__main__":
    result = inspect(sys.argv[1], sys.argv[2])
    sys.stdout.write("\n" + json.dumps(result) + "\n")
