"""The run folder: where a run's outputs go, and how a reader tells a finished one.

``<unrank_output_dir>/<model>-<dataset>[-kind]-<time>[-n]/`` holds an ``INCOMPLETE`` marker
from the moment it is made until the run has written everything (:func:`finish_run_dir`);
temporary files that interrupted runs left behind are removed by the next run under the same
parent. While a run writes the folder, the log also goes to its ``run.log`` and RecBole's
TensorBoard output to its ``log_tensorboard/``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import time

from recbole_unrank.errors import UnrankError

__all__ = ["INCOMPLETE", "check_output_dir", "clean_interrupted", "new_run_dir", "finish_run_dir",
           "attach_file_log", "log_to_file", "tensorboard_in"]

logger = logging.getLogger("recbole_unrank")

INCOMPLETE = "INCOMPLETE"  # present while a run folder is being written; removed when it is complete


def check_output_dir(config) -> str:
    """``unrank_output_dir`` is a folder (or can be made one) that this process can write."""
    base = str(config["unrank_output_dir"] or "runs")
    probe = os.path.abspath(base)
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        raise UnrankError(f"unrank_output_dir '{base}': '{probe}' is a file, not a folder: "
                          "give the folder that will hold the run folders")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UnrankError(f"unrank_output_dir '{base}': '{probe}' is not writable: give a folder you can write")
    return base


def _is_tmp(name: str) -> bool:
    return name.endswith(".tmp") or ".tmp." in name


def _alive(marker: str) -> bool:
    """Whether the process that wrote the ``INCOMPLETE`` marker still runs (on this host)."""
    try:
        with open(marker, encoding="utf-8") as f:
            info = dict(line.rstrip("\n").split(": ", 1) for line in f if ": " in line)
        if info.get("host") != socket.gethostname():
            return True  # cannot tell: leave it alone
        os.kill(int(info["pid"]), 0)
        return True
    except (OSError, ValueError, KeyError):
        return False


def clean_interrupted(base: str) -> list[str]:
    """Remove the temporary files that interrupted runs left in their (still marked
    incomplete) run folders under ``base``; returns the files removed."""
    removed = []
    if not os.path.isdir(base):
        return removed
    for name in sorted(os.listdir(base)):
        folder = os.path.join(base, name)
        marker = os.path.join(folder, INCOMPLETE)
        if not os.path.isfile(marker) or _alive(marker):
            continue
        for root, _, files in os.walk(folder):
            for f in files:
                if _is_tmp(f):
                    os.remove(os.path.join(root, f))
                    removed.append(os.path.join(root, f))
    if removed:
        logger.info("removed %d temporary file(s) left by interrupted runs under %s", len(removed), base)
    return removed


def new_run_dir(config, kind: str = "") -> str:
    """A fresh ``<unrank_output_dir>/<model>-<dataset>[-kind]-<time>[-n]`` folder, marked
    incomplete (an ``INCOMPLETE`` file) until :func:`finish_run_dir`. Temporary files that
    interrupted runs left under the same parent are removed first."""
    base = check_output_dir(config)
    clean_interrupted(base)
    tag = f"-{kind}" if kind else ""
    stem = f"{config['model']}-{config['dataset']}{tag}-{time.strftime('%Y%m%d-%H%M%S')}"
    path = os.path.join(base, stem)
    n = 1
    while True:
        try:
            os.makedirs(path)
            break
        except FileExistsError:
            n += 1
            path = os.path.join(base, f"{stem}-{n}")
    with open(os.path.join(path, INCOMPLETE), "w", encoding="utf-8") as f:
        f.write("This run folder is not complete: the run is still going, or it was interrupted.\n"
                f"pid: {os.getpid()}\nhost: {socket.gethostname()}\nstarted: {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    return path


def finish_run_dir(path: str) -> None:
    """Mark ``path`` complete: no temporary file is left, the ``INCOMPLETE`` marker goes last."""
    for root, _, files in os.walk(path):
        for f in files:
            if _is_tmp(f):
                os.remove(os.path.join(root, f))
    marker = os.path.join(path, INCOMPLETE)
    if os.path.exists(marker):
        os.remove(marker)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def attach_file_log(run_dir: str) -> logging.Handler:
    """Send the log (root logger) to ``<run_dir>/run.log`` too; detach with
    ``logging.getLogger().removeHandler(handler)`` and ``handler.close()``."""
    handler = logging.FileHandler(os.path.join(run_dir, "run.log"), encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    return handler


def log_to_file(handler: logging.Handler, title: str, text: str) -> None:
    """Write ``text`` (RecBole's coloured config dump, dataset statistics) to run.log only."""
    record = logging.LogRecord("recbole_unrank", logging.INFO, __file__, 0,
                               "%s\n%s", (title, _ANSI.sub("", str(text))), None)
    handler.handle(record)


@contextlib.contextmanager
def tensorboard_in(run_dir: str):
    """RecBole's trainers write TensorBoard logs to ``./log_tensorboard`` (a path fixed inside
    ``recbole.utils.get_tensorboard``); while this block runs they go to
    ``<run_dir>/log_tensorboard`` instead."""
    from recbole.trainer import trainer as recbole_trainer
    from recbole.utils import get_local_time

    original = recbole_trainer.get_tensorboard

    def in_run_dir(_logger):
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(os.path.join(run_dir, "log_tensorboard", get_local_time()))

    recbole_trainer.get_tensorboard = in_run_dir
    try:
        yield
    finally:
        recbole_trainer.get_tensorboard = original
