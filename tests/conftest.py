"""Shared fixtures: the repository root, the tiny dataset, a clean ``sys.argv``, a scratch cwd.

RecBole's ``Config`` parses every ``--key=value`` of ``sys.argv`` and writes ``./log``,
``./log_tensorboard`` and ``./saved`` under the current directory, so every test runs with a
clean ``sys.argv`` and (session-wide, and per test where it trains) a temporary working
directory. Every config built here uses the CPU (``gpu_id: ''``) and writes only under
pytest's temporary folders.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_PATH = REPO_ROOT / "dataset"

if str(REPO_ROOT) not in sys.path:  # plain `pytest` (not `python -m pytest`) finds the package
    sys.path.insert(0, str(REPO_ROOT))


def base_config_dict(workdir: Path, **overrides) -> dict:
    """Settings of a fast CPU run on ``tiny`` whose outputs all land in ``workdir``."""
    cfg = {
        "data_path": str(DATA_PATH),
        "gpu_id": "",
        "seed": 2020,
        "epochs": 1,
        "show_progress": False,
        "checkpoint_dir": str(workdir / "saved"),
        "unrank_output_dir": str(workdir / "runs"),
        "eval_batch_size": 409600,  # NeuMF evaluates on repeated pairs: few batches
    }
    cfg.update(overrides)
    return cfg


def make_tiny_config(workdir: Path, model: str = "WMF", dataset: str = "tiny", **overrides):
    """``pipeline.build_config(model, dataset, config_dict=...)`` with outputs in ``workdir``."""
    from recbole_unrank.pipeline import build_config

    return build_config(model, dataset, config_dict=base_config_dict(Path(workdir), **overrides))


def prepared_run(workdir: Path, model: str = "WMF", **overrides):
    """``pipeline.prepare_run`` of a fast run on ``tiny`` (outputs in ``workdir``, settings from
    ``overrides`` only, not from ``sys.argv``) with its original trained."""
    from recbole_unrank.pipeline import build_config, prepare_run

    run, _ = prepare_run(build_config(model, "tiny", config_dict=base_config_dict(Path(workdir), **overrides), argv=[]))
    run.prepare_original()
    return run


def subprocess_env() -> dict:
    """Environment of a fresh interpreter that can import the package (and nothing extra)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT)
    env["CUDA_VISIBLE_DEVICES"] = ""
    env["PYTHONWARNINGS"] = "ignore"
    # Subprocesses run beside the test process on 2 cores: one torch thread each avoids
    # OpenMP oversubscription, which slows small tensor work by an order of magnitude.
    env["OMP_NUM_THREADS"] = "1"
    return env


def run_python(code: str, cwd, timeout: float = 180, args: list[str] | None = None):
    """Run ``python -c code`` in a fresh process (cwd ``cwd``); returns the CompletedProcess."""
    return subprocess.run(
        [sys.executable, "-c", code, *(args or [])],
        cwd=str(cwd),
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class Pending:
    """A command started in a fresh process without waiting (so it overlaps other tests);
    ``result()`` waits and returns a CompletedProcess (text stdout / stderr)."""

    def __init__(self, argv: list[str], cwd):
        self._proc = subprocess.Popen(
            [str(a) for a in argv],
            cwd=str(cwd),
            env=subprocess_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._done: subprocess.CompletedProcess | None = None

    def result(self, timeout: float = 300) -> subprocess.CompletedProcess:
        if self._done is None:
            try:
                out, err = self._proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                out, err = self._proc.communicate()
            self._done = subprocess.CompletedProcess(self._proc.args, self._proc.returncode, out, err)
        return self._done


# ------------------------------------------------------------------------------ markers
def pytest_collection_modifyitems(config, items) -> None:
    """Tests marked ``cuda`` need a CUDA device: skipped (with the reason) where none is present.
    Asked once, before any RecBole Config could hide the GPUs (see compat._config_init_device)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (none is present)")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="session", autouse=True)
def _session_sandbox(tmp_path_factory):
    """Session-wide: clean sys.argv and a scratch cwd, so module-scoped fixtures (which run
    before function-scoped ones) neither read pytest's options nor write into the repo."""
    saved_argv, saved_cwd = sys.argv[:], os.getcwd()
    sys.argv = [saved_argv[0]]
    os.chdir(tmp_path_factory.mktemp("cwd"))
    try:
        yield
    finally:
        os.chdir(saved_cwd)
        sys.argv = saved_argv


@pytest.fixture(autouse=True)
def clean_argv(monkeypatch):
    """RecBole's Config reads --key=value from sys.argv: every test starts (and ends) clean."""
    monkeypatch.setattr(sys, "argv", [sys.argv[0]])
    yield


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """cwd = tmp_path (RecBole writes ./log_tensorboard, ./log, ./saved when it trains)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def data_path() -> Path:
    return DATA_PATH


@pytest.fixture
def tiny_config(in_tmp):
    """Factory: ``tiny_config(model="WMF", **overrides)`` -> a config on ``tiny`` (CPU, 1 epoch,
    checkpoints and run folders under tmp_path)."""

    def make(model: str = "WMF", **overrides):
        return make_tiny_config(in_tmp, model, **overrides)

    return make


@pytest.fixture(scope="session")
def py_async():
    """``py_async(code, cwd, args=None)`` starts ``python -c code`` in a fresh interpreter and
    returns a :class:`Pending`; ``py_async.argv(argv, cwd)`` starts any command."""

    def start(code: str, cwd, args: list[str] | None = None) -> Pending:
        return Pending([sys.executable, "-c", code, *(args or [])], cwd)

    start.argv = lambda argv, cwd: Pending(list(argv), cwd)
    return start


@pytest.fixture(scope="session")
def py():
    """``py(code, cwd)``: run ``python -c code`` in a fresh interpreter."""
    return run_python


@pytest.fixture(scope="session")
def config_maker():
    """``config_maker(workdir, model="WMF", **overrides)``: for module-scoped fixtures."""
    return make_tiny_config


# ------------------------------------------------------------------------------ reports
_NUMBER = re.compile(r"[-+]?(?:\d[\d,]*\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def assert_same_numbers(got, want, rel: float = 1e-9, abs_tol: float = 1e-12, path: str = "") -> None:
    """``got`` equals ``want`` (JSON-like trees): keys, lengths, strings and bools exactly,
    floats up to ``rel`` / ``abs_tol`` (another BLAS, another last digit), NaN equal to NaN."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys(), (path, sorted(got), sorted(want))
        for key in want:
            assert_same_numbers(got[key], want[key], rel, abs_tol, f"{path}/{key}")
    elif isinstance(want, (list, tuple)):
        assert isinstance(got, (list, tuple)) and len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want)):
            assert_same_numbers(g, w, rel, abs_tol, f"{path}[{i}]")
    elif isinstance(want, float) or (isinstance(got, float) and isinstance(want, int) and not isinstance(want, bool)):
        assert isinstance(got, (int, float)) and not isinstance(got, bool), (path, got, want)
        if math.isnan(want):
            assert math.isnan(got), (path, got, want)
        else:
            assert math.isclose(got, want, rel_tol=rel, abs_tol=abs_tol), (path, got, want)
    else:
        assert got == want, (path, got, want)


def assert_same_report(got: str, want: str, rel: float = 1e-9) -> None:
    """Two rendered reports agree: the text between numbers exactly, each printed number up to
    ``rel`` or one unit of its last printed digit (a value on a rounding boundary may print
    either way under another BLAS)."""
    got_text, want_text = _NUMBER.split(got), _NUMBER.split(want)
    assert got_text == want_text, "the reports' text differs"
    for g, w in zip(_NUMBER.findall(got), _NUMBER.findall(want)):
        if g == w:
            continue
        gv, wv = float(g.replace(",", "")), float(w.replace(",", ""))
        mantissa = w.replace(",", "").lstrip("+-").split("e")[0].split("E")[0]
        decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
        exponent = int(re.split("[eE]", w)[1]) if re.search("[eE]", w) else 0
        unit = 10.0 ** (exponent - decimals)
        assert abs(gv - wv) <= unit * (1 + 1e-9) or math.isclose(gv, wv, rel_tol=rel), (g, w)


# ------------------------------------------------------------------------------ stream models
#: the tiny file's columns with its timestamps: a stream's requests are each user's most recent rows
TIME_COLS = {"inter": ["user_id", "item_id", "timestamp"]}


@pytest.fixture(scope="module")
def wmf(tmp_path_factory):
    """``(config, data, model)``: WMF trained on tiny with its timestamps (the stream tests; one per
    module, so a test that changes the config changes no other module's)."""
    from test_scale_paths import _trained

    return _trained(tmp_path_factory.mktemp("wmf"), "WMF", epochs=3, learning_rate=0.01, load_col=TIME_COLS)


@pytest.fixture(scope="module")
def lightgcn(tmp_path_factory):
    """``(config, data, model)``: LightGCN trained on tiny with its timestamps (as :func:`wmf`)."""
    from test_scale_paths import _trained

    return _trained(tmp_path_factory.mktemp("lgcn"), "LightGCN", epochs=2, learning_rate=0.01, load_col=TIME_COLS)
