"""All-item scoring for RecBole's NeuMF, and the ``full_sort_predict`` it lacks.

RecBole 1.2.1's NeuMF has no ``full_sort_predict``: its trainer and our evaluator then repeat
each user over every item and run the whole network on each (user, item) pair. Most of that
work is the MLP's first layer, which splits into a user part and an item part; the item part
(with its bias) is computed once for all items. The output layer is linear, so the GMF head is
one matrix product. Scores equal ``predict``'s up to float rounding.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["neumf_item_parts", "neumf_logits_all_items", "neumf_full_sort_predict", "install_full_sort_predict"]


@torch.no_grad()
def neumf_item_parts(model: nn.Module) -> dict:
    """What :func:`neumf_logits_all_items` computes from the items alone (the same for every
    user and every step of a user): the GMF item rows times the output weights, the MLP's
    first layer's item part with its bias, and the layers after it. Valid while the item
    tables and the network's weights are unchanged (a user-block step changes neither)."""
    m = model
    d_mf = m.item_mf_embedding.weight.shape[1]
    w = m.predict_layer.weight.view(-1)
    w_mf, w_mlp = w[:d_mf], w[d_mf:]
    layers = list(m.mlp_layers.mlp_layers)
    first = next(i for i, layer in enumerate(layers) if isinstance(layer, nn.Linear))
    lin = layers[first]
    d_mlp = lin.weight.shape[1] - m.item_mlp_embedding.weight.shape[1]
    W_u, W_i = lin.weight[:, :d_mlp], lin.weight[:, d_mlp:]
    return {"gmf_items": (m.item_mf_embedding.weight * w_mf).T,  # [d_mf, n]
            "item_part": m.item_mlp_embedding.weight @ W_i.T + lin.bias,  # [n, h]
            "W_u": W_u, "rest": nn.Sequential(*layers[first + 1:]),  # in eval mode dropout is the identity
            "w_mlp": w_mlp, "bias": m.predict_layer.bias}


@torch.no_grad()
def neumf_logits_all_items(model: nn.Module, u_mf: torch.Tensor, u_mlp: torch.Tensor,
                           budget: int | None = None, parts: dict | None = None) -> torch.Tensor:
    """Logits [U, n_items] of users given by their GMF rows ``u_mf`` [U, d_mf] and MLP rows
    ``u_mlp`` [U, d_mlp] over every item. Users go in chunks of about ``budget`` hidden units
    (``budget`` floats of working memory). Default: ``2^25`` on CUDA; ``2^18`` (1 MiB) on the
    CPU, where chunks that stay in cache are about 4x faster (94 ml-100k users, MLP [128, 64],
    one thread: 0.070 s against 0.278 s with ``2^25``; ``benchmarks/neumf_chunk_time.py``, the
    numbers in ``benchmarks/results/request_time_neumf.md``). ``parts``: :func:`neumf_item_parts`
    of the model, computed once by a caller that scores many times (else computed here)."""
    if budget is None:
        budget = 1 << 25 if u_mlp.is_cuda else 1 << 18
    p = neumf_item_parts(model) if parts is None else parts
    item_part = p["item_part"]
    n_items = item_part.shape[0]
    gmf = u_mf @ p["gmf_items"]  # [U, n]
    user_part = u_mlp @ p["W_u"].T  # [U, h]
    chunk = max(1, budget // max(1, n_items * item_part.shape[1]))
    out = []
    for start in range(0, u_mlp.shape[0], chunk):
        h = user_part[start:start + chunk, None, :] + item_part[None]  # [c, n, h]
        h = p["rest"](h.reshape(-1, h.shape[-1])).view(h.shape[0], n_items, -1)
        out.append(h @ p["w_mlp"])
    return gmf + torch.cat(out, 0) + p["bias"]


@torch.no_grad()
def neumf_full_sort_predict(self, interaction) -> torch.Tensor:
    """``predict``'s scores (sigmoid of the logits) of the batch's users over all items,
    flattened to [B * n_items] as RecBole's trainer expects. NeuMF with only one head trained
    (``mf_train`` or ``mlp_train`` off) raises ``NotImplementedError``, so callers fall back
    to ``predict``."""
    if not (self.mf_train and self.mlp_train):
        raise NotImplementedError("all-item scoring needs both NeuMF heads")
    users = interaction[self.USER_ID]
    logits = neumf_logits_all_items(
        self, self.user_mf_embedding(users), self.user_mlp_embedding(users)
    )
    return torch.sigmoid(logits).view(-1)


def install_full_sort_predict() -> None:
    """Give RecBole's NeuMF ``neumf_full_sort_predict`` unless the class defines its own."""
    from recbole.model.general_recommender.neumf import NeuMF

    if "full_sort_predict" not in NeuMF.__dict__:
        NeuMF.full_sort_predict = neumf_full_sort_predict
