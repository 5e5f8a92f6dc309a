"""A suite's statistics: mean +- std over the *evaluation* request seeds, the paired Wilcoxon
signed-rank test of each method against retrain (per request group and pooled), and
``summary.md`` / ``summary.csv`` with the plots.

Works from a suite record (``suite.json``'s content) alone, so ``--summarise_only`` needs no
run. Design seeds are summarised apart (``summary-design.*``) and never beside evaluation ones.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from recbole_unrank.report import write_text
from recbole_unrank.suite.spec import SuiteSpec
from recbole_unrank.tables import fmt, md_table

__all__ = ["MEASURES", "HEADLINE", "summary_rows", "pooled_tests", "cell_text", "summary_markdown", "summarise"]

logger = logging.getLogger("recbole_unrank")

#: (dotted key in a record, column title, better: "low" | "high" | "retrain" | None)
MEASURES = [
    ("time_s", "time (s)", "low"),
    ("speedup", "speed-up", "high"),
    ("test.ndcg@10", "NDCG@10", "high"),
    ("test.recall@10", "Recall@10", "high"),
    ("request_users.ndcg@10", "req. users NDCG@10", "high"),
    ("forget.forget_hit@10", "forget_hit@10", "low"),
    ("forget.mean_rank", "mean rank", None),
    ("audit.mia_auc", "MIA AUC", "retrain"),
    ("audit.mia_gap", "MIA gap", "low"),
    ("audit.score_auc", "score AUC", "retrain"),
    ("audit.retrain_spearman", "retrain Spearman", "high"),
    ("audit.over_unlearned", "over-unl.", "low"),
    ("audit.under_unlearned", "under-unl.", "low"),
    ("fairness.active_ndcg@10_delta", "active dNDCG", "high"),
    ("fairness.inactive_ndcg@10_delta", "inactive dNDCG", "high"),
    # the method's solve (CG, block or Newton), where it has one: share of the requests whose
    # solve met its tolerance, and the relative residual it ended with
    ("solve.converged", "solved", None),
    ("solve.rel_residual", "solve residual", "low"),
]

#: Measures that describe how a method ran, not what it did: no test against retrain.
_NOT_TESTED = ("speedup", "audit.mia_gap", "solve.converged", "solve.rel_residual")

#: The columns of summary.md's first section (the README's tables come from it).
HEADLINE = ("time_s", "speedup", "test.ndcg@10", "request_users.ndcg@10", "forget.forget_hit@10",
            "audit.mia_auc", "audit.mia_gap", "audit.over_unlearned", "solve.converged")


def _get(d: dict, dotted: str):
    cur = d
    for part in dotted.split("."):
        if not isinstance(cur, dict) or cur.get(part) is None:
            return None
        cur = cur[part]
    return float(cur) if isinstance(cur, (int, float)) else None


def _wilcoxon(a: list[float], b: list[float]) -> float | None:
    """Two-sided paired Wilcoxon signed-rank p-value (None when every difference is 0 or n < 2)."""
    from scipy.stats import wilcoxon

    d = np.asarray(a) - np.asarray(b)
    if d.size < 2 or np.allclose(d, 0):
        return None
    try:
        return float(wilcoxon(a, b).pvalue)
    except ValueError:
        return None


def _group_key(rec: dict) -> tuple:
    r = rec["request"]
    return (r["model"], r["task"], r["vary"], r["ratio"], r["users"])


def summary_rows(record: dict, split: str = "eval") -> list[dict]:
    """One row per (model, task, ratio, users, method) over the ``split``'s request seeds
    (evaluation by default): mean, std, n of each measure and the paired Wilcoxon p-value
    against retrain (same requests)."""
    cells = [c for c in record["cells"] if c["status"] == "ok" and c["request"]["split"] == split]
    by_group: dict[tuple, dict[str, dict[int, dict]]] = {}
    for c in cells:
        by_group.setdefault(_group_key(c), {}).setdefault(c["label"], {})[c["request"]["seed"]] = c
    rows = []
    for gkey, methods in by_group.items():
        # the original as a row of its own (from any cell's copy)
        any_method = next(iter(methods.values()))
        orig = {s: {"row": c["original"]} for s, c in any_method.items()}
        retrain = methods.get("retrain", {})
        for label, seeds in [("original", orig)] + sorted(methods.items(), key=lambda kv: _order(kv[0])):
            row = {"model": gkey[0], "task": gkey[1], "vary": gkey[2], "ratio": gkey[3], "users": gkey[4],
                   "method": label, "n": len(seeds)}
            for key, _, _ in MEASURES:
                vals = {s: _get(c["row"], key) for s, c in seeds.items()}
                vals = {s: v for s, v in vals.items() if v is not None}
                row[f"{key}.mean"] = float(np.mean(list(vals.values()))) if vals else None
                row[f"{key}.std"] = float(np.std(list(vals.values()), ddof=1)) if len(vals) > 1 else None
                p = None
                if label not in ("retrain", "original") and retrain and key not in _NOT_TESTED:
                    common = sorted(s for s in vals if _get(retrain.get(s, {}).get("row", {}), key) is not None)
                    if common:
                        p = _wilcoxon([vals[s] for s in common], [_get(retrain[s]["row"], key) for s in common])
                row[f"{key}.p"] = p
                if key == "solve.converged":
                    row["solve.n"] = len(vals)
            rows.append(row)
    return rows


def _order(label: str) -> tuple:
    head = ["retrain", "l2unrank", "l2unrank_paper"]
    base = label.split("[")[0]
    return (head.index(base) if base in head else len(head), label)


def pooled_tests(record: dict, split: str = "eval") -> list[dict]:
    """Per (model, method): the paired Wilcoxon test against retrain over every request of the
    ``split`` (all tasks, ratios and seeds), the test with power at 3 seeds."""
    cells = [c for c in record["cells"] if c["status"] == "ok" and c["request"]["split"] == split]
    index = {(c["request"]["model"], c["label"], _req_id(c)): c for c in cells}
    out = []
    for model in sorted({c["request"]["model"] for c in cells}):
        for label in sorted({c["label"] for c in cells if c["request"]["model"] == model}, key=_order):
            if label == "retrain":
                continue
            row = {"model": model, "method": label}
            for key, _, _better in MEASURES:
                if key in _NOT_TESTED:
                    continue
                a, b = [], []
                for (m, lab, rid), c in index.items():
                    if m != model or lab != label:
                        continue
                    r = index.get((model, "retrain", rid))
                    va, vb = _get(c["row"], key), _get(r["row"], key) if r else None
                    if va is not None and vb is not None:
                        a.append(va)
                        b.append(vb)
                row[f"{key}.n"] = len(a)
                row[f"{key}.diff"] = float(np.mean(np.asarray(a) - np.asarray(b))) if a else None
                row[f"{key}.p"] = _wilcoxon(a, b)
            out.append(row)
    return out


def _req_id(c: dict) -> tuple:
    r = c["request"]
    return (r["task"], r["vary"], r["ratio"], r["users"], r["seed"], r["train_seed"])


def cell_text(row: dict, key: str) -> str:
    """A summary table's cell: ``mean ± std`` of ``key`` in a summary row, ``k/n`` for the solve."""
    m, s = row.get(f"{key}.mean"), row.get(f"{key}.std")
    if m is None:
        return "-"
    if key == "solve.converged":  # k of the n requests whose solve met its tolerance
        n = row.get("solve.n") or row["n"]
        return f"{round(m * n)}/{n}"
    digits = 1 if key in ("forget.mean_rank", "speedup") else (2 if key == "time_s" else 4)
    return fmt(m, digits) + ("" if s is None else f" ± {fmt(s, digits)}")


def summary_markdown(record: dict, rows: list[dict], pooled: list[dict], split: str = "eval") -> str:
    done = sum(c["status"] == "ok" for c in record["cells"])
    failed = [c for c in record["cells"] if c["status"] != "ok"]
    if split == "eval":
        which = (f"Evaluation request seeds {record['eval_seeds']} only (design seeds {record['design_seeds']} "
                 "are for choosing settings and never reported here).")
    else:
        which = (f"Design request seeds {record['design_seeds']} only: these choose settings, so their "
                 f"numbers are in-sample; report the evaluation seeds {record['eval_seeds']} (summary.md).")
    lines = [f"# Suite summary: {record['dataset']}" + ("" if split == "eval" else " (design seeds)"), "",
             f"Cells finished: {done} of {record['planned']} planned ({len(failed)} failed). "
             f"{which} Each cell is mean ± std over the "
             "seeds (n = seeds finished); p: two-sided paired Wilcoxon signed-rank test against "
             "retrain on the same requests (with 3 seeds the smallest possible p is 0.25; see the pooled "
             "tests below). MIA gap: |MIA AUC - retrain's| on the same request.", ""]
    if not rows:
        lines += [f"No finished {'evaluation' if split == 'eval' else 'design'} cell yet.", ""]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["task"], r["vary"], r["ratio"], r["users"]), []).append(r)
    ordered = sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][3], kv[0][0]))
    for title, cols in (("Headline measures", [m for m in MEASURES if m[0] in HEADLINE]), ("All measures", MEASURES)):
        lines += [f"# {title}", ""]
        for (model, task, vary, ratio, users), rs in ordered:
            lines += [f"## {model}: {task} task, {vary.replace('unrank_', '')} {ratio:g}, {users} users", ""]
            lines += md_table(["method", "n"] + [t for _, t, _ in cols],
                              ([r["method"], r["n"]] + [cell_text(r, k) for k, _, _ in cols] for r in rs))
            lines.append("")
    if pooled:
        lines += [f"## Pooled paired tests against retrain (every {'evaluation' if split == 'eval' else 'design'} "
                  "request of the model)", "",
                  "Mean difference (method - retrain) and p-value, over the requests where both finished.", ""]
        keys = [(k, t) for k, t, _ in MEASURES if k not in _NOT_TESTED]
        def diff(r: dict, k: str) -> str:
            d, p = r.get(f"{k}.diff"), r.get(f"{k}.p")
            return fmt(d, signed=True) + ("" if d is None or p is None else f" (p {fmt(p, 3)})")

        lines += md_table(["model", "method", "n"] + [t for _, t in keys],
                          ([r["model"], r["method"], max((r.get(f"{k}.n") or 0) for k, _ in keys)]
                           + [diff(r, k) for k, _ in keys] for r in pooled))
        lines.append("")
    if record.get("skipped"):
        lines += ["## Not run", "", "Cells the suite file leaves out (`skip`), with its reason:", ""]
        lines += [f"- {model} `{method}`: {why}" for model, ms in record["skipped"].items()
                  for method, why in ms.items()]
        lines.append("")
    if failed:
        lines += ["## Failed cells", ""]
        lines += [f"- `{c['key']}`: {c.get('error', '')}" for c in failed]
        lines.append("")
    return "\n".join(lines)


def summarise(spec: SuiteSpec | None, record: dict, out: str) -> None:
    """Write summary.md / summary.csv (evaluation seeds) and the plots from a suite record, and
    summary-design.md / summary-design.csv when design cells were run (kept apart: those seeds
    choose settings and are never reported beside the evaluation ones)."""
    import csv
    import io

    os.makedirs(out, exist_ok=True)
    eval_rows = []
    for split, stem in (("eval", "summary"), ("design", "summary-design")):
        rows = summary_rows(record, split)
        if split == "eval":
            eval_rows = rows
        elif not rows:
            continue
        pooled = pooled_tests(record, split)
        write_text(os.path.join(out, f"{stem}.md"), summary_markdown(record, rows, pooled, split))
        buf = io.StringIO()
        if rows:
            writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        write_text(os.path.join(out, f"{stem}.csv"), buf.getvalue())
    if not eval_rows:
        logger.info("suite: no finished evaluation cell: no plots")
        return
    try:
        from recbole_unrank import plots

        plots.plot_suite(eval_rows, record, os.path.join(out, "plots"))
    except ImportError:
        logger.info("matplotlib not installed: no suite plots")
