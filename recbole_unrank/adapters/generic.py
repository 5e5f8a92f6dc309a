"""Generic adapter: any RecBole general recommender, through its own ``predict`` and
``full_sort_predict``. No user blocks, so L2UnRank takes its full-parameter path."""

from __future__ import annotations

import torch
from recbole.data.interaction import Interaction
from recbole.utils import InputType
from torch import nn

from recbole_unrank.adapters.base import AdapterError, ModelAdapter

__all__ = ["GenericAdapter"]


class GenericAdapter(ModelAdapter):
    def __init__(self, model: nn.Module):
        super().__init__(model)
        if not any(p.requires_grad for p in model.parameters()):
            raise AdapterError(f"{type(model).__name__} has no trainable parameters: nothing to unlearn")
        if not hasattr(model, "predict"):
            raise AdapterError(f"{type(model).__name__} has no predict(): cannot score pairs")
        self.pairwise = getattr(model, "input_type", None) == InputType.PAIRWISE
        self.uid, self.iid = model.USER_ID, model.ITEM_ID

    def pair_scores(self, users, items):
        return self.model.predict(Interaction({self.uid: users, self.iid: items})).view(-1)

    @torch.no_grad()
    def user_scores(self, users):
        try:
            return self.model.full_sort_predict(Interaction({self.uid: users})).view(users.numel(), -1)
        except NotImplementedError:
            items = torch.arange(self.n_items, device=users.device)
            rows = [self.pair_scores(u.repeat(self.n_items), items) for u in users]
            return torch.stack(rows, 0)

    @torch.no_grad()
    def final_embeddings(self):
        for u_name, i_name in (("user_embedding", "item_embedding"), ("user_mf_embedding", "item_mf_embedding")):
            u, i = getattr(self.model, u_name, None), getattr(self.model, i_name, None)
            if isinstance(u, nn.Embedding) and isinstance(i, nn.Embedding):
                return u.weight.detach(), i.weight.detach()
        raise AdapterError(
            f"{type(self.model).__name__} has no user_embedding/item_embedding: the semantic "
            "influence score needs embeddings; set unrank_use_semantic=False"
        )
