"""ShardEnsemble: SISA / RecEraser's aggregate of K sub-models, as a RecBole general recommender.

    score(u, i) = sum_k user_weights[u, k] * score_k(u, i),   sum_k user_weights[u, k] = 1.

Its ``state_dict`` holds every sub-model's parameters (``models.<k>.*``) and the per-user
weights (``user_weights`` [n_users, K]); graph sub-models keep their own shard's graph in
``other_parameter`` (``models.<k>.norm_adj_matrix``). So an ensemble is ONE RecBole
checkpoint: ``recbole.quick_start.load_data_and_model`` (after ``import recbole_unrank``)
rebuilds it from the checkpoint's config, whose ``ensemble_model`` and ``ensemble_size``
name the sub-models' class and count, and RecBole's ``Trainer.evaluate`` scores it.
"""

from __future__ import annotations

import torch
from recbole.model.abstract_recommender import GeneralRecommender
from recbole.utils import InputType
from torch import nn

from recbole_unrank.models.extras import checkpoint_extras, load_extras
from recbole_unrank.models.registry import get_model

__all__ = ["ShardEnsemble"]

class ShardEnsemble(GeneralRecommender):
    """K sub-models and per-user weights ``user_weights`` [n_users, K] (rows sum to 1).

    ``ShardEnsemble(config, dataset)`` is RecBole's constructor: ``config['ensemble_size']``
    untrained sub-models of class ``config['ensemble_model']`` with equal weights, to be
    filled by ``load_state_dict``. :meth:`of` builds one from trained sub-models.

    It scores like a RecBole general recommender (``full_sort_predict``, ``predict``). If a
    sub-model has no ``full_sort_predict`` (it raises ``NotImplementedError``), neither has the
    ensemble, and RecBole's evaluator falls back to ``predict``.
    """

    input_type = InputType.POINTWISE  # never trained as a whole (see calculate_loss)

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        sub_name, k = config["ensemble_model"], config["ensemble_size"]
        if not sub_name or not k:
            raise ValueError("a ShardEnsemble config needs ensemble_model and ensemble_size "
                             "(they are written with the ensemble's checkpoint)")
        sub = get_model(sub_name)
        self._setup([sub(config, dataset) for _ in range(int(k))],
                    torch.full((self.n_users, int(k)), 1.0 / int(k)))

    @classmethod
    def of(cls, models: list[nn.Module], user_weights: torch.Tensor) -> "ShardEnsemble":
        """The ensemble of trained ``models`` with weights ``user_weights`` [n_users, K]."""
        if not models:
            raise ValueError("an ensemble needs at least one sub-model")
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        first = models[0]
        self.USER_ID, self.ITEM_ID = first.USER_ID, first.ITEM_ID
        self.NEG_ITEM_ID = getattr(first, "NEG_ITEM_ID", None)
        self.n_users, self.n_items = int(first.n_users), int(first.n_items)
        self.device = getattr(first, "device", user_weights.device)
        self._setup(models, user_weights)
        return self

    def _setup(self, models: list[nn.Module], user_weights: torch.Tensor) -> None:
        if user_weights.shape != (self.n_users, len(models)):
            raise ValueError(
                f"user_weights must be [n_users, K] = [{self.n_users}, {len(models)}], "
                f"got {tuple(user_weights.shape)}"
            )
        self.models = nn.ModuleList(models)
        self.register_buffer("user_weights", user_weights.detach().float())

    def _combine(self, users: torch.Tensor, score_of) -> torch.Tensor:
        weights = self.user_weights[users]  # [B, K]
        total = None
        for k, model in enumerate(self.models):
            s = score_of(model).view(users.numel(), -1) * weights[:, k : k + 1]
            total = s if total is None else total + s
        return total

    @torch.no_grad()
    def full_sort_predict(self, interaction) -> torch.Tensor:
        """Scores [B * n_items] of the batch's users over all items."""
        users = interaction[self.USER_ID]
        return self._combine(users, lambda m: m.full_sort_predict(interaction)).view(-1)

    @torch.no_grad()
    def predict(self, interaction) -> torch.Tensor:
        """Scores [B] of the batch's (user, item) pairs."""
        users = interaction[self.USER_ID]
        return self._combine(users, lambda m: m.predict(interaction)).view(-1)

    def calculate_loss(self, interaction):
        raise NotImplementedError("a shard ensemble is not trained as a whole: train its sub-models")

    def other_parameter(self) -> dict:
        """Each sub-model's non-parameter state (its graph), caches left out."""
        return {f"models.{k}.{key}": value for k, model in enumerate(self.models)
                for key, value in checkpoint_extras(model).items()}

    def load_other_parameter(self, para) -> None:
        """Route ``models.<k>.<name>`` entries to sub-model k, on that model's device; clear caches."""
        per_model: dict[int, dict] = {}
        for key, value in (para or {}).items():
            _, k, name = key.split(".", 2)
            per_model.setdefault(int(k), {})[name] = value
        for k, model in enumerate(self.models):
            load_extras(model, per_model.get(k))
