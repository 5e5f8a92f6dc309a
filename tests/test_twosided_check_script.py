"""benchmarks/twosided_check.py on tiny: issue 22's task names draw their requests, a rerun skips
finished cells, a failing method is a row that says so, a bad name is refused before anything runs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO_ROOT, subprocess_env

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
import twosided_check  # noqa: E402 (after the sys.path line)

SCRIPT = str(REPO_ROOT / "benchmarks" / "twosided_check.py")


def _run(tmp_path, *args):
    cmd = [sys.executable, SCRIPT, "--dataset", "tiny", "--epochs", "1", "--models", "WMF", "--seed", "1001",
           "--work", str(tmp_path / "work"), "--out", str(tmp_path / "res"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), cwd=REPO_ROOT, timeout=300)


def test_new_tasks_and_resume(tmp_path):
    p = _run(tmp_path, "--tasks", "interaction-0.4,user-core", "--methods", "retrain,l2unrank_twosided")
    assert p.returncode == 0, p.stderr[-2000:]
    res = json.loads((tmp_path / "res.json").read_text())["results"]
    assert [r["task"] for r in res] == ["interaction-0.4", "user-core"]
    assert res[0]["request"]["source"] == "interaction" and res[1]["request"]["source"] == "user"
    row = res[0]["methods"]["l2unrank_twosided"]
    assert 0.0 <= row["over_unlearned"] <= 1.0  # read off the row's audit
    assert "Issue 22's targets" in (tmp_path / "res.md").read_text()
    cells = sorted(p.name for p in (tmp_path / "work").glob("tiny-*.json"))
    assert len(cells) == 2
    again = _run(tmp_path, "--tasks", "interaction-0.4,user-core", "--methods", "retrain,l2unrank_twosided")
    assert again.returncode == 0
    assert "unlearning" not in again.stderr + again.stdout  # every cell kept, no method run
    assert json.loads((tmp_path / "res.json").read_text())["results"] == res


def test_task_settings_keep_old_meanings():
    assert twosided_check.TASKS["interaction"]["unrank_inter_ratio"] == 0.2
    assert "unrank_request_users" not in twosided_check.TASKS["user"]  # random, as before
    assert twosided_check.TASKS["user-edge"]["unrank_request_users"] == "edge"


@pytest.mark.parametrize("args, says", [
    (["--tasks", "user-middle"], "unknown task"),
    (["--methods", "retrain,nosuch"], "unknown method"),
    (["--variant", "v=l2unrank_twosided:unrank_nosuch=1"], "does not take"),
])
def test_refusals(tmp_path, args, says):
    p = _run(tmp_path, *args)
    assert p.returncode == 2 and says in p.stderr
    assert not (tmp_path / "res.json").exists() and not (tmp_path / "work").exists()


def test_failing_method_is_a_row(tmp_path, monkeypatch):
    from recbole_unrank import pipeline
    from recbole_unrank.methods import METHODS

    class Boom(METHODS["l2unrank"]):
        def __call__(self, task):
            raise RuntimeError("boom")

    monkeypatch.setitem(pipeline.METHODS, "l2unrank", Boom)
    res = twosided_check.run_cell("tiny", "WMF", "interaction-0.1", 1001, {"epochs": 1},
                                  ["retrain", "l2unrank", "l2unrank_twosided"], str(tmp_path))
    assert res["methods"]["l2unrank"] == {"error": "RuntimeError: boom"}
    assert "forget_hit@10" in res["methods"]["l2unrank_twosided"]  # the other methods went on
    assert "failed: RuntimeError: boom" in twosided_check.report([res])
