"""The sandboxed child that loads an uploaded model and prints its signature.

    python -I -B -c "...; from service.registry.inspect_model import main; main(sys.argv[1:])" \
        FORMAT PATH [--drop-to=UID:GID]

Uploaded models are programs: they are opened here, in a process of their own,
never in the API, and only once the static checks of service/registry/model_scan.py
passed. service/registry/model_files.py starts it in an empty directory with limits
on memory, file writes (none at all), open files and time. TensorFlow is imported
first, then, given --drop-to, the process becomes that unprivileged user before
it opens the model. Prints one JSON line: {"signature": {...}} or {"error": "..."}.
"""

import json
import os
import sys
import tempfile


def drop_privileges(uid: int, gid: int) -> None:
    """Become uid:gid for good, with no supplementary groups (needs root)."""
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)  # as root this sets the real, effective and saved ids: no way back
    if os.getuid() != uid or os.geteuid() != uid or os.getegid() != gid:
        raise SystemExit("could not drop privileges")


def inspect(model_format: str, path: str) -> dict:
    """Load the model, check it can be served, and describe its tensors."""
    from service.registry.runtime import CompiledModel, ModelLoadError

    try:
        model = CompiledModel(path, model_format)
        model.check_batch_polymorphic()
        # A model that cannot run on a sample input cannot serve jobs either; the
        # operations it can run were checked before this process started.
        model.predict(model.sample_batch(2))
    except ModelLoadError as error:
        return {"error": str(error)}
    except Exception as error:
        return {"error": f"the model failed on a sample input: {str(error).splitlines()[0][:300]}"}
    return {"signature": model.signature}


def main(argv: list[str]) -> None:
    model_format, path, *options = argv
    # No file can be written here (RLIMIT_FSIZE 0), and tempfile would otherwise
    # probe /tmp by writing to it when a library asks for a temporary directory
    # (absl does on import): point it at the empty working directory instead.
    tempfile.tempdir = os.getcwd()
    # Imported while the process may still read the interpreter's files (they may
    # live where the sandbox user cannot go); nothing of the model is read yet.
    import encodings.cp437  # noqa: F401  (zipfile decodes member names with it, lazily)

    import service.registry.runtime  # noqa: F401

    for option in options:
        if option.startswith("--drop-to="):
            uid, gid = option.removeprefix("--drop-to=").split(":")
            drop_privileges(int(uid), int(gid))
    result = inspect(model_format, path)
    sys.stdout.write("\n" + json.dumps(result) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
