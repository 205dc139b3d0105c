"""`run.py worker` with tests/recording_hooks.py in place of hooks/job_events.py's
register: what a worker of a developer who wrote those hooks runs."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import recording_hooks  # noqa: E402

import hooks.job_events  # noqa: E402
import run  # noqa: E402

hooks.job_events.register = recording_hooks.register
run.main(sys.argv[1:])
