"""Run reports: ``results.json`` (the record scripts read), ``results.md``, ``results.csv``,
``request.inter``, and plots. Every file is written to a temporary name and renamed."""

from __future__ import annotations

import csv
import io
import json
import logging
import os

import numpy as np

from recbole_unrank.checkpoints import atomic_text
from recbole_unrank.request import write_request_file

__all__ = ["write_all", "results_record", "markdown_table", "flat_rows", "write_text", "ranks_csv"]

logger = logging.getLogger("recbole_unrank")

TABLE_COLUMNS = [
    ("time_s", "time (s)"),
    ("speedup", "speed-up vs retrain"),
    ("test.recall@10", "Recall@10"),
    ("test.recall@20", "Recall@20"),
    ("test.ndcg@10", "NDCG@10"),
    ("test.ndcg@20", "NDCG@20"),
    ("forget.forget_hit@10", "forget_hit@10"),
    ("forget.forget_hit@20", "forget_hit@20"),
    ("forget.mean_rank", "mean rank"),
    ("forget.rdr", "RDR"),
    ("forget.urr", "URR"),
    ("forget.rank_decline_ratio", "decline ratio"),
    ("request_users.ndcg@10", "request users NDCG@10"),
    ("audit.mia_auc", "MIA AUC"),
    ("audit.score_auc", "score AUC"),
    ("audit.retrain_spearman", "retrain Spearman"),
    ("audit.over_unlearned", "over-unlearned"),
    ("audit.under_unlearned", "under-unlearned"),
    ("fairness.active_ndcg@10_delta", "active NDCG@10 delta"),
    ("fairness.inactive_ndcg@10_delta", "inactive NDCG@10 delta"),
]


def write_text(path: str, text: str) -> str:
    return atomic_text(path, text)


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def results_record(run) -> dict:
    cfg = run.config
    rows = []
    retrain_time = next((r["time_s"] for r in run.rows if r["method"] == "retrain"), None)
    for row in run.rows:
        row = {k: v for k, v in row.items() if k != "ranks" and not k.startswith("_")}
        if retrain_time and row["method"] not in ("original", "retrain") and not row.get("reference") and row["time_s"] > 0:
            row["speedup"] = retrain_time / row["time_s"]
        rows.append(_plain(row))
    return {
        "model": cfg["model"],
        "dataset": cfg["dataset"],
        "seed": int(cfg["seed"]),
        "request_seed": _request_seed(run),
        "request": run.request.summary(),
        "original": _plain({k: v for k, v in run.original_info.items()}),
        "rows": rows,
    }


def _request_seed(run) -> int:
    from recbole_unrank.pipeline import request_seed

    return request_seed(run.config)


def ranks_csv(run) -> str:
    """Per forget pair: user and item tokens, then its rank under each row's model (original
    first, retrain and every method after), in the forget loader's pair order."""
    rows = [r for r in run.rows if "ranks" in r]
    if not rows:
        return ""
    keys = rows[0]["ranks"]["keys"]
    n_items = int(run.data.train_ds.item_num)
    ds = run.data.dataset
    u_tok = ds.id2token(ds.uid_field, keys // n_items)
    i_tok = ds.id2token(ds.iid_field, keys % n_items)
    cols = []
    for r in rows:
        order = np.argsort(r["ranks"]["keys"], kind="stable")
        pos = np.searchsorted(r["ranks"]["keys"][order], keys)
        cols.append(r["ranks"]["ranks"][order][pos])
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow([ds.uid_field, ds.iid_field] + [f"rank_{r['method']}" for r in rows])
    for k in range(keys.size):
        writer.writerow([u_tok[k], i_tok[k]] + [int(c[k]) for c in cols])
    return buf.getvalue()


def _get(row: dict, dotted: str):
    cur = row
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def flat_rows(record: dict) -> list[dict]:
    out = []
    for row in record["rows"]:
        flat = {"method": row["method"]}
        for key, _ in TABLE_COLUMNS:
            flat[key] = _get(row, key)
        out.append(flat)
    return out


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if abs(value) >= 100:
            return f"{value:.1f}"
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"
    return str(value)


def markdown_table(record: dict) -> str:
    rows = flat_rows(record)
    cols = [(k, h) for k, h in TABLE_COLUMNS if any(r[k] is not None for r in rows)]
    lines = ["| method | " + " | ".join(h for _, h in cols) + " |",
             "|---" * (len(cols) + 1) + "|"]
    for r in rows:
        lines.append(f"| {r['method']} | " + " | ".join(_fmt(r[k]) for k, _ in cols) + " |")
    return "\n".join(lines)


def _csv_text(record: dict) -> str:
    rows = flat_rows(record)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["method"] + [k for k, _ in TABLE_COLUMNS])
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_all(run) -> dict:
    record = results_record(run)
    d = run.run_dir
    write_request_file(os.path.join(d, "request.inter"), run.request, run.data.dataset)
    write_text(os.path.join(d, "results.json"), json.dumps(record, indent=2) + "\n")
    write_text(os.path.join(d, "ranks.csv"), ranks_csv(run))
    req = record["request"]
    header = (f"# {record['model']} on {record['dataset']} (seed {record['seed']})\n\n"
              f"Request: {req['source']}, {req['pairs']} pairs, {req['users']} users, "
              f"{req['items']} items, {req['skipped']} skipped.\n\n")
    table = markdown_table(record)
    write_text(os.path.join(d, "results.md"), header + table + "\n")
    if len(record["rows"]) > 2:
        write_text(os.path.join(d, "results.csv"), _csv_text(record))
    try:
        from recbole_unrank import plots

        plots.plot_run(run, record)
    except ImportError:
        logger.info("matplotlib not installed: no plots (pip install 'recbole-unrank[plots]')")
    print(table, flush=True)
    return record
