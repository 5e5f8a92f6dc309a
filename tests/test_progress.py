"""Progress bars on the methods' long loops: drawn when show_progress is set and stderr is a
terminal, never otherwise (recbole_unrank.progress)."""

from __future__ import annotations

import io
import sys

import pytest
from conftest import prepared_run

from recbole_unrank import pipeline
from recbole_unrank.methods import METHODS
from recbole_unrank.progress import bars_shown, progress


class _Terminal(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_bar_needs_the_setting_and_a_terminal(monkeypatch):
    for tty, setting, drawn in ((True, True, True), (True, False, False), (False, True, False)):
        err = _Terminal(tty)
        monkeypatch.setattr(sys, "stderr", err)
        assert bars_shown(setting) is drawn
        assert list(progress(range(3), desc="loop", show_progress=setting)) == [0, 1, 2]  # iterates either way
        assert ("loop" in err.getvalue()) is drawn, (tty, setting)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A prepared WMF run on tiny with its original trained."""
    return prepared_run(tmp_path_factory.mktemp("progress"), "WMF")


@pytest.mark.parametrize("method, settings, desc", [
    ("finetune", {"epochs": 1}, "finetune   0"),
    ("sisa", {"shards": 2}, "sisa shards"),
    ("if", {"cg_steps": 5, "cg_tol": 0.9}, "if CG"),  # converges within its 5 steps
    ("l2unrank", {}, "calibration"),
    ("user_refit", {}, "user_refit Newton"),
])
def test_method_bar_follows_show_progress(run, monkeypatch, method, settings, desc):
    """The bar of each long loop appears with ``show_progress: True`` on a terminal, and
    disappears with ``show_progress: False`` or when stderr is not a terminal."""
    cls = METHODS[method]
    base = pipeline.method_settings(run.config, cls)
    for tty, setting in ((True, True), (True, False), (False, True)):
        err = _Terminal(tty)
        monkeypatch.setattr(sys, "stderr", err)
        monkeypatch.setitem(run.config.final_config_dict, "show_progress", setting)
        cls(**{**base, **settings})(run._task())
        assert (desc in err.getvalue()) is (tty and setting), (method, tty, setting, err.getvalue()[-300:])


@pytest.mark.parametrize("tty, setting, drawn", [(False, True, False), (True, True, True), (True, False, False)])
def test_recbole_training_bars_only_on_a_terminal(run, monkeypatch, tty, setting, drawn):
    """RecBole's own epoch bars ("Train     0") follow the same rule as the methods' bars:
    redirected stderr (a log, a pipe) gets none even with ``show_progress: True``."""
    from recbole_unrank.training import train_model

    err = _Terminal(tty)
    monkeypatch.setattr(sys, "stderr", err)
    monkeypatch.setitem(run.config.final_config_dict, "show_progress", setting)
    monkeypatch.setitem(run.config.final_config_dict, "epochs", 1)
    train, valid, _ = pipeline.make_loaders(run.config, run.data)
    train_model(run.config, train, valid, tag="bars")
    assert ("Train" in err.getvalue()) is drawn, err.getvalue()[-300:]
