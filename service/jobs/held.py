"""Jobs held in memory until they end, then written once, complete.

A job submitted with `?wait=` to a process that runs it itself would cost three
writes if stored at once: the queued job, its predictions, its completion. Held
instead, it costs one transaction shared by every held job of its batch (the
finished jobs and their predictions together), and a 201 still means stored: the
request answers only once its jobs are in the database, whichever way they got
there.

Who writes a held job is decided once, under its lock:
- the engine `take`s it when it starts running it, and then writes it (complete,
  or as an ordinary leased job if it cannot finish in one batch or fails);
- the request `store`s it (queued and leased, as if it had not been held) if the
  engine has not taken it by the time the wait is nearly over.
Either way `stored` is set once the document is in the database, or `error` says
why it could not be written (the request answers 503).
"""

import threading
from enum import Enum


class Taken(Enum):
    HELD = "held"  # the engine writes it from now on
    STORED = "stored"  # already in the database: an ordinary job
    LOST = "lost"  # its write failed: the request answers the error; do not run it


class Held:
    """The document of a job accepted but not yet written, and who writes it."""

    def __init__(self, document: dict):
        self.document = document
        self.stored = threading.Event()
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self._taken = False

    def take(self) -> Taken:
        """The engine starts running the job: from now on it writes it, unless it is
        already written (or failed to be)."""
        with self._lock:
            if not self.stored.is_set():
                self._taken = True
                return Taken.HELD
            return Taken.LOST if self.error is not None else Taken.STORED

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
    def store_untaken(held: list["Held"], insert) -> None:
        """The request's turn: write the jobs the engine has not taken, in one insert.

        insert(documents) stores them; its error is theirs, and is raised.
        """
        locks = [h._lock for h in held]
        for lock in locks:
            lock.acquire()
        try:
            untaken = [h for h in held if not h._taken and not h.stored.is_set()]
            if untaken:
                Held.write(untaken, lambda: insert([h.document for h in untaken]))
        finally:
            for lock in locks:
                lock.release()
