"""Mean over request seeds of twosided_check.py's records, per (model, task, method).

    python benchmarks/twosided_means.py OUT1.json OUT2.json ...   # the --out files of twosided_check.py

Prints a markdown table (then issue 22's targets table, benchmarks/twosided_targets.py): per row the mean over the given seeds of forget_hit@10 minus retrain's,
test NDCG@10 / retrain's, the request users' test NDCG@10 / retrain's, MIA AUC minus retrain's
over_unlearned and the time, with the seeds' min..max of the two utility ratios.
"""

from __future__ import annotations

import json
import os
import sys
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twosided_targets import targets_report  # noqa: E402 (benchmarks/, beside this script)

from recbole_unrank.tables import fmt, md_table  # noqa: E402 (after the sys.path line)


def main() -> None:
    cells = defaultdict(list)
    order = []
    seeds = set()
    records = []
    for path in sys.argv[1:]:
        with open(path, encoding="utf-8") as f:
            for res in json.load(f)["results"]:
                records.append(res)
                seeds.add(res["seed"])
                ret = res["methods"]["retrain"]
                for name, r in [("original", res["original"])] + list(res["methods"].items()):
                    key = (res["model"], res["task"], name)
                    if key not in cells:
                        order.append(key)
                    if "error" in r:  # a failed method: counted, not averaged
                        cells[key].append(None)
                        continue
                    req = r.get("req_ndcg@10")
                    cells[key].append({
                        "fh": r["forget_hit@10"], "dfh": r["forget_hit@10"] - ret["forget_hit@10"],
                        "nd": r["ndcg@10"] / ret["ndcg@10"],
                        "req": None if req is None or not ret.get("req_ndcg@10") else req / ret["req_ndcg@10"],
                        "mia": None if r.get("mia_auc") is None else r["mia_auc"] - ret["mia_auc"],
                        "over": r.get("over_unlearned"), "t": r["time_s"]})
    rows = []
    for key in order:
        failed = sum(1 for x in cells[key] if x is None)
        xs = [x for x in cells[key] if x is not None]
        if not xs:
            rows.append([*key, f"{failed} (all failed)"] + [""] * 10)
            continue

        def mean(k, xs=xs):
            v = [x[k] for x in xs if x[k] is not None]
            return sum(v) / len(v) if v else None

        def span(k, xs=xs):
            v = [x[k] for x in xs if x[k] is not None]
            return f"{fmt(min(v), 3)}..{fmt(max(v), 3)}" if v else ""

        rows.append([*key, f"{len(xs)}" + (f" (+{failed} failed)" if failed else ""), fmt(mean("fh"), 3), fmt(mean("dfh"), 3), fmt(mean("nd"), 3), span("nd"),
                     fmt(mean("req"), 3) if mean("req") is not None else "", span("req"),
                     fmt(mean("mia"), 3) if mean("mia") is not None else "",
                     fmt(mean("over"), 3) if mean("over") is not None else "", fmt(mean("t"), 2)])
    head = ["model", "task", "method", "seeds", "forget_hit@10", "- retrain's", "test NDCG@10 / retrain's", "(min..max)",
            "req. users / retrain's", "(min..max)", "MIA AUC - retrain's", "over-unlearned", "time (s)"]
    print(f"Seeds: {', '.join(str(s) for s in sorted(seeds))}; means over them.\n")
    print("\n".join(md_table(head, rows)))
    print("\n### Targets\n")
    print(targets_report(records))


if __name__ == "__main__":
    main()
