"""Write a synthetic implicit-feedback dataset in RecBole atomic format.

    python dataset/make_synthetic.py --name synth-1m --users 20000 --items 10000 --inter 1000000
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from recbole_unrank.synthetic import generate_interactions, write_atomic  # noqa: E402


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
        u, i, ts = generate_interactions(a.users, a.items, a.inter, a.seed, a.clusters)
    except ValueError as exc:
        sys.exit(f"make_synthetic: {exc}")
    path = write_atomic(a.out, a.name, u, i, ts)
    print(f"{len(u)} interactions, {len(set(u.tolist()))} users, {len(set(i.tolist()))} items "
          f"-> {path} ({time.time() - t:.1f}s)")


if __name__ == "__main__":
    main()
