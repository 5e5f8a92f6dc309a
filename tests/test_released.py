"""``l2unrank_released`` (the authors' released L2UnRank procedure) against ground truth.

(a) the influence step equals a dense float64 replica of the release: the gradient of the mean
    BPR loss of the forgotten rows, the dense Hessian of the mean BPR loss of the retained rows,
    10 plain CG steps from 0 with no damping; the update is ``theta - x``;
(b) the repair is ``finetune`` on the retained data for ``unrank_released_repair_epochs`` epochs
    at ``unrank_released_repair_lr_scale`` x the run's learning rate, after the step;
(c) bad settings are refused with one line naming the key.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import prepared_run
from torch import nn

from recbole_unrank.adapters import get_adapter
from recbole_unrank.errors import UnrankError
from recbole_unrank.methods import METHODS
from recbole_unrank.methods.finetune import FineTune
from recbole_unrank.methods.released import released_influence_step

DT = torch.float64


class BPR(nn.Module):
    """What the dot-product adapter reads of RecBole's BPR (named so that get_adapter picks it)."""

    def __init__(self, n_users=6, n_items=8, d=3, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.n_users, self.n_items = n_users, n_items
        self.user_embedding = nn.Embedding(n_users, d).to(DT)
        self.item_embedding = nn.Embedding(n_items, d).to(DT)


class NeuMF(nn.Module):
    """What the NeuMF adapter reads of RecBole's NeuMF (smooth activation, float64)."""

    def __init__(self, n_users=6, n_items=8, d=2, hidden=3, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.n_users, self.n_items = n_users, n_items
        self.mf_train = self.mlp_train = True
        self.user_mf_embedding = nn.Embedding(n_users, d).to(DT)
        self.item_mf_embedding = nn.Embedding(n_items, d).to(DT)
        self.user_mlp_embedding = nn.Embedding(n_users, d).to(DT)
        self.item_mlp_embedding = nn.Embedding(n_items, d).to(DT)
        self.mlp_layers = nn.Sequential(nn.Linear(2 * d, hidden), nn.Tanh()).to(DT)
        self.predict_layer = nn.Linear(d + hidden, 1).to(DT)


def _rows(n_users=6, n_items=8, per_user=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    users = torch.arange(1, n_users).repeat_interleave(per_user)
    items = torch.cat([torch.randperm(n_items - 1, generator=g)[:per_user] + 1 for _ in range(1, n_users)])
    return users, items, g


def _dense_release(model, users, items, keep, neg_f, neg_r, steps):
    """The release's step, by dense linear algebra on the flattened parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    shapes = [p.shape for p in params]
    sizes = [p.numel() for p in params]
    flat0 = torch.cat([p.detach().reshape(-1) for p in params])

    names = ["m." + n for n, p in model.named_parameters() if p.requires_grad]
    scorer = _Scorer(model)

    def loss_at(flat, u, i, j):
        state = {n: c.view(s) for n, c, s in zip(names, torch.split(flat, sizes), shapes)}
        return torch.func.functional_call(scorer, state, (u, i, j))

    f_idx, r_idx = ~keep, keep
    g = torch.autograd.functional.jacobian(lambda t: loss_at(t, users[f_idx], items[f_idx], neg_f), flat0)
    H = torch.autograd.functional.hessian(lambda t: loss_at(t, users[r_idx], items[r_idx], neg_r), flat0)
    x = torch.zeros_like(g)
    r = g.clone()
    p = g.clone()
    rs = r @ r
    for _ in range(steps):
        Ap = H @ p
        alpha = rs / (p @ Ap)
        x = x + alpha * p
        r = r - alpha * Ap
        rs_new = r @ r
        if rs_new.sqrt() < 1e-10:
            break
        p = r + (rs_new / rs) * p
        rs = rs_new
    return x, flat0, H


class _Scorer(nn.Module):
    """Mean BPR of (u, i, j) through the adapter, as a module whose parameters are the model's."""

    def __init__(self, model):
        super().__init__()
        self.m = model

    def forward(self, u, i, j):
        a = get_adapter(self.m)
        return -F.logsigmoid(a.pair_scores(u, i) - a.pair_scores(u, j)).mean()


@pytest.mark.parametrize("cls", [BPR, NeuMF], ids=["BPR", "NeuMF"])
def test_influence_step_equals_dense_release(cls):
    model = cls()
    users, items, g = _rows()
    keep = torch.ones(users.numel(), dtype=torch.bool)
    keep[torch.tensor([0, 4, 7, 11])] = False
    neg_f = torch.randint(1, model.n_items, (int((~keep).sum()),), generator=g)
    neg_r = torch.randint(1, model.n_items, (int(keep.sum()),), generator=g)
    x_dense, flat0, H = _dense_release(model, users, items, keep, neg_f, neg_r, 10)
    # the mean-BPR Hessian here is not positive definite (no L2: scaling directions), as in the release
    x, info = released_influence_step(get_adapter(model), users, items, keep, neg_f, neg_r, 10)
    x_flat = torch.cat([xi.reshape(-1) for xi in x])
    assert info["iters"] == 10 and x_flat.abs().max() > 1e-3
    # float64 CG on the same operator: the two differ only by the order of additions; the
    # iterates amplify rounding by the operator's conditioning, so compare at 1e-6 relative
    torch.testing.assert_close(x_flat, x_dense, rtol=1e-6, atol=1e-9 * float(x_dense.abs().max()))


@pytest.fixture(scope="module")
def tiny_wmf(tmp_path_factory):
    return prepared_run(Path(tmp_path_factory.mktemp("released")), "WMF", epochs=3)


def _run(run, **settings):
    task = run._task()
    return METHODS["l2unrank_released"](**settings)(task)


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items() if torch.is_floating_point(v)}


def test_step_then_repair_is_finetune_at_a_tenth_of_the_rate(tiny_wmf):
    run = tiny_wmf
    step_only = _run(run, repair_epochs=0)
    full = _run(run)
    lr = float(run.config["learning_rate"])
    assert full.info["repair"]["lr"] == pytest.approx(0.1 * lr) and full.info["repair"]["epochs"] == 5
    # the step is applied with the release's sign, theta <- theta - x, x from the seeded negatives
    model = copy.deepcopy(run.original)
    adapter = get_adapter(model)
    feat = run.data.train_ds.inter_feat
    users, items = feat[run.data.train_ds.uid_field], feat[run.data.train_ds.iid_field]
    keep = torch.ones(users.numel(), dtype=torch.bool)
    keep[torch.as_tensor(run.request.index)] = False
    gen = torch.Generator().manual_seed(int(run.config["seed"]))
    neg_f = torch.randint(1, adapter.n_items, (int((~keep).sum()),), generator=gen)
    neg_r = torch.randint(1, adapter.n_items, (int(keep.sum()),), generator=gen)
    x, _ = released_influence_step(adapter, users, items, keep, neg_f, neg_r, 10)
    orig, stepped = _state(run.original), _state(step_only.model)
    for (name, p0), xi in zip([(n, p) for n, p in run.original.named_parameters() if p.requires_grad], x):
        # undamped CG on an indefinite system (the release's solve) amplifies float32 rounding:
        # with threaded BLAS the same step computed twice differs by up to ~1.5e-5 where the
        # step itself reaches the size printed on failure; a wrong sign or a missing term moves
        # the parameters by the step's own size, far above 1% of it
        torch.testing.assert_close(stepped[name], p0.detach() - xi, rtol=0.0,
                                   atol=0.01 * float(xi.abs().max()) + 1e-6,
                                   msg=lambda m, xi=xi: f"{m} (step max {float(xi.abs().max()):.3g})")
    assert any(not torch.allclose(orig[k], stepped[k]) for k in orig)
    # compose by hand: finetune at 0.1 x lr for 5 epochs on the stepped model
    task = run._task()
    task.model.load_state_dict(step_only.model.state_dict())
    by_hand = FineTune(epochs=5, lr=0.1 * lr).unlearn(task).model
    a, b = _state(full.model), _state(by_hand)
    for k in a:  # the same seeded loader and arithmetic on steps equal up to the rounding above
        moved = float((a[k] - stepped[k]).abs().max())  # what the repair itself moved
        torch.testing.assert_close(a[k], b[k], rtol=0.0, atol=0.01 * moved + 1e-4,
                                   msg=lambda m, moved=moved: f"{m} (repair moved up to {moved:.3g})")
    # and the repair changed what the step left
    assert any(not torch.allclose(a[k], stepped[k]) for k in a)


@pytest.mark.parametrize("bad,key", [
    ({"cg_steps": 0}, "unrank_released_cg_steps"),
    ({"cg_steps": 2.5}, "unrank_released_cg_steps"),
    ({"repair_epochs": -1}, "unrank_released_repair_epochs"),
    ({"repair_lr_scale": 0.0}, "unrank_released_repair_lr_scale"),
    ({"repair_lr_scale": float("inf")}, "unrank_released_repair_lr_scale"),
    ({"repair_epochs": 0, "repair_lr_scale": 0.5}, "unrank_released_repair_lr_scale=0.5 has no effect"),
])
def test_bad_settings_one_line(bad, key):
    with pytest.raises(UnrankError, match=key) as exc:
        METHODS["l2unrank_released"](**bad)
    assert "\n" not in str(exc.value)
