"""NeuMF full-sort evaluation: the all-item scorer against RecBole's per-pair ``predict`` path.

    python benchmarks/neumf_scoring.py [--checkpoint benchmarks/out/originals/NeuMF-ml-100k.pth]

Loads a NeuMF checkpoint (or trains a short one on ml-100k if it is missing), evaluates the
test split with ``recbole_unrank.evaluation.metrics.evaluate_loader`` through each path, alternating them
``--repeats`` times in one process, and writes benchmarks/results/neumf_scoring.{md,json}:
median seconds of each, their ratio, and whether the metrics agree.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

import recbole_unrank  # noqa: E402,F401
from recbole_unrank import pipeline  # noqa: E402
from recbole_unrank.evaluation import metrics  # noqa: E402
from recbole_unrank.models.neumf_scoring import neumf_full_sort_predict  # noqa: E402
from recbole_unrank.report import write_text  # noqa: E402
from recbole_unrank.tables import fmt, md_table  # noqa: E402


def _original(checkpoint: str | None):
    """The NeuMF to score and the test loader: the checkpoint if it exists, else a short
    training run (no request, no other evaluation: only scoring is timed)."""
    files = [os.path.join(ROOT, "config", "ml-100k.yaml"), os.path.join(ROOT, "config", "NeuMF.yaml")]
    overrides = {"checkpoint_dir": os.path.join(HERE, "out", "ckpt")}
    if not (checkpoint and os.path.isfile(checkpoint)):
        checkpoint = None
        overrides["epochs"] = 5  # a short original is enough to time scoring
    config = pipeline.build_config("NeuMF", "ml-100k", files, overrides)
    ckpt = pipeline.read_checkpoint(checkpoint) if checkpoint else None
    if ckpt is not None:
        pipeline.adopt_checkpoint_config(config, ckpt)
    data = pipeline.load_data(config)
    train, valid, test = pipeline.make_loaders(config, data)
    if ckpt is not None:
        return pipeline.load_checkpoint(config, ckpt, data.train_ds, checkpoint), test, os.path.relpath(checkpoint, ROOT)
    model, _ = pipeline.train_model(config, train, valid, tag="original")
    return model, test, "trained for 5 epochs in this run"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=os.path.join(HERE, "out", "originals", "NeuMF-ml-100k.pth"))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=os.path.join(HERE, "results", "neumf_scoring"))
    args = p.parse_args(argv)

    from recbole.model.general_recommender.neumf import NeuMF

    model, test, source = _original(args.checkpoint)
    names, topk = ["NDCG", "Recall"], [10, 20]

    def per_pair(self, interaction):
        raise NotImplementedError  # what RecBole's NeuMF does: the evaluator falls back to predict

    times = {"all_items": [], "per_pair": []}
    results = {}
    for _ in range(args.repeats):
        for path, scorer in (("all_items", neumf_full_sort_predict), ("per_pair", per_pair)):
            NeuMF.full_sort_predict = scorer
            t0 = time.perf_counter()
            results[path], _ = metrics.evaluate_loader(model, test, names, topk)
            times[path].append(time.perf_counter() - t0)
            print(f"{path}: {times[path][-1]:.2f}s {results[path]}", flush=True)
    NeuMF.full_sort_predict = neumf_full_sort_predict

    med = {k: statistics.median(v) for k, v in times.items()}
    record = {
        "command": "python benchmarks/neumf_scoring.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "model": source, "torch_threads": torch.get_num_threads(), "load_average": os.getloadavg()[0],
        "times_s": times, "median_s": med, "speedup": med["per_pair"] / med["all_items"],
        "metrics": results, "metrics_equal": results["all_items"] == results["per_pair"],
    }
    md = [
        "# NeuMF full-sort evaluation on ml-100k (test split)", "",
        f"Command: `{record['command'].strip()}`; model: {source}; "
        f"{record['torch_threads']} torch thread(s), load average {record['load_average']:.1f}.", "",
        *md_table(["path", "median s", "runs (s)"],
                  ([k, fmt(med[k], 2), ", ".join(fmt(t, 2) for t in v)] for k, v in times.items())),
        "", f"All-item scorer {record['speedup']:.2f}x faster; metrics equal: "
        f"**{record['metrics_equal']}** ({results['all_items']}).", "",
    ]
    write_text(args.out + ".json", json.dumps(record, indent=2) + "\n")
    write_text(args.out + ".md", "\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
