"""The model runner: one model, loaded and called in a confined process of its own.

    python -I -B -c "...; from service.registry.runner_child import main; main(sys.argv[1:])" \
        FORMAT PATH FD MEMORY_MB CONFINEMENT SCAN [UID:GID]

Models run only here, never in the API process or a worker's (service/registry/
runner.py starts and talks to it). In order: the process confines itself while it
is single-threaded (service/registry/confine.py), imports TensorFlow, becomes UID:GID
when given (Sibyl runs as root), and only then opens the model. It then answers
calls on the socket FD until the socket closes:

    parent -> child  one message: the arrays (service/registry/frames.py)
    child -> parent  one message: the output array; or {"error": "..."}

Its first message is {"signature": {...}} once the model is loaded, or {"error"}.
Nothing here is pickled: the parent reads only JSON and numeric arrays.
"""

import json
import os
import sys
import tempfile
import threading
import time
from multiprocessing.connection import Connection

from service.registry import confine, frames


def serve(connection: Connection, model) -> None:
    """Answer calls until the parent closes the socket."""
    while True:
        try:
            batch = frames.unpack(connection.recv_bytes())
        except EOFError:
            return
        try:
            output = model.predict(batch)
        except Exception as error:  # noqa: BLE001 (the model's own error, for its job)
            connection.send_bytes(frames.pack_error(error_summary(error)))
            continue
        connection.send_bytes(frames.pack({"output": output}))


def error_summary(error: Exception) -> str:
    """The line of an exception that says what went wrong (TensorFlow's come last)."""
    text = str(getattr(error, "message", error))
    lines = [line for line in text.splitlines() if line.strip() and not line[0].isspace()]
    lines = [line for line in lines if not line.startswith(("Detected at node", "Graph execution"))]
    return f"{type(error).__name__}: {(lines[-1] if lines else '')[:300]}"


def exit_with_parent(parent: int) -> None:
    """End this process once its parent has gone, even in the middle of a model call
    (PR_SET_PDEATHSIG follows the parent's thread, not its process)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def main(argv: list[str]) -> None:
    model_format, path, fd, memory_mb, confinement, scan, *user = argv
    connection = Connection(int(fd))
    parent = os.getppid()
    # tempfile would otherwise probe /tmp by writing to it when a library asks for a
    # temporary directory (absl does on import): the empty working directory instead.
    tempfile.tempdir = os.getcwd()
    import encodings.cp437  # noqa: F401  (zipfile decodes member names with it, lazily)

    from service.registry import model_scan  # noqa: F401  (imported before the walls go up)

    try:
        missing = confine.confine(path, int(memory_mb), required=confinement == "required")
    except confine.ConfinementError as error:
        connection.send_bytes(json.dumps({"error": str(error), "confinement": True}).encode())
        return
    exit_with_parent(parent)
    from service.registry.runtime import CompiledModel, ModelLoadError

    if user:
        uid, gid = user[0].split(":")
        confine.drop_privileges(int(uid), int(gid))
    try:
        model = CompiledModel(path, model_format, static_scan=scan == "scan")
        model.check_batch_polymorphic()
    except ModelLoadError as error:
        connection.send_bytes(json.dumps({"error": str(error)}).encode())
        return
    answer = {"signature": model.signature, "unconfined": missing}
    connection.send_bytes(json.dumps(answer).encode())
    serve(connection, model)


if __name__ == "__main__":
    main(sys.argv[1:])
