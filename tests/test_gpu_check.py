"""The prepared device check (``benchmarks/gpu_check.py``, issue 24) and ``scale.py``'s device
and size guards. No GPU here: the check runs end to end in its reduced mode on the CPU."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO_ROOT, subprocess_env

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
from gpu_check import pytest_counts

BENCH = REPO_ROOT / "benchmarks"


def _run(script: str, *args, timeout: float = 240):
    return subprocess.run([sys.executable, str(BENCH / script), *map(str, args)], cwd=str(REPO_ROOT),
                          env=subprocess_env(), capture_output=True, text=True, timeout=timeout, check=False)


def test_pytest_counts_reads_plain_and_xdist_lines():
    # plain -v and xdist lines; the -r summary's FAILED line is not counted twice
    out = """tests/test_a.py::test_one PASSED                                    [ 25%]
[gw1] [ 50%] FAILED tests/test_a.py::test_two[WMF]
tests/test_b.py::test_gpu SKIPPED (no CUDA)                         [ 75%]
[gw0] [100%] ERROR tests/test_b.py::test_setup
FAILED tests/test_a.py::test_two[WMF] - AssertionError
=========== 1 failed, 1 passed, 1 skipped, 1 error in 3.10s ==========="""
    c = pytest_counts(out)
    assert (c["passed"], c["failed"], c["skipped"], c["error"]) == (1, 1, 1, 1)
    assert c["failed_names"] == ["tests/test_a.py::test_two[WMF]", "tests/test_b.py::test_setup"]
    assert c["summary_line"].startswith("1 failed, 1 passed")


def test_gpu_check_reduced_end_to_end(tmp_path):
    """Every part on the CPU, small: the report's structure and its figures are there."""
    out, work = tmp_path / "out", tmp_path / "work"
    env = {**subprocess_env(), "PYTHON": sys.executable}  # through the thin shell entry point
    proc = subprocess.run(["bash", str(BENCH / "gpu_check.sh"), "--reduced", "--out", str(out), "--work", str(work),
                           "--threads", "1"], cwd=str(REPO_ROOT), env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rec = json.loads((out / "gpu.json").read_text(encoding="utf-8"))
    assert rec["reduced"] is True and rec["device"] == "cpu"
    for key in ("python", "torch", "numpy", "pandas", "recbole", "device_name", "cpus"):
        assert rec["versions"][key]
    tests = rec["parts"]["tests"]
    assert tests["fast"]["status"] == "ok" and tests["fast"]["passed"] >= 2 and tests["fast"]["failed"] == 0
    assert tests["cuda"]["status"] == "ok" and tests["cuda"]["passed"] == 0 and tests["cuda"]["skipped"] >= 1

    from recbole_unrank.methods import METHODS

    comp = rec["parts"]["compare"]
    assert comp["dataset"] == "tiny"
    assert set(comp["methods"]) | set(comp["skipped_methods"]) == {"l2unrank", "l2unrank_twosided"}
    assert all((m in METHODS) == (m in comp["methods"]) for m in ("l2unrank", "l2unrank_twosided"))
    assert set(comp["models"]) == {"WMF", "NeuMF", "LightGCN"}
    for model, m in comp["models"].items():
        assert m["status"] == "ok", (model, m)
        methods = {r["method"]: r for r in m["rows"]}
        assert {"l2unrank", "retrain"} <= set(methods), methods.keys()
        assert methods["l2unrank"]["time_s"] > 0 and 0 <= methods["l2unrank"]["test"]["ndcg@10"] <= 1
        assert m["speedup"]["l2unrank"] > 0
        # the two-sided update runs where it acts and is reported as not run where it refuses the model
        assert ("l2unrank_twosided" in methods) == (model != "LightGCN"), (model, methods.keys())
        assert ("l2unrank_twosided" in m["not_run"]) == (model == "LightGCN"), (model, m["not_run"])
    lat = rec["parts"]["latency"]["sizes"]["tiny"]
    assert lat["status"] == "ok" and lat["device"] == "cpu"
    assert set(lat["models"]) == {"WMF", "NeuMF", "LightGCN"}  # --models given explicitly beats --quick's
    for m in lat["models"].values():
        assert m["median_s"] > 0 and m["n"] == 2 and m["cuda_peak_bytes"] is None
    assert rec["wall_s"] < rec["budget_s"]
    md = (out / "gpu.md").read_text(encoding="utf-8")
    for heading in ("# Device check (reduced, CPU)", "## Tests", "## Comparison on tiny", "## Single-user request latency"):
        assert heading in md
    assert "| LightGCN | l2unrank | ok |" in md


def test_scale_refuses_cuda_without_a_gpu_and_a_size_too_large(tmp_path):
    """One line each, nothing generated: ``--device cuda`` where torch sees no GPU (the test
    environment hides any), and a synthetic size whose generation cannot fit in memory."""
    before = sorted(p.name for p in (REPO_ROOT / "dataset").iterdir())
    proc = _run("scale.py", "--device", "cuda", "--sizes", "0.1M", "--out", tmp_path, "--work", tmp_path)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        "scale: --device=cuda: torch sees no CUDA device here; use --device cpu (or auto)"]
    proc = _run("scale.py", "--device", "cpu", "--sizes", "1000000M", "--no-ml100k", "--parts", "latency",
                "--out", tmp_path, "--work", tmp_path)
    assert proc.returncode != 0
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("scale: --sizes 1e+06M=") and "GiB is available" in err[0], err
    assert sorted(p.name for p in (REPO_ROOT / "dataset").iterdir()) == before


def test_report_renders_failures_skips_and_gpu_figures(tmp_path):
    """The branches a CPU run does not reach: a GPU's figures, a part out of time, a size
    skipped by its estimate, failed tests; every one is written, none is dropped."""
    from gpu_check import write

    t = {"rc": 1, "timed_out": False, "wall_s": 12.0, "limit_s": 90, "passed": 9, "failed": 1, "error": 0,
         "skipped": 0, "xfail": 0, "xpass": 0, "failed_names": ["tests/test_x.py::test_y"], "status": "failures",
         "tail": "E   assert 1 == 2"}
    rec = {
        "command": "python benchmarks/gpu_check.py", "when": "2026-12-04 19:00 UTC", "commit": "abc1234",
        "reduced": False, "device": "cuda", "budget_s": 470, "wall_s": 465.0, "load_start": [1.0], "load_end": [9.0],
        "versions": {"python": "3.12.3", "torch": "2.11.0", "numpy": "2.5.2", "pandas": "2.3.3", "recbole": "1.2.1",
                     "cuda_runtime": "13.0", "device_name": "NVIDIA H200", "device_memory_gib": 139.8,
                     "driver": "580.159.03", "cpus": 16},
        "parts": {
            "tests": {"cuda": t, "fast": {**t, "status": "timed out", "timed_out": True, "rc": None}},
            "compare": {"dataset": "ml-100k", "epochs": 10, "methods": ["l2unrank"],
                        "skipped_methods": ["l2unrank_twosided"], "limit_s": 150, "models": {
                            "WMF": {"status": "ok", "speedup": {"l2unrank": 250.0}, "rows": [
                                {"method": "l2unrank", "status": "ok", "time_s": 0.012,
                                 "test": {"ndcg@10": 0.41}, "forget": {"forget_hit@10": 0.02}},
                                {"method": "retrain", "status": "ok", "time_s": 3.0,
                                 "test": {"ndcg@10": 0.42}, "forget": {"forget_hit@10": 0.03}}]},
                            "NeuMF": {"status": "timed out", "wall_s": 150.0, "tail": "killed"}}},
            "latency": {"users": 10, "limit_s": 250, "sizes": {
                "1M": {"status": "ok", "interactions": 1000159, "load_s": 20.5, "models": {
                    "LightGCN": {"median_s": 0.0123, "p90_s": 0.015, "cuda_peak_bytes": 300 * 2**20,
                                 "graph_prep_s": 0.4}}},
                "20M": {"status": "skipped: estimated 900 s (4.2 x the 5M run) > 120 s left"}}},
        },
    }
    md_path, json_path = write(rec, str(tmp_path))
    md = (tmp_path / "gpu.md").read_text(encoding="utf-8")
    assert md_path == str(tmp_path / "gpu.md")
    assert "**NVIDIA H200** (139.8 GiB, driver 580.159.03)" in md
    assert "| `-m cuda` | failures | 9 | 1 |" in md and "`tests/test_x.py::test_y`" in md
    assert "| fast suite (`-m 'not slow and not cuda'`, CPU) | timed out |" in md
    assert "Not in the method registry, skipped: l2unrank_twosided." in md
    assert "| WMF | l2unrank | ok | 0.012 | 250x | 0.4100 | 0.0200 |" in md
    assert "| NeuMF | - | timed out |" in md and "killed" in md
    assert "| 1M (1,000,159) | LightGCN | ok | 0.0123 | 0.0150 | 300 | 0.400 | 20.5 |" in md
    assert "| 20M | - | skipped: estimated 900 s" in md
    assert "Output of comparison, NeuMF (last lines)" in md and "Output of cuda tests (last lines)" in md
    assert json.loads((tmp_path / "gpu.json").read_text(encoding="utf-8"))["parts"]["latency"]["users"] == 10
    assert json_path == str(tmp_path / "gpu.json")
