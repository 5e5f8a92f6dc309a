"""Test hooks the run calls at its stages: a leaf, so any layer may call them.

:func:`pause_point` lets a test stop a real run at a named stage and kill it there, to see what
an interrupted run leaves behind (tests/test_cli.py).
"""

from __future__ import annotations

import os
import sys
import time

__all__ = ["pause_point", "PAUSE_ENV"]

PAUSE_ENV = "RECBOLE_UNRANK_TEST_PAUSE"


def pause_point(stage: str) -> None:
    """Test hook: with ``RECBOLE_UNRANK_TEST_PAUSE=<stage>`` in the environment the process
    says so on stderr and sleeps here (a test kills it to see what an interrupted run leaves).
    Stages: ``run_dir``, ``original``, ``method:<name>``, ``report``, ``write:<file>`` (between
    writing a file's temporary copy and renaming it), ``finish``."""
    if os.environ.get(PAUSE_ENV) == stage:
        print(f"paused at {stage}", file=sys.stderr, flush=True)
        time.sleep(600)
