"""``l2unrank_released``: the L2UnRank procedure as its authors' code releases it (issue 22, item 4).

The paper's L2UnRank is ``l2unrank_paper`` (DESIGN.md section 3). The authors' public code
(github.com/Juniper42/L2UnRank, ``unlearning_func/L2UnRank.py``, read at commit 6bccd22) runs a
different influence step and then a repair; this method is that procedure on this project's
models, so the table has the row the paper's utility may come from.

**Influence step, as released** (``released_influence_step``):

* ``g``: the gradient, over every trainable parameter, of the *mean* BPR loss
  ``-log sigmoid(y_ui - y_uj)`` of the forgotten pairs, one uniformly drawn negative ``j`` per
  pair (no scope, no weights, no context rows, no L2 term);
* ``H``: the exact Hessian (double backward) of the mean BPR loss over *all retained* pairs,
  one drawn negative per pair, drawn once (the release builds the gradient graph once and
  reuses it in every Hessian-vector product);
* ``x``: ``unrank_released_cg_steps`` (the release: 10) plain conjugate-gradient steps on
  ``H x = g`` from 0, no damping, through negative curvature, stopping early only when
  ``||r|| < 1e-10``;
* the update ``theta <- theta - x`` (the release's ``p.sub_(change)``).

Two things follow from the release and are kept, not fixed: the losses are means, so ``x`` is
about ``|D \\ D_t| / |D_t|`` times the sum-form influence step; and the sign is the opposite of
the removal estimate's (``theta + H_ret^-1 grad L(D_t)``): where ``H`` is positive definite,
``theta - H^-1 g`` is a Newton step that *lowers* the forgotten pairs' loss. The repair then
has to do the forgetting.

**Repair**: ``unrank_released_repair_epochs`` (the release: 5) epochs of the model's own
training loss on the retained data at ``unrank_released_repair_lr_scale`` (the release: 0.1)
times the run's ``learning_rate``, through :class:`~recbole_unrank.methods.finetune.FineTune`
(Adam; the release uses AdamW with its weight decay). For non-graph backbones the release's
repair reads ``data.train_ratings``, which it does not update, so there it fine-tunes on the
forgotten pairs as well; this row fine-tunes on the retained data, as the release's docstring
says it does.

Adaptation: the release takes BPR on its models' embedding dot products (its NeuMF's
``get_embeddings``); here the scores are the model's own (``pair_scores``: dot products for WMF,
BPR and LightGCN, NeuMF's logits). A graph model takes the step on the train graph it was
trained on (the release's ``train_edge_index``) and is repaired on the retained graph.
"""

from __future__ import annotations

import math
import time
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from recbole_unrank.adapters import AdapterError, ModelAdapter, get_adapter
from recbole_unrank.errors import UnrankError
from recbole_unrank.methods.base import UnlearningMethod, UnlearnResult, UnlearnTask, request_rows
from recbole_unrank.methods.finetune import FineTune

__all__ = ["RELEASED_SETTINGS", "Released", "released_influence_step"]

RELEASED_SETTINGS = {
    "cg_steps": "unrank_released_cg_steps",
    "repair_epochs": "unrank_released_repair_epochs",
    "repair_lr_scale": "unrank_released_repair_lr_scale",
}


def _mean_bpr(adapter: ModelAdapter, users: Tensor, items: Tensor, neg: Tensor) -> Tensor:
    return -F.logsigmoid(adapter.pair_scores(users, items) - adapter.pair_scores(users, neg)).mean()


def released_influence_step(adapter: ModelAdapter, users: Tensor, items: Tensor, keep: Tensor, neg_forget: Tensor,
                            neg_retain: Tensor, cg_steps: int) -> tuple[list[Tensor], dict[str, Any]]:
    """``x`` of the released step (module docstring), one tensor per trainable parameter, and
    what the solve did. ``keep``: bool [N], the retained rows; ``neg_forget`` / ``neg_retain``:
    one negative per forgotten / retained row. The caller applies ``theta <- theta - x``."""
    params = [p for p in adapter.params() if p.requires_grad]
    forget = ~keep
    with torch.enable_grad():
        g = torch.autograd.grad(_mean_bpr(adapter, users[forget], items[forget], neg_forget), params,
                                allow_unused=True)
        g = [torch.zeros_like(p) if gi is None else gi.detach() for p, gi in zip(params, g)]
        loss_r = _mean_bpr(adapter, users[keep], items[keep], neg_retain)
        grads_r = torch.autograd.grad(loss_r, params, create_graph=True, allow_unused=True)
        grads_r = [torch.zeros_like(p) if gi is None else gi for p, gi in zip(params, grads_r)]
        live = [k for k, gi in enumerate(grads_r) if gi.requires_grad]

        def hvp(v: list[Tensor]) -> list[Tensor]:
            dot = sum((grads_r[k] * v[k]).sum() for k in live)
            out = torch.autograd.grad(dot, params, retain_graph=True, allow_unused=True) if live else [None] * len(v)
            return [torch.zeros_like(p) if h is None else h.detach() for p, h in zip(params, out)]

        def inner(a: list[Tensor], b: list[Tensor]) -> Tensor:
            return sum((ai * bi).sum() for ai, bi in zip(a, b))

        x = [torch.zeros_like(p) for p in params]
        r = [gi.clone() for gi in g]
        p = [gi.clone() for gi in g]
        rs_old = inner(r, r)
        r0 = math.sqrt(float(rs_old))
        iters, negative_curvature = 0, False
        for _ in range(int(cg_steps)):
            Ap = hvp(p)
            pAp = inner(p, Ap)
            negative_curvature |= bool(pAp <= 0)
            alpha = rs_old / pAp
            x = [xi + alpha * pi for xi, pi in zip(x, p)]
            r = [ri - alpha * api for ri, api in zip(r, Ap)]
            iters += 1
            rs_new = inner(r, r)
            if math.sqrt(float(rs_new)) < 1e-10:
                break
            p = [ri + (rs_new / rs_old) * pi for ri, pi in zip(r, p)]
            rs_old = rs_new
    rel = math.sqrt(float(inner(r, r))) / r0 if r0 > 0 else 0.0
    info = {"method": "cg_fixed", "iters": iters, "rel_residual": rel, "negative_curvature": negative_curvature,
            "grad_norm": r0, "step_norm": math.sqrt(float(inner(x, x)))}
    return [xi.detach() for xi in x], info


class Released(UnlearningMethod):
    """The authors' released L2UnRank: its influence step, then its repair (module docstring)."""

    name = "l2unrank_released"
    settings: ClassVar[dict[str, str]] = dict(RELEASED_SETTINGS)

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        s = dict(self.kwargs)
        for key, least in (("cg_steps", 1), ("repair_epochs", 0)):
            v = s[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v != int(v) \
                    or int(v) < least:
                raise UnrankError(f"{self.settings[key]}={v!r} is not a whole number >= {least}")
            s[key] = int(v)
        v = s["repair_lr_scale"]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not v > 0:
            raise UnrankError(f"unrank_released_repair_lr_scale={v!r} must be a number > 0 (the release: 0.1)")
        if s["repair_epochs"] == 0 and "repair_lr_scale" in self.given_kwargs:
            raise UnrankError(f"unrank_released_repair_lr_scale={v} has no effect with "
                              "unrank_released_repair_epochs=0: unset it")
        s["repair_lr_scale"] = float(v)
        self.s = s

    def unlearn(self, task: UnlearnTask) -> UnlearnResult:
        s, name = self.s, self.name
        try:
            adapter = get_adapter(task.model)
        except AdapterError as exc:
            raise UnrankError(f"{task.model_name} cannot be unlearned by {name}: {exc}") from None
        if s["repair_epochs"] > 0 and task.learning_rate is None:
            raise UnrankError(f"{name}: the run's learning_rate is not known, so the repair's rate "
                              "(unrank_released_repair_lr_scale x learning_rate) cannot be set")
        task.model.eval()  # NeuMF's dropout off during the influence step
        device = adapter.device
        stages: dict[str, float] = {}
        t0 = time.perf_counter()
        users, items, target, keep = request_rows(task.train_ds, task.request_index, device)
        if target.numel() == 0:
            raise UnrankError(f"{name}: the request holds no train interaction")
        gen = torch.Generator(device="cpu").manual_seed(int(task.seed))
        neg_f = torch.randint(1, adapter.n_items, (int((~keep).sum()),), generator=gen).to(device)
        neg_r = torch.randint(1, adapter.n_items, (int(keep.sum()),), generator=gen).to(device)
        with adapter.propagate_over(users, items):  # a graph model: the train graph it was trained on
            x, solve = released_influence_step(adapter, users, items, keep, neg_f, neg_r, s["cg_steps"])
        with torch.no_grad():
            for p, xi in zip([p for p in adapter.params() if p.requires_grad], x):
                p.sub_(xi.to(p.dtype))
        adapter.invalidate()
        stages["influence_s"] = time.perf_counter() - t0
        for p in task.model.parameters():
            if not torch.isfinite(p).all():
                raise UnrankError(f"{name}: the released influence step produced NaN/Inf (its CG has no damping "
                                  f"and met {'negative' if solve['negative_curvature'] else 'no negative'} "
                                  "curvature); the update is refused and nothing is saved")
        info: dict[str, Any] = {"solve": solve, "loss": "mean BPR, one drawn negative per row (as released)"}
        if s["repair_epochs"] > 0:
            t0 = time.perf_counter()
            lr = s["repair_lr_scale"] * float(task.learning_rate)
            repair = FineTune(epochs=s["repair_epochs"], lr=lr).unlearn(task)
            stages["repair_s"] = time.perf_counter() - t0
            info["repair"] = {"epochs": s["repair_epochs"], "lr": lr, **repair.info}
        return UnlearnResult(task.model, stages=stages, info=info)
