"""What a search leaves in its run folder: ``trials.csv`` and ``trials.md`` (every trial),
``best.yaml`` (readable by ``run_unrank.py --config_files``), ``best.json`` (the search, the
best trial, the original / defaults / best rows) and ``trials.png``. Every file is written to a
temporary name and renamed."""

from __future__ import annotations

import csv
import io
import json
import logging
import os

import yaml

from recbole_unrank.atomic import atomic_write
from recbole_unrank.methods import METHODS
from recbole_unrank.report import write_text
from recbole_unrank.tables import fmt, md_table
from recbole_unrank.tuning.search import TuneSearch, plain

__all__ = ["write_reports", "search_record", "trials_csv", "trials_markdown", "best_yaml", "plot_trials"]

logger = logging.getLogger("recbole_unrank")

# (heading, section of the trial record, key) of the measures trials.md shows per trial
TRIAL_MEASURES = [("forget_hit@10", "forget", "forget_hit@10"), ("forget_hit@20", "forget", "forget_hit@20"),
                  ("mean rank", "forget", "mean_rank"), ("URR", "forget", "urr"),
                  ("valid NDCG@10", "valid", "ndcg@10"), ("x original", None, "valid_ratio"),
                  ("time (s)", None, "time_s")]
# ... and per final row (original, defaults, best), on test
ROW_MEASURES = [("valid NDCG@10", "valid", "ndcg@10"), ("test NDCG@10", "test", "ndcg@10"),
                ("test Recall@10", "test", "recall@10"), ("test NDCG@20", "test", "ndcg@20"),
                ("forget_hit@10", "forget", "forget_hit@10"), ("forget_hit@20", "forget", "forget_hit@20"),
                ("mean rank", "forget", "mean_rank"), ("URR", "forget", "urr"), ("time (s)", None, "time_s")]


def _measure(record: dict, section: str | None, key: str):
    return (record.get(section) or {}).get(key) if section else record.get(key)


def _columns(search: TuneSearch) -> tuple[list[str], list[str], list[str]]:
    names = [s.name for s in search.specs]
    forget = list(dict.fromkeys(k for t in search.trials for k in t.get("forget", {})))
    valid = list(dict.fromkeys(k for t in search.trials for k in t.get("valid", {})))
    return names, forget, valid


def _csv_value(value):
    if value is None:
        return ""
    return json.dumps(value) if isinstance(value, (list, tuple)) else value


def trials_csv(search: TuneSearch) -> str:
    names, forget, valid = _columns(search)
    header = (["trial", "status"] + names + ["objective", "loss", "feasible", "valid_ratio"] + forget
              + [f"valid_{k}" for k in valid] + ["time_s", "error"])
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    for t in search.trials:
        cells = ([t["params"].get(n) for n in names]
                 + [search.objective.value(t), t["loss"], t["feasible"], t.get("valid_ratio")]
                 + [t.get("forget", {}).get(k) for k in forget] + [t.get("valid", {}).get(k) for k in valid]
                 + [t.get("time_s")])
        w.writerow([t["trial"], t["status"]] + [_csv_value(c) for c in cells] + [t.get("error", "")])
    return buf.getvalue()


def trials_markdown(search: TuneSearch, summary: dict) -> str:
    cfg, obj = search.run.config, search.objective
    names = [s.name for s in search.specs]
    best = summary.get("best_trial")
    lines = [
        f"# {cfg['model']} on {cfg['dataset']}: tuning {search.method} ({summary['tool']}, {summary['algo']}, "
        f"{len(search.trials)} trials)",
        "",
        f"Objective: {obj.describe()}. Original validation NDCG@10: {fmt(search.original_ndcg)}.",
        f"Request: {search.run.request.summary()}.",
        "",
        "Search space: " + "; ".join(f"`{s.name}` {s.describe()}" for s in search.specs) + ".",
        "",
    ]
    lines += md_table(
        ["trial"] + [n[len("unrank_"):] for n in names] + ["objective", "feasible"] + [h for h, _, _ in TRIAL_MEASURES],
        ([f"{t['trial']}{' **best**' if best is not None and t['trial'] == best else ''}"]
         + [t["params"].get(n) for n in names]
         + [obj.value(t), "error" if t["status"] != "ok" else t["feasible"]]
         + [_measure(t, s, k) for _, s, k in TRIAL_MEASURES] for t in search.trials))
    lines += ["", "## Best settings against the defaults", ""]
    if best is None:
        lines.append("No trial met the objective's constraint: no best settings (see best.json).")
    if summary.get("defaults_better"):
        lines += ["**The defaults score better on the objective (validation + request) than every trial**: "
                  "keep them, or search longer or in a narrower space.", ""]
    lines += ["Each row below is one more run, reported on test (selection used validation only); "
              "`objective` and `feasible` are on validation.", ""]
    rows = summary.get("rows", [])
    if rows:
        lines += md_table(["model", "objective", "feasible"] + [h for h, _, _ in ROW_MEASURES],
                          ([r["method"], r.get("objective"), r.get("feasible")]
                           + [_measure(r, s, k) for _, s, k in ROW_MEASURES] for r in rows))
    return "\n".join(lines) + "\n"


def best_yaml(search: TuneSearch, best: dict, summary: dict) -> str:
    cfg = search.run.config
    settings = {key: plain(cfg[key]) for key in METHODS[search.method].settings.values()}
    settings.update(best["params"])
    body = yaml.safe_dump({"unrank_method": search.method, **dict(sorted(settings.items()))},
                          sort_keys=False, default_flow_style=None)
    head = (f"# run_unrank_hyper.py: best of {len(search.trials)} trials ({summary['tool']}, {summary['algo']}), "
            f"trial {best['trial']}\n"
            f"# {cfg['model']} on {cfg['dataset']}, seed {cfg['seed']}; objective: {search.objective.describe()}\n"
            f"# searched: {', '.join(s.name for s in search.specs)}\n"
            f"# use: python run_unrank.py -m {cfg['model']} -d {cfg['dataset']} "
            f"--config_files \"<the same config files> best.yaml\"\n")
    return head + body


def _comparison(rows: list[dict]) -> dict:
    """Test utility and forget measures side by side: original, defaults, best."""
    out: dict[str, dict] = {}
    for r in rows:
        for section in ("test", "forget"):
            for k, v in (r.get(section) or {}).items():
                out.setdefault(f"{section}.{k}", {})[r["method"]] = v
    return out


def search_record(search: TuneSearch, options, planned: int, search_s: float, best: dict | None,
                  rows: list[dict], defaults_better: bool) -> dict:
    """``best.json``: the search, the best trial, the original / defaults / best rows."""
    run, cfg, obj = search.run, search.run.config, search.objective
    trials = search.trials
    return plain({
        "model": cfg["model"],
        "dataset": cfg["dataset"],
        "seed": int(cfg["seed"]),
        "request": run.request.summary(),
        "original": run.original_info,
        "search": {
            "tool": options.tool, "algo": options.algo, "method": search.method,
            "params_file": os.path.abspath(options.params_file),
            "space": {s.name: s.describe() for s in search.specs},
            "max_evals": options.max_evals, "planned_evals": planned, "early_stop": options.early_stop,
            "trials": len(trials),
            "stopped_early": len(trials) < planned,
            "feasible_trials": sum(1 for t in trials if t["status"] == "ok" and t["feasible"]),
            "objective": obj.describe(),
            "objective_kind": obj.kind,
            "utility_floor": obj.floor,
            "weight": obj.weight,
            "original_valid_ndcg@10": search.original_ndcg,
            "search_s": search_s,
            "selection": "validation split and the request only; test is read for the best and the defaults",
        },
        "best": None if best is None else {
            "trial": best["trial"], "params": best["params"], "loss": best["loss"], "objective": obj.value(best),
            "valid": best["valid"], "forget": best["forget"], "valid_ratio": best["valid_ratio"],
        },
        "rows": rows,
        "defaults_better": defaults_better,
        "test_comparison": _comparison(rows),
    })


def write_reports(search: TuneSearch, record: dict, best: dict | None) -> str:
    """Every report file of the search into the run folder; returns trials.md's text."""
    d = search.run.run_dir
    summary = {"tool": record["search"]["tool"], "algo": record["search"]["algo"],
               "best_trial": best["trial"] if best else None, "rows": record["rows"],
               "defaults_better": record["defaults_better"]}
    markdown = trials_markdown(search, summary)
    write_text(os.path.join(d, "trials.csv"), trials_csv(search))
    write_text(os.path.join(d, "trials.md"), markdown)
    if best is not None:
        write_text(os.path.join(d, "best.yaml"), best_yaml(search, best, summary))
    write_text(os.path.join(d, "best.json"), json.dumps(record, indent=2) + "\n")
    default = next(r for r in record["rows"] if r["method"] == "default")
    plot_trials(search, os.path.join(d, "trials.png"), best, search.objective.value({"status": "ok", **default}),
                bool(default["feasible"]))
    return markdown


def plot_trials(search: TuneSearch, path: str, best: dict | None, default_value: float | None,
                default_feasible: bool = True) -> str | None:
    """The objective's measure per trial (feasible, infeasible, errors, the running best, the
    defaults), and below it each trial's validation NDCG@10 against the original's."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.info("matplotlib not installed: no trials.png")
        return None
    obj, trials = search.objective, search.trials
    ok = [t for t in trials if t["status"] == "ok"]
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(7.5, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    for group, style in ((True, dict(color="tab:blue", label="feasible")),
                         (False, dict(color="tab:red", marker="x", label="infeasible (below the utility floor)"))):
        pts = [t for t in ok if t["feasible"] == group]
        if pts:
            ax.scatter([t["trial"] for t in pts], [obj.value(t) for t in pts], zorder=3, **style)
    for n, t in enumerate(t for t in trials if t["status"] != "ok"):
        ax.axvline(t["trial"], color="grey", alpha=0.3, lw=4, label="error (no result)" if n == 0 else None)
    run_x, run_y, cur = [], [], None  # running best among feasible trials
    for t in trials:
        if t["status"] == "ok" and t["feasible"] and (cur is None or t["loss"] < cur["loss"]):
            cur = t
        if cur is not None:
            run_x.append(t["trial"])
            run_y.append(obj.value(cur))
    if run_x:
        ax.step(run_x, run_y, where="post", color="tab:blue", alpha=0.5, lw=1, label="best so far")
    if best is not None:
        ax.scatter([best["trial"]], [obj.value(best)], marker="*", s=260, color="gold", edgecolor="black",
                   zorder=4, label=f"best (trial {best['trial']})")
    if default_value is not None:
        ax.axhline(default_value, color="grey", ls="--", lw=1,
                   label="defaults" + ("" if default_feasible else " (infeasible)"))
    ax.set_ylabel(obj.label)
    ax.legend(fontsize=8, loc="best")
    cfg = search.run.config
    ax.set_title(f"{cfg['model']} on {cfg['dataset']}: {search.method} trials (validation + request)")
    ax2.scatter([t["trial"] for t in ok], [t["valid_ratio"] for t in ok],
                c=["tab:blue" if t["meets_floor"] else "tab:red" for t in ok], s=18)
    if obj.kind == "constrained":
        ax2.axhline(obj.floor, color="tab:red", ls="--", lw=1, label=f"utility floor {obj.floor:g}")
        ax2.legend(fontsize=8, loc="best")
    ax2.set_ylabel("valid NDCG@10 / original")
    ax2.set_xlabel("trial")
    xs = [t["trial"] for t in trials]
    if xs:
        ax2.set_xticks(xs if len(xs) <= 30 else xs[:: max(1, len(xs) // 15)])
    fig.tight_layout()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    finally:
        plt.close(fig)
