"""What the scale and stream benchmarks share: records written whole or not at all, a folder of
finished cells a rerun resumes from, the host's load and the code that ran, the project config
files of a (model, dataset), and quiet logs.

A benchmark records one JSON file per finished cell (``Cells.write``); a rerun asks
``Cells.done`` / ``Cells.read`` and skips what is there, so a run stopped anywhere resumes at
the next cell. Every record carries ``host()`` (cores, load average) and, at the run's level,
``code_state()`` (commit and uncommitted package files): the machines here are shared, so a
time is read together with the load it ran under and the code it measured.

Nothing here imports RecBole: a ``--report-only`` path stays light.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

__all__ = ["HERE", "ROOT", "Cells", "write_json", "read_json", "write_torch", "silence", "config_files",
           "load_average", "host", "code_state", "changed_files"]


def write_json(obj, path: str) -> str:
    """``obj`` as JSON at ``path``, whole or not at all (a temporary file renamed); folders made."""
    from recbole_unrank.atomic import atomic_text

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return atomic_text(path, json.dumps(obj, indent=1, default=float))


def read_json(path: str):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_torch(obj, path: str) -> str:
    """``torch.save(obj)`` at ``path``, whole or not at all."""
    from recbole_unrank.atomic import atomic_torch_save

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return atomic_torch_save(obj, path)


class Cells:
    """A folder of finished cells, one JSON record each (``<key>.json``), written atomically.

    ``key`` is any string naming the cell (characters other than letters, digits, ``-_.=+``
    become ``_``). ``write`` replaces a record whole; a record half written by a killed run
    cannot exist, so ``done(key)`` means the cell finished."""

    def __init__(self, folder: str):
        self.folder = folder

    @staticmethod
    def _name(key: str) -> str:
        return "".join(c if c.isalnum() or c in "-_.=+" else "_" for c in str(key))

    def path(self, key: str) -> str:
        return os.path.join(self.folder, self._name(key) + ".json")

    def done(self, key: str) -> bool:
        return os.path.isfile(self.path(key))

    def read(self, key: str):
        return read_json(self.path(key))

    def write(self, key: str, record) -> str:
        return write_json(record, self.path(key))

    def keys(self) -> list[str]:
        if not os.path.isdir(self.folder):
            return []
        return sorted(n[:-5] for n in os.listdir(self.folder) if n.endswith(".json"))


def silence() -> None:
    """Warnings off; RecBole's and the package's loggers (and the root's) at ERROR."""
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger().setLevel(logging.ERROR)
    for name in ("recbole", "recbole_unrank"):
        logging.getLogger(name).setLevel(logging.ERROR)


def config_files(model: str, dataset: str) -> list[str]:
    """The project's YAML for ``model`` on ``dataset`` (``config/ml-100k.yaml`` first on ml-100k)."""
    names = (["ml-100k.yaml"] if dataset == "ml-100k" else []) + [f"{model}.yaml"]
    return [os.path.join(ROOT, "config", n) for n in names]


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages, rounded (empty where the platform has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def host() -> dict:
    """Cores and load average now: what a time measured on a shared machine is read with."""
    return {"cpus": os.cpu_count(), "load": load_average()}


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def code_state() -> dict:
    """The package's commit and uncommitted changes (the tree is shared: record what ran)."""
    diff = _git("diff", "HEAD", "--", "recbole_unrank")
    return {"commit": _git("rev-parse", "--short", "HEAD").strip(),
            "dirty": sorted(line[3:] for line in _git("status", "--porcelain", "--", "recbole_unrank").splitlines()
                            if len(line) > 3),
            "diff_sha1": hashlib.sha1(diff.encode()).hexdigest()[:10] if diff else None}


def changed_files(start: dict, end: dict) -> list[str]:
    """Package files that differ between two code states (commits, plus uncommitted files)."""
    names = set(start.get("dirty", [])) | set(end.get("dirty", []))
    if start.get("commit") and end.get("commit") and start["commit"] != end["commit"]:
        names |= set(_git("diff", "--name-only", start["commit"], end["commit"], "--", "recbole_unrank").split())
    return sorted(names)
