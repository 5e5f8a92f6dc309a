"""Adapters for factor models: dot-product MF (WMF, BPR) and NeuMF."""

from __future__ import annotations

import torch
from torch import nn

from recbole_unrank.adapters.base import AdapterError, ModelAdapter, TrainingLoss
from recbole_unrank.models.neumf_scoring import neumf_item_parts, neumf_logits_all_items

__all__ = ["DotProductAdapter", "NeuMFAdapter"]


class DotProductAdapter(ModelAdapter):
    """``y_ui = p_u . q_i`` with ``user_embedding`` / ``item_embedding`` (WMF, BPR, ...)."""

    supports_user_blocks = True
    dot_product = True
    user_rows_piecewise_linear = True  # y_ui = p_u . q_i

    def __init__(self, model: nn.Module, pairwise: bool):
        super().__init__(model)
        for name in ("user_embedding", "item_embedding"):
            if not isinstance(getattr(model, name, None), nn.Embedding):
                raise AdapterError(f"{type(model).__name__} has no nn.Embedding '{name}'")
        self.pairwise = pairwise
        self.P = model.user_embedding.weight
        self.Q = model.item_embedding.weight

    def pair_scores(self, users, items):
        return (self.P[users] * self.Q[items]).sum(-1)

    @torch.no_grad()
    def final_embeddings(self):
        return self.P.detach(), self.Q.detach()

    @torch.no_grad()
    def user_scores(self, users):
        return self.P[users] @ self.Q.T

    def use_training_data(self, users, items) -> None:
        """WMF splits its whole-data term over each user's interactions by the user's degree
        (``user_degree``): recounted on these pairs, one epoch over them sums to WMF's loss on
        them."""
        degree = getattr(self.model, "user_degree", None)
        if isinstance(degree, torch.Tensor):
            self.model.user_degree = torch.bincount(users, minlength=degree.numel()).to(degree).clamp(min=1.0)
        super().use_training_data(users, items)

    def user_dim(self) -> int:
        return self.P.shape[1]

    def user_tables(self):
        return [self.P]

    def reg_tables(self):
        return self.P, self.Q

    def gram(self):
        return self.Q.T @ self.Q

    def training_loss(self, users, items, batch_size):
        m = self.model
        if type(m).__name__ == "WMF":
            # WMF.calculate_loss is the whole-data loss with reg_weight * (|p_u|^2 + |q_i|^2) per
            # row, divided by the batch size: summed over an epoch it is exactly this.
            return TrainingLoss("wmf", alpha=float(m.alpha), w0=float(m.negative_weight),
                                reg_user=float(m.reg_weight), reg_item=float(m.reg_weight),
                                note="WMF whole-data squared loss + L2 per row, summed")
        if type(m).__name__ == "BPR":  # RecBole's BPR: BPRLoss only, no L2 term
            return TrainingLoss("logsig", pairwise=True, note="BPR loss, summed")
        return super().training_loss(users, items, batch_size)

    @torch.no_grad()
    def user_block_jacobian(self, users, items):
        return self.Q[items].detach()

    supports_item_blocks = True

    def item_tables(self):
        return [self.Q]

    @torch.no_grad()
    def item_block_jacobian(self, users, items):
        return self.P[users].detach()

    @torch.no_grad()
    def prepare_user_delta(self, users, delta, others=None):
        # Scores are linear in the step: s(eta) = S0 + eta * (delta Q^T).
        return self.P[users] @ self.Q.T, delta @ self.Q.T

    @torch.no_grad()
    def scores_with_delta(self, users, prepared, scale):
        base, slope = prepared
        return base + scale[:, None] * slope

    @torch.no_grad()
    def apply_user_delta(self, users, delta):
        self.P.index_add_(0, users, delta.to(self.P.dtype))
        self.invalidate()


class NeuMFAdapter(ModelAdapter):
    """RecBole's NeuMF: GMF (``user_mf_embedding``) + MLP (``user_mlp_embedding``) heads.
    A user's block is ``theta_u = [p_u^mf ; p_u^mlp]``; scores are logits (ranking-equivalent
    to ``predict``'s sigmoid)."""

    supports_user_blocks = True
    pairwise = False

    def __init__(self, model: nn.Module):
        super().__init__(model)
        if not (model.mf_train and model.mlp_train):
            raise AdapterError("NeuMF with mf_train or mlp_train off is not supported by the NeuMF adapter")
        self.d_mf = model.user_mf_embedding.weight.shape[1]
        self.d_mlp = model.user_mlp_embedding.weight.shape[1]
        # GMF is linear in p_u^mf; the MLP tower is piecewise linear in p_u^mlp when every layer
        # is linear, ReLU or dropout (RecBole's default activation)
        leaves = [mod for mod in model.mlp_layers.modules() if not list(mod.children())]
        self.user_rows_piecewise_linear = all(isinstance(mod, (nn.Linear, nn.ReLU, nn.Dropout, nn.Identity))
                                              for mod in leaves)

    def _logits(self, u_mf, u_mlp, items):
        m = self.model
        mf = u_mf * m.item_mf_embedding(items)
        mlp = m.mlp_layers(torch.cat((u_mlp, m.item_mlp_embedding(items)), -1))
        return m.predict_layer(torch.cat((mf, mlp), -1)).squeeze(-1)

    def pair_scores(self, users, items):
        m = self.model
        return self._logits(m.user_mf_embedding(users), m.user_mlp_embedding(users), items)

    @torch.no_grad()
    def final_embeddings(self):
        m = self.model
        u = torch.cat((m.user_mf_embedding.weight, m.user_mlp_embedding.weight), -1)
        i = torch.cat((m.item_mf_embedding.weight, m.item_mlp_embedding.weight), -1)
        return u.detach(), i.detach()

    def user_dim(self) -> int:
        return self.d_mf + self.d_mlp

    def user_tables(self):
        m = self.model
        return [m.user_mf_embedding.weight, m.user_mlp_embedding.weight]

    def training_loss(self, users, items, batch_size):
        # RecBole's NeuMF: BCEWithLogits on each positive (label 1) and its sampled negative
        # (label 0), mean over the batch; no L2 term (weight_decay is an optimizer setting).
        return TrainingLoss("logsig", negatives=True,
                            note="NeuMF BCE with one sampled negative per row, summed")

    def user_block_jacobian(self, users, items):
        # Each pair gets its own leaf copy of theta_u, so one backward gives per-pair gradients.
        m = self.model
        theta = torch.cat((m.user_mf_embedding(users), m.user_mlp_embedding(users)), -1).detach()
        theta.requires_grad_(True)
        with torch.enable_grad():
            y = self._logits(theta[:, : self.d_mf], theta[:, self.d_mf :], items)
            (jac,) = torch.autograd.grad(y.sum(), theta)
        return jac.detach()

    supports_item_blocks = True

    def item_tables(self):
        m = self.model
        return [m.item_mf_embedding.weight, m.item_mlp_embedding.weight]

    def init_std(self, table):
        return 0.01  # NeuMF._init_weights: normal_(std=0.01) on every embedding

    def item_block_jacobian(self, users, items):
        # theta_i = [q_i^mf ; q_i^mlp]; a leaf copy per pair gives per-pair gradients in one backward.
        m = self.model
        theta = torch.cat((m.item_mf_embedding(items), m.item_mlp_embedding(items)), -1).detach()
        theta.requires_grad_(True)
        d_mf = m.item_mf_embedding.weight.shape[1]
        with torch.enable_grad():
            u_mf, u_mlp = m.user_mf_embedding(users).detach(), m.user_mlp_embedding(users).detach()
            mf = u_mf * theta[:, :d_mf]
            mlp = m.mlp_layers(torch.cat((u_mlp, theta[:, d_mf:]), -1))
            y = m.predict_layer(torch.cat((mf, mlp), -1)).squeeze(-1)
            (jac,) = torch.autograd.grad(y.sum(), theta)
        return jac.detach()

    @torch.no_grad()
    def _scores_for(self, theta: torch.Tensor, budget: int | None = None) -> torch.Tensor:
        """Logits of users (rows of ``theta`` [U, d_mf + d_mlp]) over all items, [U, n_items]."""
        return neumf_logits_all_items(self.model, theta[:, : self.d_mf], theta[:, self.d_mf :], budget)

    @torch.no_grad()
    def user_scores(self, users):
        m = self.model
        theta = torch.cat((m.user_mf_embedding(users), m.user_mlp_embedding(users)), -1)
        return self._scores_for(theta)

    @torch.no_grad()
    def prepare_user_delta(self, users, delta, others=None):
        # The step moves the users' rows only: the items' part of every layer is computed
        # once here, not at each of the search's scorings.
        m = self.model
        theta = torch.cat((m.user_mf_embedding(users), m.user_mlp_embedding(users)), -1)
        return theta, delta, neumf_item_parts(m)

    @torch.no_grad()
    def scores_with_delta(self, users, prepared, scale):
        theta, delta, parts = prepared
        moved = theta + scale[:, None] * delta
        return neumf_logits_all_items(self.model, moved[:, : self.d_mf], moved[:, self.d_mf :], parts=parts)

    @torch.no_grad()
    def apply_user_delta(self, users, delta):
        m = self.model
        m.user_mf_embedding.weight.index_add_(0, users, delta[:, : self.d_mf])
        m.user_mlp_embedding.weight.index_add_(0, users, delta[:, self.d_mf :])
        self.invalidate()
