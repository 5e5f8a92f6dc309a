"""Stage 2 of L2UnRank: fine-grained influence quantification (interaction weights).

``V`` is the set of entities (users and items, pooled into one set: their score arrays are
concatenated, users first) that appear in the scope ``D_inf``; ``T`` those that appear in the
forget set ``D_t``. For ``v in V``::

    s_str(v) = deg_{D_inf}(v) / max_{v' in V} deg_{D_inf}(v')           (structural)
    s_sem(v) = mean_{t in T} cos(e_v, e_t)
             = normalize(e_v) . mean_{t in T} normalize(e_t)            (semantic)
    w(v)     = exp(-(s(v) - mu)^2 / (2 sigma^2)),  mu, sigma over V     (Gaussian calibration;
                                                    population std; w = 1 if sigma < 1e-12)
    pi(v)    = w_str(v) + w_sem(v)
    w_ui     = (pi_u + pi_i) / 2 for context interactions, 1 for targets

Switches: with one component off, ``pi`` is the other one alone (so ``pi`` lies in (0, 1]
instead of (0, 2]); with both off, ``pi = 1`` and every weight is 1.

The semantic score never forms the |V| x |T| cosine matrix: the mean of cosines is the dot
product with the mean of the normalised target embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from recbole_unrank.influence.index import in_sorted

__all__ = [
    "EntityInfluence",
    "entity_influence",
    "gaussian_calibrate",
    "influence_weights",
    "semantic_scores",
    "structural_scores",
]

SIGMA_EPS = 1e-12


def structural_scores(degrees: Tensor) -> Tensor:
    """``s_str = deg / max(deg)``.

    Args:
        degrees: Tensor[V], degree of each entity of ``V`` in ``D_inf`` (pooled users and
            items). Every entity of ``V`` has degree >= 1 by construction.

    Returns:
        Tensor[V] (float64 if ``degrees`` is integral, else its dtype), values in (0, 1].
    """
    deg = degrees if degrees.is_floating_point() else degrees.to(torch.float64)
    if deg.numel() == 0:
        return deg
    return deg / deg.max()


def semantic_scores(entity_emb: Tensor, target_emb: Tensor) -> Tensor:
    """``s_sem(v) = mean_t cos(e_v, e_t) = normalize(e_v) . mean_t normalize(e_t)``.

    Args:
        entity_emb: Tensor[V, d], embeddings of the entities of ``V``.
        target_emb: Tensor[T, d], embeddings of the entities of ``T`` (users and items of the
            forget set, pooled). A zero embedding has cosine 0 with everything.

    Returns:
        Tensor[V], values in [-1, 1].
    """
    if target_emb.shape[0] == 0:
        raise ValueError("semantic_scores needs at least one target embedding (T is empty)")
    centre = F.normalize(target_emb, dim=1).mean(dim=0)  # [d]: mean of unit target vectors
    return F.normalize(entity_emb, dim=1) @ centre


def gaussian_calibrate(scores: Tensor) -> Tensor:
    """``w(v) = exp(-(s(v) - mu)^2 / (2 sigma^2))`` with ``mu``, ``sigma`` (population std)
    over all entries of ``scores``; ``w = 1`` everywhere when ``sigma < 1e-12``.

    Args:
        scores: Tensor[V], floating point.

    Returns:
        Tensor[V], values in (0, 1]: 1 at the mean, falling off for outliers on either side.
    """
    if scores.numel() == 0:
        return torch.ones_like(scores)
    mu = scores.mean()
    sigma = scores.std(correction=0)
    if float(sigma) < SIGMA_EPS:
        return torch.ones_like(scores)
    return torch.exp(-((scores - mu) ** 2) / (2 * sigma**2))


def _entities(ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Distinct ids (sorted), the position of each entry among them, and their counts:
    ``torch.unique(ids, return_inverse=True, return_counts=True)`` in O(len + max id) by
    counting (unique sorts, several times slower on millions of entries)."""
    if ids.numel() == 0:
        empty = torch.empty(0, dtype=torch.long, device=ids.device)
        return empty, empty, empty
    counts = torch.bincount(ids)
    present = counts > 0
    distinct = present.nonzero().squeeze(1)
    position = torch.cumsum(present, dim=0) - 1  # rank of each present id among them
    return distinct, position[ids], counts[distinct]


@dataclass(frozen=True)
class EntityInfluence:
    """Entity-level influence over ``V`` (users, then items, pooled).

    Attributes:
        user_ids: LongTensor[Vu], sorted ids of the users of ``V``.
        item_ids: LongTensor[Vi], sorted ids of the items of ``V``.
        s_str, s_sem, w_str, w_sem: Tensor[Vu + Vi] or None when that component is off;
            entries ``[:Vu]`` are the users, ``[Vu:]`` the items.
        pi: Tensor[Vu + Vi], ``w_str + w_sem`` (or the enabled one, or ones).
        user_of_scope, item_of_scope: LongTensor[S], position of each scope interaction's
            user in ``user_ids`` and its item in ``item_ids``.
    """

    user_ids: Tensor
    item_ids: Tensor
    s_str: Tensor | None
    s_sem: Tensor | None
    w_str: Tensor | None
    w_sem: Tensor | None
    pi: Tensor
    user_of_scope: Tensor
    item_of_scope: Tensor

    @property
    def pi_user(self) -> Tensor:
        """Tensor[Vu], ``pi`` of the users of ``V``."""
        return self.pi[: self.user_ids.numel()]

    @property
    def pi_item(self) -> Tensor:
        """Tensor[Vi], ``pi`` of the items of ``V``."""
        return self.pi[self.user_ids.numel() :]


def entity_influence(
    users: Tensor,
    items: Tensor,
    target_index: Tensor,
    scope_index: Tensor,
    user_emb: Tensor | None = None,
    item_emb: Tensor | None = None,
    use_structural: bool = True,
    use_semantic: bool = True,
    dtype: torch.dtype | None = None,
) -> EntityInfluence:
    """Entity scores ``s_str``, ``s_sem``, their calibrations and ``pi`` over ``V``.

    Args: as :func:`influence_weights`. ``dtype`` defaults to the embeddings' dtype, or
    ``torch.get_default_dtype()`` without embeddings.
    """
    if users.dim() != 1 or users.shape != items.shape:
        raise ValueError(
            "users and items must be 1-D tensors of the same length; got shapes "
            f"{tuple(users.shape)} and {tuple(items.shape)}"
        )
    if use_semantic and (user_emb is None or item_emb is None):
        raise ValueError(
            "the semantic score needs user_emb and item_emb; pass the model's final "
            "embeddings or set use_semantic=False"
        )
    if use_semantic and user_emb.shape[1] != item_emb.shape[1]:
        raise ValueError(
            "user_emb and item_emb must have the same width to compare users with items; got "
            f"{user_emb.shape[1]} and {item_emb.shape[1]}"
        )
    if dtype is None:
        dtype = user_emb.dtype if user_emb is not None else torch.get_default_dtype()
    device = users.device
    scope_index = torch.as_tensor(scope_index, device=device)
    target_index = torch.as_tensor(target_index, device=device)

    # V: distinct users and items of D_inf, with their degrees in D_inf.
    user_ids, user_of_scope, user_deg = _entities(users[scope_index])
    item_ids, item_of_scope, item_deg = _entities(items[scope_index])

    s_str = w_str = s_sem = w_sem = None
    if use_structural:
        s_str = structural_scores(torch.cat([user_deg, item_deg]).to(dtype))
        w_str = gaussian_calibrate(s_str)
    if use_semantic:
        # T: distinct users and items of D_t (pooled).
        t_users = torch.unique(users[target_index])
        t_items = torch.unique(items[target_index])
        target_emb = torch.cat([user_emb[t_users], item_emb[t_items]]).to(dtype)
        entity_emb = torch.cat([user_emb[user_ids], item_emb[item_ids]]).to(dtype)
        with torch.no_grad():  # scores are constants of the update, never differentiated
            s_sem = semantic_scores(entity_emb, target_emb)
            w_sem = gaussian_calibrate(s_sem)

    if w_str is not None and w_sem is not None:
        pi = w_str + w_sem
    elif w_str is not None:
        pi = w_str
    elif w_sem is not None:
        pi = w_sem
    else:
        pi = torch.ones(user_ids.numel() + item_ids.numel(), dtype=dtype, device=device)
    return EntityInfluence(
        user_ids, item_ids, s_str, s_sem, w_str, w_sem, pi, user_of_scope, item_of_scope
    )


def influence_weights(
    users: Tensor,
    items: Tensor,
    target_index: Tensor,
    scope_index: Tensor,
    user_emb: Tensor | None = None,
    item_emb: Tensor | None = None,
    use_structural: bool = True,
    use_semantic: bool = True,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Interaction weights ``w_ui`` of the scope: ``(pi_u + pi_i) / 2``, and 1 for targets.

    Args:
        users: LongTensor[N], user id of each train interaction.
        items: LongTensor[N], item id of each train interaction.
        target_index: LongTensor[T], indices into N: ``D_t`` (must be inside the scope).
        scope_index: LongTensor[S], indices into N: ``D_inf`` (e.g.
            ``influence_scope(...).scope_index``).
        user_emb: Tensor[n_users, d], the model's final user embeddings (needed only when
            ``use_semantic``).
        item_emb: Tensor[n_items, d], the model's final item embeddings.
        use_structural: include ``w_str`` in ``pi``.
        use_semantic: include ``w_sem`` in ``pi``.
        dtype: dtype of the result; defaults to the embeddings' dtype, or the default dtype.

    Returns:
        Tensor[S], aligned with ``scope_index``; no gradient.
    """
    device = users.device
    scope_index = torch.as_tensor(scope_index, device=device)
    target_index = torch.as_tensor(target_index, device=device)
    # membership by binary search among the distinct targets: the scope's size, not O(N)
    targets = torch.unique(target_index)
    is_target = in_sorted(scope_index, targets)
    if int(is_target.sum()) != targets.numel():
        raise ValueError(
            "every target interaction must be inside the scope: pass the scope_index that "
            "influence_scope returned for the same target_index"
        )
    ent = entity_influence(
        users, items, target_index, scope_index, user_emb, item_emb,
        use_structural, use_semantic, dtype,
    )
    w = (ent.pi_user[ent.user_of_scope] + ent.pi_item[ent.item_of_scope]) / 2
    return torch.where(is_target, torch.ones_like(w), w).detach()
