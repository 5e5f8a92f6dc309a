"""Stage 1 of L2UnRank: interaction-based influence scoping (p-hop expansion).

The train interactions are ``N`` pairs ``(users[k], items[k])``; the forget set ``D_t`` is
given by ``target_index`` (indices into those ``N``). Starting from ``S_0 = F_0 = D_t``::

    S_h = S_{h-1} U { (u', i') in D : u' = u or i' = i for some (u, i) in F_{h-1} }
    F_h = S_h \\ S_{h-1}

for ``h = 1..p``, stopping early when a frontier is empty. ``D_inf = S_p`` is the scope and
``D_ctx = D_inf \\ D_t`` the context. A hop is a handful of O(N) vectorised passes (boolean
masks over users and items, gathered back onto the interactions); there is no Python loop
over interactions, and everything stays on the device of ``users``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from recbole_unrank.influence.index import InteractionIndex, in_sorted

__all__ = ["ScopeResult", "influence_scope", "influence_scope_indexed"]


@dataclass(frozen=True)
class ScopeResult:
    """The influence scope of a forget set.

    Attributes:
        scope_index: LongTensor[S], sorted, distinct indices into the ``N`` train
            interactions: ``D_inf`` (it always contains every target).
        context_index: LongTensor[S - T], sorted: ``D_inf \\ D_t``.
        hops_done: number of hops that added interactions to the returned scope (``<= hops``;
            smaller when the expansion stopped early because a frontier was empty, or because
            the scope had already reached ``cap``).
        truncated: True when ``cap`` left out interactions that the uncapped scope holds.
    """

    scope_index: Tensor
    context_index: Tensor
    hops_done: int
    truncated: bool = False


def _check_inputs(users: Tensor, items: Tensor, target_index: Tensor) -> Tensor:
    if users.dim() != 1 or items.dim() != 1 or users.shape != items.shape:
        raise ValueError(
            "users and items must be 1-D tensors of the same length (one entry per train "
            f"interaction); got shapes {tuple(users.shape)} and {tuple(items.shape)}"
        )
    if users.dtype != torch.long or items.dtype != torch.long:
        raise ValueError(
            f"users and items must be LongTensors of ids; got {users.dtype} and {items.dtype}"
        )
    target_index = torch.as_tensor(target_index, device=users.device)
    if target_index.dim() != 1 or target_index.dtype != torch.long:
        raise ValueError(
            "target_index must be a 1-D LongTensor of indices into the train interactions; "
            f"got shape {tuple(target_index.shape)} and dtype {target_index.dtype}"
        )
    n = users.numel()
    if target_index.numel() > 0:
        lo, hi = torch.aminmax(target_index)
        if int(lo) < 0 or int(hi) >= n:
            raise ValueError(
                f"target_index must lie in [0, {n}) (indices into the {n} train "
                f"interactions); got values in [{int(lo)}, {int(hi)}]"
            )
    return target_index


def influence_scope(
    users: Tensor,
    items: Tensor,
    target_index: Tensor,
    hops: int,
    cap: int | None = None,
) -> ScopeResult:
    """Expand the forget set ``D_t`` by ``hops`` interaction hops (the scope ``D_inf``).

    Args:
        users: LongTensor[N], user id of each train interaction.
        items: LongTensor[N], item id of each train interaction (own id space; a user and an
            item with the same id are different entities).
        target_index: LongTensor[T], indices into the N interactions: the forget set
            ``D_t``. Duplicates are ignored.
        hops: ``p >= 0``; ``0`` keeps ``D_inf = D_t``.
        cap: optional bound on ``|D_inf|``. When the expansion exceeds it, all targets are
            kept (even if ``T > cap``: a target is never dropped), then context interactions
            hop by hop, earliest hop first. Inside the hop that overflows, interactions that
            touch both a user and an item of the previous frontier come first, then those that
            touch one; ties go to the lower interaction index. Deterministic.

    Returns:
        ScopeResult with ``scope_index`` (LongTensor[S], sorted), ``context_index``,
        ``hops_done`` and ``truncated``.

    Cost: O(N) per hop in time, O(N + n_users + n_items) booleans in memory.
    """
    if hops < 0:
        raise ValueError(
            f"hops must be >= 0 (0 keeps the forget set only, 1 adds the interactions that "
            f"share a user or an item with it, ...); got {hops}"
        )
    if cap is not None and cap < 0:
        raise ValueError(f"cap must be >= 0 or None (no cap); got {cap}")
    target_index = _check_inputs(users, items, target_index)
    device = users.device
    n = users.numel()

    targets = torch.unique(target_index)  # sorted, distinct
    if targets.numel() == 0 or hops == 0:
        empty = torch.empty(0, dtype=torch.long, device=device)
        return ScopeResult(scope_index=targets, context_index=empty, hops_done=0)

    n_users = int(users.max()) + 1
    n_items = int(items.max()) + 1
    in_scope = torch.zeros(n, dtype=torch.bool, device=device)
    in_scope[targets] = True
    size = targets.numel()

    frontier = targets
    truncated = False
    # per hop h >= 1: the new interactions F_h (sorted by index) and how many frontier
    # entities of F_{h-1} each one touches (1 or 2); used only when the cap cuts.
    added: list[Tensor] = []
    touches: list[Tensor] = []
    for _ in range(hops):
        # Entities (users, items) of the previous frontier F_{h-1}, as boolean masks.
        user_hit = torch.zeros(n_users, dtype=torch.bool, device=device)
        user_hit[users[frontier]] = True
        item_hit = torch.zeros(n_items, dtype=torch.bool, device=device)
        item_hit[items[frontier]] = True
        # Every interaction sharing a user or an item with F_{h-1} ...
        by_user = user_hit[users]
        by_item = item_hit[items]
        # ... that is not in S_{h-1} yet: the new frontier F_h.
        new_mask = (by_user | by_item) & ~in_scope
        frontier = new_mask.nonzero().squeeze(1)
        if frontier.numel() == 0:  # nothing new: later hops would add nothing either
            break
        if cap is not None and size >= cap:  # the cap is full: this hop is cut away whole
            truncated = True
            break
        in_scope |= new_mask
        added.append(frontier)
        touches.append(by_user[frontier].to(torch.int8) + by_item[frontier].to(torch.int8))
        size += frontier.numel()

    hops_done = len(added)
    if cap is None or size <= max(cap, targets.numel()):  # all that was expanded fits
        scope_index = in_scope.nonzero().squeeze(1)
        in_scope[targets] = False  # what is left is the context (a mask: isin is slow)
        context_index = in_scope.nonzero().squeeze(1)
        return ScopeResult(scope_index, context_index, hops_done, truncated)

    # The cap cuts into the expanded hops: keep targets, then whole hops, earliest first,
    # then the best-connected part of the hop that overflows.
    budget = max(cap - targets.numel(), 0)
    kept: list[Tensor] = []
    for frontier, touch in zip(added, touches):
        if budget >= frontier.numel():
            kept.append(frontier)
            budget -= frontier.numel()
            continue
        if budget > 0:
            # stable sort: touch 2 before touch 1, lower index first inside each group
            order = torch.sort(-touch.to(torch.int16), stable=True).indices
            kept.append(frontier[order[:budget]])
        break
    context_index = (
        torch.sort(torch.cat(kept)).values
        if kept
        else torch.empty(0, dtype=torch.long, device=device)
    )
    scope_index = torch.sort(torch.cat([targets, context_index])).values
    return ScopeResult(scope_index, context_index, hops_done=len(kept), truncated=True)


def influence_scope_indexed(
    index: InteractionIndex,
    target_index: Tensor,
    hops: int,
    cap: int | None = None,
) -> ScopeResult:
    """:func:`influence_scope` over ``index.users`` / ``index.items``, the same result, at the
    cost of the rows it reaches instead of O(N) per hop: a hop reads the rows of the
    frontier's users and items from the index's CSR groups, and the scope is kept as a sorted
    tensor (binary-search membership) instead of a mask over all N rows."""
    if hops < 0:
        raise ValueError(
            f"hops must be >= 0 (0 keeps the forget set only, 1 adds the interactions that "
            f"share a user or an item with it, ...); got {hops}"
        )
    if cap is not None and cap < 0:
        raise ValueError(f"cap must be >= 0 or None (no cap); got {cap}")
    users, items = index.users, index.items
    target_index = _check_inputs(users, items, target_index)
    device = users.device
    targets = torch.unique(target_index)  # sorted, distinct
    if targets.numel() == 0 or hops == 0:
        empty = torch.empty(0, dtype=torch.long, device=device)
        return ScopeResult(scope_index=targets, context_index=empty, hops_done=0)

    scope = targets
    frontier = targets
    truncated = False
    added: list[Tensor] = []
    touches: list[Tensor] = []
    for _ in range(hops):
        f_users = torch.unique(users[frontier])
        f_items = torch.unique(items[frontier])
        cand = torch.unique(torch.cat((index.rows_of_users(f_users), index.rows_of_items(f_items))))
        frontier = cand[~in_sorted(cand, scope)]
        if frontier.numel() == 0:
            break
        if cap is not None and scope.numel() >= cap:
            truncated = True
            break
        user_hit = torch.zeros(index.n_users, dtype=torch.bool, device=device)
        user_hit[f_users] = True
        item_hit = torch.zeros(index.n_items, dtype=torch.bool, device=device)
        item_hit[f_items] = True
        added.append(frontier)
        touches.append(user_hit[users[frontier]].to(torch.int8) + item_hit[items[frontier]].to(torch.int8))
        scope = torch.sort(torch.cat((scope, frontier))).values

    size = scope.numel()
    if cap is None or size <= max(cap, targets.numel()):
        context_index = scope[~in_sorted(scope, targets)]
        return ScopeResult(scope, context_index, len(added), truncated)

    budget = max(cap - targets.numel(), 0)
    kept: list[Tensor] = []
    for frontier, touch in zip(added, touches):
        if budget >= frontier.numel():
            kept.append(frontier)
            budget -= frontier.numel()
            continue
        if budget > 0:
            order = torch.sort(-touch.to(torch.int16), stable=True).indices
            kept.append(frontier[order[:budget]])
        break
    context_index = (
        torch.sort(torch.cat(kept)).values
        if kept
        else torch.empty(0, dtype=torch.long, device=device)
    )
    scope_index = torch.sort(torch.cat([targets, context_index])).values
    return ScopeResult(scope_index, context_index, hops_done=len(kept), truncated=True)
