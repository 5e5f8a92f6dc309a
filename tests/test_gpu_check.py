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
