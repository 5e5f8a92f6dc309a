"""Time NeuMF's all-item scoring (models/neumf_scoring.py) of the first 94 users for several
chunk budgets, one thread, best of 3:

    python benchmarks/neumf_chunk_time.py ORIGINAL.pth

ORIGINAL.pth: a NeuMF checkpoint of the project's config (config/NeuMF.yaml). Prints one line
per budget: floats per chunk, seconds.
"""

from __future__ import annotations

import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from torch import nn  # noqa: E402

import recbole_unrank  # noqa: E402,F401  (compat patches before RecBole)
from recbole_unrank.checkpoints import read_checkpoint  # noqa: E402
from recbole_unrank.models.neumf_scoring import neumf_logits_all_items  # noqa: E402


def main() -> None:
    from recbole.model.layers import MLPLayers  # after recbole_unrank's compat patches

    sd = read_checkpoint(sys.argv[1])["state_dict"]
    n_users, d_mf = sd["user_mf_embedding.weight"].shape
    n_items = sd["item_mf_embedding.weight"].shape[0]
    d_mlp = sd["user_mlp_embedding.weight"].shape[1]
    sizes = [sd[k].shape[0] for k in sorted(k for k in sd if k.startswith("mlp_layers") and k.endswith("weight"))]
    m = nn.Module()
    m.user_mf_embedding, m.item_mf_embedding = nn.Embedding(n_users, d_mf), nn.Embedding(n_items, d_mf)
    m.user_mlp_embedding, m.item_mlp_embedding = nn.Embedding(n_users, d_mlp), nn.Embedding(n_items, d_mlp)
    m.mlp_layers = MLPLayers([2 * d_mlp] + sizes, 0.0)
    m.predict_layer = nn.Linear(d_mf + sizes[-1], 1)
    m.load_state_dict(sd, strict=False)
    m.eval()
    torch.set_num_threads(1)
    users = torch.arange(1, 95)
    for budget in (1 << 25, 1 << 22, 1 << 20, 1 << 18, 1 << 16):
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            neumf_logits_all_items(m, m.user_mf_embedding(users), m.user_mlp_embedding(users), budget)
            best = min(best, time.perf_counter() - t0)
        print(f"budget {budget}: {best:.3f} s")


if __name__ == "__main__":
    main()
