"""Which per-pair value the LiRA audit fits (recbole_unrank/evaluation/lira.py), chosen on a
*design* request seed: how Gaussian each candidate is over the shadows, and the AUC each gives
for the original and retrain.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/lira_design.py --seed 101 --shadows 8 \
        --out benchmarks/results/lira_design_101.json

For every judged pair (forgotten and test pairs of the request users), the K shadows' values
are tested with Shapiro-Wilk; under a Gaussian about 5% of the pairs fall below p = 0.05. Pairs
on which every shadow gives the same value are counted apart (no spread to test).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=101, help="request seed (a design seed: 101-103)")
    ap.add_argument("--shadows", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=None, help="shadow epoch budget (None: the config's)")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "lira_design_101.json"))
    args = ap.parse_args()
    if args.seed in (1001, 1002, 1003):
        sys.exit("choose the statistic on a design seed (101-103), not an evaluation seed")

    import tempfile

    from scipy.stats import shapiro

    from recbole_unrank.evaluation import lira
    from recbole_unrank.pipeline import build_config, prepare_run

    scratch = tempfile.mkdtemp(prefix="lira_design_")
    cfg = build_config("WMF", "ml-100k", [os.path.join(ROOT, "config", "ml-100k.yaml"), os.path.join(ROOT, "config", "WMF.yaml")],
                       {"unrank_request": "interaction", "unrank_user_ratio": 0.1, "unrank_inter_ratio": 0.2,
                        "unrank_request_seed": args.seed, "show_progress": False,
                        "checkpoint_dir": os.path.join(scratch, "saved"), "unrank_output_dir": os.path.join(scratch, "runs")}, argv=[])
    run, _ = prepare_run(cfg, methods=["retrain"])
    run.prepare_original()
    retrain = run.run_method("retrain", save=False)
    probes = {"original": run.rows[0]["_probe"], "retrain": retrain["_probe"]}
    shadows = lira.ShadowAudit(run.auditor)
    t0 = time.perf_counter()
    shadows.train(args.shadows, lambda rows, s, tag: lira.train_shadow(cfg, run.data, run.retain_ds, rows, s, args.epochs, tag),
                  args.seed)
    out = {"request_seed": args.seed, "shadows": args.shadows, "shadows_s": time.perf_counter() - t0,
           "retrain_s": retrain["time_s"], "pairs": int(len(probes["original"].forget)), "statistics": {}}
    for stat in ("rank_logit", "score"):
        f, t = shadows.shadow_values(stat)
        vals = np.concatenate([f, t], axis=1)  # [K, P]
        constant = np.ptp(vals, axis=0) == 0
        ps = np.array([shapiro(vals[:, p]).pvalue for p in np.flatnonzero(~constant)])
        out["statistics"][stat] = {
            "share_rejected_p05": float((ps < 0.05).mean()) if ps.size else None,
            "constant_pairs": int(constant.sum()),
            "lira_auc": {name: shadows.lira_auc(p, stat) for name, p in probes.items()},
        }
        print(stat, json.dumps(out["statistics"][stat]), flush=True)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".tmp", "w", encoding="utf-8") as fh:
        json.dump(out, fh, indent=1)
    os.replace(args.out + ".tmp", args.out)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
