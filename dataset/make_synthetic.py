"""Write a synthetic implicit-feedback dataset in RecBole atomic format.

    python dataset/make_synthetic.py --name synth-1m --users 20000 --items 10000 --inter 1000000

A size whose generation would not fit in the available memory (or whose file would not fit on
the disk) is refused in one line before anything is drawn or written.
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from recbole_unrank.errors import UnrankError  # noqa: E402
from recbole_unrank.synthetic import check_fits, generate_interactions, write_atomic  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--name", required=True, help="dataset name (folder and file stem)")
    p.add_argument("--users", type=int, required=True)
    p.add_argument("--items", type=int, required=True)
    p.add_argument("--inter", type=int, required=True, help="about this many interactions")
    p.add_argument("--seed", type=int, default=2020)
    p.add_argument("--clusters", type=int, default=8)
    p.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    a = p.parse_args()
    t = time.time()
    try:
        check_fits(a.users, a.items, a.inter, os.path.join(a.out, a.name), option="--inter")
        u, i, ts = generate_interactions(a.users, a.items, a.inter, a.seed, a.clusters)
    except (ValueError, UnrankError) as exc:
        sys.exit(f"make_synthetic: {exc}")
    gen = time.time() - t
    path = write_atomic(a.out, a.name, u, i, ts)
    print(f"{len(u)} interactions, {len(np.unique(u))} users, {len(np.unique(i))} items "
          f"-> {path} (generated in {gen:.1f}s, written in {time.time() - t - gen:.1f}s)")


if __name__ == "__main__":
    main()
