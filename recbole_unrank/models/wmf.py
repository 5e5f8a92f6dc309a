"""WMF: weighted matrix factorization for implicit feedback (Hu, Koren & Volinsky, ICDM 2008).

Loss over *all* user x item entries, with confidence ``c_ui = 1 + alpha`` on observed entries
(preference ``r_ui = 1``) and ``c_ui = w0`` on unobserved ones (``r_ui = 0``)::

    L = sum_{u,i} c_ui (r_ui - p_u . q_i)^2  + reg

The sum over unobserved entries is never materialised. With ``G = Q^T Q`` (dim x dim)::

    sum_{u,i} w0 y_ui^2 = w0 * sum_u p_u^T G p_u

so ``L = sum_u w0 p_u^T G p_u + sum_{(u,i) observed} [(1+alpha)(1-y_ui)^2 - w0 y_ui^2]``.
A training batch holds observed interactions; the per-user term of user ``u`` is split over
its ``deg(u)`` interactions (weight ``1/deg(u)`` each), so one epoch sums to exactly ``L``.
Memory is O((users + items) x dim).
"""

from __future__ import annotations

import torch
from recbole.model.abstract_recommender import GeneralRecommender
from recbole.model.init import xavier_normal_initialization
from recbole.utils import InputType
from torch import nn

__all__ = ["WMF"]


class WMF(GeneralRecommender):
    r"""Weighted matrix factorization trained with the whole-data (all-entries) loss."""

    input_type = InputType.POINTWISE

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.embedding_size = config["embedding_size"]
        self.alpha = float(config["alpha"])
        self.negative_weight = float(config["negative_weight"])
        self.reg_weight = float(config["reg_weight"])

        self.user_embedding = nn.Embedding(self.n_users, self.embedding_size)
        self.item_embedding = nn.Embedding(self.n_items, self.embedding_size)
        degree = torch.bincount(
            dataset.inter_feat[self.USER_ID].long(), minlength=self.n_users
        ).float()
        # A buffer, not a parameter: the per-user share of the whole-data term.
        self.register_buffer("user_degree", degree.clamp(min=1.0), persistent=False)
        self.apply(xavier_normal_initialization)

    def forward(self, user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        return (self.user_embedding(user) * self.item_embedding(item)).sum(dim=-1)

    def whole_data_loss(self, user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        """Un-normalised WMF loss of a batch of observed ``(user, item)`` pairs (shape [B])."""
        p = self.user_embedding(user)  # [B, d]
        q = self.item_embedding(item)  # [B, d]
        y = (p * q).sum(-1)
        gram = self.item_embedding.weight.T @ self.item_embedding.weight  # [d, d]
        all_items = ((p @ gram) * p).sum(-1) / self.user_degree[user]  # share of p_u^T G p_u
        observed = (1.0 + self.alpha) * (1.0 - y) ** 2 - self.negative_weight * y**2
        return (self.negative_weight * all_items + observed).sum()

    def calculate_loss(self, interaction):
        user = interaction[self.USER_ID]
        item = interaction[self.ITEM_ID]
        loss = self.whole_data_loss(user, item)
        reg = self.user_embedding(user).pow(2).sum() + self.item_embedding(item).pow(2).sum()
        return (loss + self.reg_weight * reg) / user.numel()

    def predict(self, interaction):
        return self.forward(interaction[self.USER_ID], interaction[self.ITEM_ID])

    def full_sort_predict(self, interaction):
        user_e = self.user_embedding(interaction[self.USER_ID])
        return (user_e @ self.item_embedding.weight.T).view(-1)
