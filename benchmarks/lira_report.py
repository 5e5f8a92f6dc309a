"""Tables of the LiRA check (benchmarks/results/lira_check.md) from run folders and
benchmarks/lira_design.py's JSONs: lira_auc and mia_auc per row, the audits' power (original
minus retrain), the shadows' time.

    PYTHONPATH=. python benchmarks/lira_report.py --runs K4=RUN_DIR K8=RUN_DIR \
        --design benchmarks/results/lira_design_101.json ...
"""

from __future__ import annotations

import argparse
import json
import os


def _f(x, nd=4):
    return "-" if x is None else f"{x:.{nd}f}"


def runs_table(runs: list[tuple[str, str]]) -> str:
    out = ["| run | method | time (s) | test NDCG@10 | forget_hit@10 | mia_auc | lira_auc |", "|---|---|---|---|---|---|---|"]
    power = ["| run | shadows | shadows' time (s) | retrain time (s) | power mia (orig - retrain) | power lira (orig - retrain) |",
             "|---|---|---|---|---|---|"]
    for label, folder in runs:
        with open(os.path.join(folder, "results.json"), encoding="utf-8") as fh:
            rec = json.load(fh)
        rows = {r["method"]: r for r in rec["rows"]}
        for name, r in rows.items():
            a = r.get("audit", {})
            out.append(f"| {label} | {name} | {_f(r['time_s'], 2)} | {_f(r['test']['ndcg@10'])} | "
                       f"{_f(r['forget']['forget_hit@10'])} | {_f(a.get('mia_auc'))} | {_f(a.get('lira_auc'))} |")
        o, t = rows["original"]["audit"], rows["retrain"]["audit"]
        power.append(f"| {label} | {o.get('shadows')} | {_f(o.get('shadows_s'), 1)} | {_f(rows['retrain']['time_s'], 1)} | "
                     f"{_f(o['mia_auc'] - t['mia_auc'])} | {_f(o['lira_auc'] - t['lira_auc'])} |")
    return "\n".join(out) + "\n\n" + "\n".join(power)


def design_table(paths: list[str]) -> str:
    out = ["| design seed | value | Shapiro-Wilk p<0.05 share | lira_auc original | lira_auc retrain | shadows' time (s) |",
           "|---|---|---|---|---|---|"]
    for p in paths:
        with open(p, encoding="utf-8") as fh:
            d = json.load(fh)
        for stat, v in d["statistics"].items():
            out.append(f"| {d['request_seed']} | {stat} | {_f(v['share_rejected_p05'], 3)} | {_f(v['lira_auc']['original'])} | "
                       f"{_f(v['lira_auc']['retrain'])} | {_f(d['shadows_s'], 1)} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", nargs="*", default=[], help="LABEL=RUN_FOLDER")
    ap.add_argument("--design", nargs="*", default=[])
    args = ap.parse_args()
    if args.design:
        print(design_table(args.design) + "\n")
    if args.runs:
        print(runs_table([tuple(r.rsplit("=", 1)) for r in args.runs]))


if __name__ == "__main__":
    main()
