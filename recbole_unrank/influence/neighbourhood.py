"""Graph neighbourhoods of a request beyond the p-hop scope (:mod:`.scope`), for the baselines:
IFRU's k-hop node importance (:func:`khop_importance`) and SCIF's collaborative neighbours
(:func:`collaborative_users`). Tensors in, tensors out, on the tensors' device.
"""

from __future__ import annotations

import torch

__all__ = ["khop_importance", "collaborative_users"]

def khop_importance(users, items, n_users: int, n_items: int, t_users, t_items, hops: int):
    """IFRU's node importance after ``hops`` propagation steps over a bipartite graph.

    Nodes are users ``0..n_users-1`` then items. With a self-loop on every node and
    ``deg(v) = 1 + #edges(v)``, the request's nodes start at ``s_0(v) = c_t(v) / deg(v)``
    (``c_t``: how many request pairs touch ``v``) and each hop spreads them:
    ``s_{h+1}(w) = (s_h(w) + sum_{v ~ w} s_h(v)) / deg(w)``. The nodes with ``s_hops > 0`` are
    exactly those within ``hops`` hops of the request. Returns (user scores, item scores), float64.
    """
    n = n_users + n_items
    device = users.device
    src = torch.cat((users, items + n_users))
    dst = torch.cat((items + n_users, users))
    deg = torch.bincount(src, minlength=n).to(torch.float64) + 1.0
    s = torch.zeros(n, dtype=torch.float64, device=device)
    s.index_add_(0, torch.cat((t_users, t_items + n_users)),
                 torch.ones(2 * t_users.numel(), dtype=torch.float64, device=device))
    s = s / deg
    for _ in range(hops):
        s = (s + torch.zeros_like(s).index_add_(0, dst, s[src])) / deg
    return s[:n_users], s[n_users:]


def collaborative_users(users, items, n_users: int, n_items: int, seeds, hops: int):
    """Users reached from ``seeds`` by ``hops`` user -> item -> user steps (hop 1: the users
    who share an item with a seed). Bool mask [n_users]; the seeds are included."""
    reached = torch.zeros(n_users, dtype=torch.bool, device=users.device)
    reached[seeds] = True
    for _ in range(hops):
        item_hit = torch.zeros(n_items, dtype=torch.bool, device=users.device)
        item_hit[items[reached[users]]] = True
        grown = reached.clone()
        grown[users[item_hit[items]]] = True
        if bool((grown == reached).all()):
            break
        reached = grown
    return reached
