"""Run reports: ``results.json`` (the record scripts read), ``results.md``, ``results.csv``,
``config.yaml`` (the effective settings), ``request.inter``, and plots. Every file is written
to a temporary name and renamed. A method that failed is a row with ``status: failed`` and its
``error`` (and ``time_s``): the table shows it in an ``error`` column."""

from __future__ import annotations

import csv
import io
import json
import logging
import os

import numpy as np
import yaml

from recbole_unrank.atomic import atomic_write
from recbole_unrank.data import request_seed
from recbole_unrank.hooks import pause_point  # noqa: F401  (report.pause_point for callers)
from recbole_unrank.request import write_request_file
from recbole_unrank.tables import fmt, md_table  # noqa: F401  (fmt: report.fmt for callers)

__all__ = ["pause_point", "write_all", "plain", "results_record", "markdown_table", "flat_rows", "write_text",
           "ranks_csv", "effective_settings"]

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
    ("audit.lira_auc", "LiRA AUC"),
    ("audit.score_auc", "score AUC"),
    ("audit.retrain_spearman", "retrain Spearman"),
    ("audit.over_unlearned", "over-unlearned"),
    ("audit.under_unlearned", "under-unlearned"),
    ("fairness.active_ndcg@10_delta", "active NDCG@10 delta"),
    ("fairness.inactive_ndcg@10_delta", "inactive NDCG@10 delta"),
    ("error", "error"),
]

# Settings RecBole's Config derives itself (from the model, eval_args, the machine): not
# written to config.yaml, so that it can be given back as a config file.
DERIVED_SETTINGS = {"MODEL_TYPE", "MODEL_INPUT_TYPE", "eval_type", "single_spec", "local_rank", "device",
                    "use_gpu", "valid_neg_sample_args", "test_neg_sample_args"}


def write_text(path: str, text: str) -> str:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        pause_point(f"write:{os.path.basename(path)}")

    return atomic_write(path, write)


def plain(value):
    """``value`` with numpy scalars and arrays made plain Python (for JSON), dicts and lists walked."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
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
        if (retrain_time and row["method"] not in ("original", "retrain") and not row.get("reference")
                and row.get("status") != "failed" and row["time_s"] > 0):
            row["speedup"] = retrain_time / row["time_s"]
        rows.append(plain(row))
    return {
        "model": cfg["model"],
        "dataset": cfg["dataset"],
        "seed": int(cfg["seed"]),
        "request_seed": request_seed(run.config),
        "request": run.request.summary(),
        "original": plain({k: v for k, v in run.original_info.items()}),
        "rows": rows,
    }


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
    from recbole_unrank.evaluation.measures import align_ranks

    cols = [align_ranks(r["ranks"]["keys"], r["ranks"]["ranks"], keys) for r in rows]
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


def markdown_table(record: dict) -> str:
    rows = flat_rows(record)
    cols = [(k, h) for k, h in TABLE_COLUMNS if any(r[k] is not None for r in rows)]
    return "\n".join(md_table(["method"] + [h for _, h in cols], ([r["method"]] + [r[k] for k, _ in cols] for r in rows)))


def _csv_text(record: dict) -> str:
    rows = flat_rows(record)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["method"] + [k for k, _ in TABLE_COLUMNS])
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _yaml_value(value):
    if isinstance(value, dict):
        return {str(k): _yaml_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_yaml_value(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def effective_settings(config) -> dict:
    """Every setting of the run as plain YAML values, readable back as a config file
    (``data_path`` is written as the folder that holds the dataset folder, as given)."""
    out = {}
    for key, value in config.final_config_dict.items():
        if key in DERIVED_SETTINGS:
            continue
        if key == "data_path" and isinstance(value, str):
            value = os.path.dirname(os.path.normpath(value))  # RecBole appends the dataset name
        if key == "train_neg_sample_args" and isinstance(value, dict) and value.get("distribution") == "none":
            value = None  # RecBole's own spelling of "no negative sampling" as a setting
        out[key] = _yaml_value(value)
    return out


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
    write_text(os.path.join(d, "results.csv"), _csv_text(record))
    write_text(os.path.join(d, "config.yaml"),
               "# The effective settings of this run (give it back with --config_files to repeat it).\n"
               + yaml.safe_dump(effective_settings(run.config), sort_keys=False, allow_unicode=True))
    try:
        from recbole_unrank import plots

        plots.plot_run(run, record)
    except ImportError:
        logger.info("matplotlib not installed: no plots (pip install 'recbole-unrank[plots]')")
    print(table, flush=True)
    return record
