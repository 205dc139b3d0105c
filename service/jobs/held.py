"""Jobs held in memory until they end, then written once, complete.

A job submitted with `?wait=` to a process that runs it itself would cost three
writes if stored at once: the queued job, its predictions, its completion. Held
instead, it costs one transaction shared by every held job of its batch (the
finished jobs and their predictions together), and a 201 still means stored: the
request answers only once its jobs are in the database, whichever way they got
there.

Who writes a held job is decided when it is written, under its lock:
- the engine runs it, and when it is about to write it (complete, or as an ordinary
  leased job if it cannot finish in one batch or fails) takes the locks of the
  jobs it writes (`Held.writing`): those still unwritten are its to write;
- the request stores it (queued and leased, as if it had not been held) if it is
  still unwritten when the wait is nearly over, however long the model call that
  runs it takes: the engine then finds it stored and treats it as an ordinary job.
Either way `stored` is set once the document is in the database, or `error` says
why it could not be written (the request answers 503). A request never waits for
the engine: a model that loops cannot make `?wait=` late.
"""

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Held:
    """The document of a job accepted but not yet written, and who writes it."""

    def __init__(self, document: dict):
        self.document = document
        self.stored = threading.Event()
        self.error: BaseException | None = None
        self._lock = threading.Lock()

    @property
    def lost(self) -> bool:
        """Its request could not store it: it must not run."""
        return self.stored.is_set() and self.error is not None

    def resolved(self, error: BaseException | None = None) -> None:
        """The document is in the database (error None), or could not be written."""
        self.error = error
        self.stored.set()

    @staticmethod
    def write(held: list["Held"], write) -> None:
        """Run write(), which stores the held jobs; each is resolved with its outcome,
        and an error is raised again."""
        try:
            write()
        except BaseException as error:
            for h in held:
                h.resolved(error)
            raise
        for h in held:
            h.resolved()

    @staticmethod
    @contextmanager
    def writing(held: list["Held"]) -> Iterator[list["Held"]]:
        """Hold the jobs' locks; yield those not yet written, which the caller writes
        (with `write`) before the block ends."""
        locks = [h._lock for h in sorted(held, key=id)]  # one order: no deadlock
        for lock in locks:
            lock.acquire()
        try:
            yield [h for h in held if not h.stored.is_set()]
        finally:
            for lock in locks:
                lock.release()

    @staticmethod
    def store_untaken(held: list["Held"], insert) -> None:
        """The request's turn: write the jobs nobody wrote yet, in one insert.

        insert(documents) stores them; its error is theirs, and is raised.
        """
        with Held.writing(held) as unwritten:
            if unwritten:
                Held.write(unwritten, lambda: insert([h.document for h in unwritten]))
