"""benchmarks/suite_targets.py: issue 22's targets table read from a suite's cells (a tiny suite
run here), evaluation seeds only, and the versus table's fallback reference."""

from __future__ import annotations

import json
import sys

import pytest
import yaml
from conftest import DATA_PATH, REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
import suite_targets  # noqa: E402 (after the sys.path line)
from twosided_targets import versus_table  # noqa: E402

from recbole_unrank import suite  # noqa: E402


def test_targets_from_a_suite_folder(tmp_path):
    spec = {"dataset": "tiny", "models": ["WMF"], "design_seeds": [101], "eval_seeds": [1001], "seeds": "all",
            "tasks": [{"task": "interaction", "ratios": [0.2]},
                      {"task": "user", "ratios": [0.1], "users": ["random", "core"]}],
            "methods": ["retrain", "l2unrank_twosided", "l2unrank"],
            "settings": {"data_path": str(DATA_PATH), "gpu_id": "", "epochs": 2, "show_progress": False},
            "output_dir": str(tmp_path / "out"), "cache_dir": str(tmp_path / "cache")}
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    suite.run_suite(suite.load_spec(str(path)), show_progress=False)
    records = suite_targets.load_records(str(tmp_path / "out"))
    # the design seed's requests are left out; one record per (model, task, evaluation seed)
    assert [(r["task"], r["seed"]) for r in records] == [("interaction-0.2", 1001), ("user", 1001),
                                                         ("user-core", 1001)]
    assert list(records[0]["methods"]) == ["retrain", "l2unrank_twosided", "l2unrank"]
    cell = json.loads(next((tmp_path / "out" / "cells").glob("*1001-l2unrank.json")).read_text())
    rec = next(r for r in records if r["task"] == suite_targets.task_label(cell["request"]))
    assert rec["methods"]["l2unrank"]["ndcg@10"] == cell["row"]["test"]["ndcg@10"]
    text = suite_targets.report(str(tmp_path / "out"))
    assert "| WMF | user-core | l2unrank_twosided |" in text and "| WMF | interaction-0.2 | l2unrank |" in text
    # the original (what doing nothing scores) heads each model x task, with no speed-up
    lines = [ln for ln in text.splitlines() if ln.startswith("| WMF | interaction-0.2 |")]
    assert "| original |" in lines[0] and "| n/a (no update) |" in lines[0]
    out = tmp_path / "targets.md"
    suite_targets.main([str(tmp_path / "out"), "--out", str(out)])
    assert out.read_text() == text
    # a document's block naming the folder is refilled with the same report, the rest kept
    folder = str(tmp_path / "out")
    doc = tmp_path / "doc.md"
    doc.write_text(f"# head\n<!-- suite-targets {folder} -->\nold\n<!-- /suite-targets -->\ntail\n")
    suite_targets.main([folder, "--doc", str(doc)])
    assert doc.read_text() == f"# head\n<!-- suite-targets {folder} -->\n{text.rstrip()}\n<!-- /suite-targets -->\ntail\n"
    with pytest.raises(SystemExit, match="no block"):
        suite_targets.fill_doc("no markers here", folder)


def test_versus_falls_back_to_l2unrank_where_the_two_sided_update_is_absent():
    row = {"forget_hit@10": 0.1, "ndcg@10": 0.2, "req_ndcg@10": 0.2, "mia_auc": 0.5, "over_unlearned": 0.0,
           "time_s": 0.01}
    rec = {"model": "LightGCN", "task": "item", "seed": 1001, "original": {**row, "mia_auc": 0.6},
           "methods": {"retrain": {**row, "time_s": 10.0}, "l2unrank": row, "finetune": {**row, "ndcg@10": 0.1}}}
    line = next(ln for ln in versus_table([rec]).splitlines() if "| finetune |" in ln)
    assert "| l2unrank | 5/6 vs 6/6 | - | test NDCG@10 |" in line


def test_the_results_doc_shows_the_committed_grid(monkeypatch):
    """docs/results.md's targets blocks are the reports of the committed cells, byte for byte
    (rebuild them with: python benchmarks/suite_targets.py FOLDER --doc docs/results.md)."""
    monkeypatch.chdir(REPO_ROOT)
    doc = (REPO_ROOT / "docs" / "results.md").read_text(encoding="utf-8")
    folders = sorted(set(suite_targets._BLOCK_FOLDERS.findall(doc)))
    assert folders, "docs/results.md has no suite-targets block"
    for folder in folders:
        assert suite_targets.fill_doc(doc, folder) == doc, f"{folder}: rerun suite_targets.py --doc docs/results.md"
