"""`run.py serve` with the front Sibyl had before service/api/front.py: gunicorn's threaded
worker, whose threads read requests themselves. Only make bench starts it, to measure
the front against it in the same run; nothing else should."""

import sys
from pathlib import Path

from gunicorn.workers.gthread import ThreadWorker

# The project's root instead of bench/, whose limits.py would hide the `limits` package.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

import run  # noqa: E402
import settings  # noqa: E402


class ThreadedWorker(ThreadWorker):
    """gthread, with the Flask app where run.py's hooks look for it."""

    def load_wsgi(self) -> None:
        super().load_wsgi()
        self.flask_app = self.wsgi


if __name__ == "__main__":
    # As it was: the request line's limit lifted for the app's JSON 414.
    run.FRONT = {
        "worker_class": ThreadedWorker,
        "threads": settings.WEB_THREADS,
        "limit_request_line": 0,
    }
    run.main(["serve"])
