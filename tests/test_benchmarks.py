"""The benchmarks still run and still read their own records: ``benchmarks/scale.py --quick`` and
``benchmarks/stream.py --quick`` (every part on the tiny dataset, a few requests, fresh
processes), and ``--report-only`` on the committed records (``benchmarks/results/``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import assert_same_numbers, assert_same_report

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS = REPO_ROOT / "benchmarks" / "results"


def _run(script: str, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    res = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / script), *map(str, args)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    return res


def test_scale_quick_measures_every_part(tmp_path):
    _run("scale.py", "--quick", "--work", tmp_path, "--threads", "1")
    out = tmp_path / "quick"
    record = json.loads((out / "scale.json").read_text(encoding="utf-8"))
    tiny = record["datasets"]["tiny"]
    assert set(tiny["models"]) == {"WMF", "LightGCN"}
    for model, res in tiny["models"].items():
        single = res["single_summary"]
        assert single["time_s"]["n"] == 2 and 0 < single["time_s"]["median"] < 60, model
        assert res["epoch_s"] > 0 and res["profile"]["top"]
        succ = res["successive"]
        assert [s["step"] for s in succ["steps"]] == [1, 2]
        assert succ["steps"][-1]["forgotten"] == 20  # two requests of ten interactions
        assert succ["retrain"]["epochs"] >= 1
    assert "cold_summary" in tiny["models"]["LightGCN"] and "graph_prep_s" in tiny["models"]["LightGCN"]
    md = (out / "scale.md").read_text(encoding="utf-8")
    assert "## 1. One request, one user" in md and "| tiny | 1,893 | WMF |" in md
    assert not (RESULTS / "quick").exists()


def test_scale_report_reads_the_committed_record(tmp_path):
    shutil.copy(RESULTS / "scale.json", tmp_path / "scale.json")
    _run("scale.py", "--report-only", "--out", tmp_path)
    md = (tmp_path / "scale.md").read_text(encoding="utf-8")
    record = json.loads((RESULTS / "scale.json").read_text(encoding="utf-8"))
    for name, res in record["datasets"].items():
        assert f"| {name} | {res['interactions']:,} |" in md, name
    assert "## Targets" in md and (tmp_path / "scale_dataset_growth.png").is_file()


@pytest.mark.slow  # two fresh runs of four requests with a retrained reference at each quarter: ~90 s
def test_stream_quick_runs_and_resumes(tmp_path):
    _run("stream.py", "--quick", "--work", tmp_path)
    out = tmp_path / "quick"
    points = sorted((out / "stream").glob("*/point-*.json"))
    # a record every 2 requests and a retrained reference at each quarter (ERASE's protocol)
    assert [p.name for p in points] == [f"point-0000{k}.json" for k in (1, 2, 3, 4)]
    records = [json.loads(p.read_text(encoding="utf-8")) for p in points]
    last = records[-1]
    assert last["dataset"] == "tiny" and last["unlearned"]["forget"]["pairs"] == 40
    assert all("retrain" in r and "request_users_ratio" in r and "reversal" in r["came_back"] for r in records)
    assert "audit" in last and last["policy"] == "consolidate" and last["method"] == "l2unrank_twosided"
    md = (out / "stream.md").read_text(encoding="utf-8")
    assert "| at 1/4 | at 2/4 | at 3/4 | at 4/4 |" in md and "reversal" in md
    summary = json.loads((out / "stream.json").read_text(encoding="utf-8"))["summary"]
    assert [s["requests"] for s in summary.values()] == [4]
    again = _run("stream.py", "--quick", "--work", tmp_path)
    assert "resuming after request 4" in again.stdout


def test_stream_report_reproduces_the_committed_one(tmp_path):
    shutil.copytree(RESULTS / "stream", tmp_path / "stream")
    _run("stream.py", "--report-only", "--out", tmp_path)
    # least-squares slopes and their growth differ in the last digits under another BLAS:
    # numbers up to rounding, everything else exactly
    assert_same_report((tmp_path / "stream.md").read_text(encoding="utf-8"),
                       (RESULTS / "stream.md").read_text(encoding="utf-8"))
    assert_same_numbers(json.loads((tmp_path / "stream.json").read_text(encoding="utf-8")),
                        json.loads((RESULTS / "stream.json").read_text(encoding="utf-8")))
