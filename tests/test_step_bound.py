"""The step search's move bound (``unrank_step_max_move``, methods/calibration.py): beyond the
floor, a request user's block moves at most that many times its own norm; a user with no
retained train row is not bounded (their block goes to the retained optimum, as retraining
leaves them cold); 0 switches the bound off.

On tiny WMF with the floor at 0 (so the search alone sets the step) and a bound of 0.05.
"""

from __future__ import annotations

from pathlib import Path

import torch
from conftest import prepared_run

BOUND = 0.05


def _request_users(run):
    ds = run.data.train_ds
    u = ds.inter_feat[ds.uid_field]
    return torch.unique(u[torch.as_tensor(run.request.index)])


def test_the_bound_holds_each_partly_forgotten_users_move_and_acts(tmp_path):
    run = prepared_run(Path(tmp_path), "WMF", epochs=3, unrank_step_floor=0.0)
    bounded = run.run_method("l2unrank", overrides={"unrank_step_max_move": BOUND}, save=False, evaluate_test=False)
    free = run.run_method("l2unrank", overrides={"unrank_step_max_move": 0.0}, save=False, evaluate_test=False,
                          label="free")
    users = _request_users(run)
    p0 = run.original.user_embedding.weight.detach()[users]
    own = p0.norm(dim=1)
    moved = (bounded["_model"].user_embedding.weight.detach()[users] - p0).norm(dim=1)
    moved_free = (free["_model"].user_embedding.weight.detach()[users] - p0).norm(dim=1)
    # float32 parameters: the move is bounded up to the rounding of theta + scale * delta
    assert bool((moved <= BOUND * own * (1 + 1e-4) + 1e-6).all()), (moved / own).tolist()
    # the bound acts: without it some user moves farther, and the search reports who it lowered
    assert bool((moved_free > BOUND * own * 1.01).any())
    assert bounded["calibration"]["users_move_bounded"] > 0
    assert free["calibration"]["users_move_bounded"] == 0


def test_a_user_with_no_retained_row_is_not_bounded(tmp_path):
    run = prepared_run(Path(tmp_path), "WMF", epochs=3, unrank_step_floor=0.0, unrank_request="user",
                       unrank_user_ratio=0.1)
    bounded = run.run_method("l2unrank", overrides={"unrank_step_max_move": BOUND}, save=False, evaluate_test=False)
    free = run.run_method("l2unrank", overrides={"unrank_step_max_move": 0.0}, save=False, evaluate_test=False,
                          label="free")
    assert bounded["calibration"]["users_move_bounded"] == 0
    a, b = bounded["_model"].state_dict(), free["_model"].state_dict()
    for k in a:
        if torch.is_floating_point(a[k]):
            torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-7)
    # and some whole user did move farther than the bound would allow a partly forgotten one
    users = _request_users(run)
    p0 = run.original.user_embedding.weight.detach()[users]
    moved = (b["user_embedding.weight"][users] - p0).norm(dim=1)
    assert bool((moved > BOUND * p0.norm(dim=1)).any())
