"""Norms of the base user / item embeddings in the saved states of a stream run (benchmarks/stream.py
--work WORK): how far the requests moved the request users' blocks.

    python benchmarks/embedding_norms.py WORK/state/LightGCN-l2unrank-seed1001-guard0-consolidate
"""

from __future__ import annotations

import glob
import os
import sys

import torch


def main() -> None:
    folder = sys.argv[1]
    print("| after | user norm: max | p99 | median | item norm: max | median |")
    print("|---|---|---|---|---|---|")
    for path in sorted(glob.glob(os.path.join(folder, "after-*.pth"))):
        model = torch.load(path, weights_only=False)["model"]
        u = model.user_embedding.weight.detach().norm(dim=1)
        i = model.item_embedding.weight.detach().norm(dim=1)
        k = int(os.path.basename(path)[6:11])
        print(f"| {k} | {u.max():.1f} | {u.quantile(0.99):.1f} | {u.median():.2f} | {i.max():.2f} | {i.median():.2f} |")


if __name__ == "__main__":
    main()
