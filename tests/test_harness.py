"""The benchmarks' shared harness (benchmarks/harness.py): a cell's record is written whole or
not at all, a rerun sees exactly the finished cells, and the scale and stream benchmarks use
it rather than their own copies."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import harness  # noqa: E402


def test_cells_resume_from_finished_records_only(tmp_path):
    cells = harness.Cells(str(tmp_path / "cells"))
    assert cells.keys() == [] and not cells.done("WMF/5M")
    cells.write("WMF/5M", {"median_s": 0.5})
    assert cells.done("WMF/5M") and cells.read("WMF/5M") == {"median_s": 0.5}
    assert cells.keys() == ["WMF_5M"]  # the key's slash cannot make a sub-folder
    # a stray temporary file of a killed writer is not a finished cell
    Path(cells.path("NeuMF/5M") + ".tmp").write_text("{\"median", encoding="utf-8")
    assert not cells.done("NeuMF/5M") and cells.keys() == ["WMF_5M"]
    cells.write("WMF/5M", {"median_s": 0.25})  # replaced whole
    assert json.loads(Path(cells.path("WMF/5M")).read_text(encoding="utf-8")) == {"median_s": 0.25}


def test_write_json_leaves_the_old_record_when_the_write_fails(tmp_path):
    path = str(tmp_path / "a" / "rec.json")
    harness.write_json({"n": 1}, path)

    with pytest.raises(TypeError):  # default=float cannot turn an object into a number: no JSON
        harness.write_json({"n": [1, {"x": object()}]}, path)
    assert harness.read_json(path) == {"n": 1}
    assert [n for n in os.listdir(tmp_path / "a")] == ["rec.json"]


def test_config_files_and_host():
    assert [Path(f).name for f in harness.config_files("WMF", "ml-100k")] == ["ml-100k.yaml", "WMF.yaml"]
    assert [Path(f).name for f in harness.config_files("LightGCN", "tiny")] == ["LightGCN.yaml"]
    assert all(os.path.isfile(f) for f in harness.config_files("NeuMF", "ml-100k"))
    h = harness.host()
    assert h["cpus"] >= 1 and len(h["load"]) in (0, 3)


@pytest.mark.parametrize("name", ["scale.py", "stream.py"])
def test_benchmarks_use_the_harness_not_their_own_copies(name):
    text = (BENCH / name).read_text(encoding="utf-8")
    assert "from harness import" in text
    for own in ("def _silence(", "def _config_files(", "def _write_json(", "def _write_atomic(", "def code_state(",
                "os.getloadavg()"):
        assert own not in text, (name, own)
