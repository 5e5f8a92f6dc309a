"""The step search's row cache (methods/calibration.py ``_RowCache``): a request user's scores
are computed once per scale the search tries for that user, and the search chooses exactly what
it chose when every measure scored every request user.

On tiny, for WMF and NeuMF (models whose user step moves no other user): ``l2unrank`` with the
cache and with it switched off apply the same per-user scales and the same model, while the
cached search scores fewer user rows than it makes measures x request users.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import prepared_run

from recbole_unrank.methods import calibration


@pytest.mark.parametrize("model", ["WMF", "NeuMF"])
def test_cache_changes_no_choice_and_scores_fewer_rows(model, tmp_path, monkeypatch):
    # floor 0: the search runs its whole bisection (at the default floor tiny's users stop there)
    run = prepared_run(Path(tmp_path), model, epochs=3, unrank_step_floor=0.0)
    cached = run.run_method("l2unrank", save=False, evaluate_test=False)
    cal = cached["calibration"]
    users = cal["request_users"]
    assert cal["measures"] >= 3
    # a repeated scale vector is scored once, and a user's row once per scale of that user
    assert cal["scored_measures"] < cal["measures"]
    assert cal["user_scorings"] <= cal["scored_measures"] * users

    init = calibration._RowCache.__init__

    def off(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.on = False

    monkeypatch.setattr(calibration._RowCache, "__init__", off)
    plain = run.run_method("l2unrank", save=False, evaluate_test=False)
    assert plain["calibration"]["user_scorings"] == plain["calibration"]["scored_measures"] * users
    assert cal["user_scorings"] <= plain["calibration"]["user_scorings"]
    for key in ("step_median", "step_min", "step_cap", "users_met", "users_not_reached", "users_capped"):
        assert cached["calibration"][key] == plain["calibration"][key], key
    a, b = cached["_model"].state_dict(), plain["_model"].state_dict()
    for k in a:
        if torch.is_floating_point(a[k]):
            # scores of a subset of users come from the same per-row arithmetic; the applied
            # scales are equal (above), so the parameters agree to float32 rounding
            torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-7)
