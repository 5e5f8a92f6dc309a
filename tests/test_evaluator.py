"""The evaluator on its own (recbole_unrank.evaluator): one entry, evaluate(model, ..., split),
gives the rows the pipeline writes, without the orchestration around it."""

from __future__ import annotations

import pytest
from conftest import prepared_run

from recbole_unrank.evaluator import Evaluator


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return prepared_run(tmp_path_factory.mktemp("evaluator"))


def test_evaluator_alone_gives_the_pipeline_rows(run):
    ev = Evaluator(run.config, run.data, run.request, run.retain_ds, run.forget_ds)
    ev.open()
    row, ranks = ev.evaluate(run.original, "original", 0.0)
    assert list(row) == ["method", "time_s", "test", "forget", "request_users", "fairness", "_probe"]
    assert row["test"] == run.rows[0]["test"]  # what the run wrote for its original
    assert row["request_users"] == run.rows[0]["request_users"]
    assert row["fairness"] == {"active_ndcg@10_delta": 0.0, "inactive_ndcg@10_delta": 0.0}
    assert "rdr" not in row["forget"]  # no reference yet: nothing to compare with
    assert (ranks["ranks"] == run.reference["ranks"]).all()

    ev.reference = ranks
    valid, _ = ev.evaluate(run.original, "again", 1.5, {"note": 1}, split="valid")
    assert list(valid) == ["method", "time_s", "valid", "forget", "note"]
    assert valid["forget"]["rdr"] == pytest.approx(0.0)  # the original against itself
    assert valid["valid"]["ndcg@10"] == pytest.approx(ev.valid_score(run.original))
    ev.rows = [row]
    ev.finish()
    assert "_probe" not in row and "score_auc" in row["audit"]


def test_evaluate_refuses_an_unknown_split(run):
    with pytest.raises(ValueError, match="split"):
        run.evaluate(run.original, "original", 0.0, split="train")
