"""What consolidation does to a WMF stream (issue 23): one state, several ways to re-solve it.

    OMP_NUM_THREADS=1 python benchmarks/consolidation_probe.py            # ml-100k WMF, 40 requests
    python benchmarks/consolidation_probe.py --requests 4 --dataset tiny --out /tmp/probe   # a smoke run

``--requests`` single-user requests (request seed 1001, each user's 10 most recent retained
train interactions, as ``benchmarks/stream.py``) are applied one after another with
``l2unrank_twosided`` and no budget. At that state the touched blocks (the requests' users and
items) are re-solved in several ways, each from the same state, and a reference is retrained on
the retained data; each row gives test NDCG@10 (train and valid history masked, the retained
train part) and the monitor part's validation NDCG@10 against the original's:

* ``als``: the ``consolidate`` policy (:func:`recbole_unrank.stream.consolidate_blocks`): one
  exact ALS sweep of the touched users, then items, to the retained optimum;
* ``difference, k sweeps``: the same blocks to the two-sided update's difference-form fixed
  point taken from the *original* model (``grad L_ret(theta) = grad L_full(theta_original)``);
* ``finetune touched``: the graph-model path forced on WMF (Adam over the retained rows of the
  touched users and items);
* ``two-sided, all at once``: the two-sided update of all the requests as one, from the original.

Writes ``consolidation_probe.md`` / ``.json`` in ``--out`` (default ``benchmarks/results``); the
original is cached in ``--work`` (shared with ``benchmarks/stream.py``).
"""

from __future__ import annotations

import argparse
import copy
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for path in (ROOT, HERE):
    if path not in sys.path:
        sys.path.insert(0, path)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="ml-100k")
    p.add_argument("--requests", type=int, default=40)
    p.add_argument("--request-seed", type=int, default=1001)
    p.add_argument("--seed", type=int, default=2020)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "recbole_unrank_stream"))
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    args = p.parse_args(argv)
    args.code = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                               text=True).stdout.strip()
    sys.argv = [sys.argv[0]]
    os.makedirs(args.work, exist_ok=True)
    out_dir = os.path.abspath(args.out)
    os.chdir(args.work)
    import stream as bench  # benchmarks/stream.py

    bench._silence()
    import numpy as np
    import torch

    from recbole_unrank import pipeline
    from recbole_unrank.adapters import get_adapter
    from recbole_unrank.methods import UnlearnTask
    from recbole_unrank.methods.objective import Objective
    from recbole_unrank.methods.twosided import TwoSidedProblem
    from recbole_unrank.request import request_from_pairs
    from recbole_unrank.stream import RequestStream, StreamSettings, consolidate_blocks, recent_requests, user_ndcg
    from recbole_unrank.tables import fmt, md_table

    torch.set_num_threads(1)
    ns = argparse.Namespace(dataset=args.dataset, seed=args.seed, epochs=args.epochs, work=args.work,
                            request_seed=args.request_seed, guard=0.0, policy="refuse", method="l2unrank_twosided",
                            code=args.code, every=50, requests=args.requests)
    job = bench._Job("WMF", ns, os.path.join(args.work, "probe"))
    data, config = job.data, job.config
    train = data.train_ds
    u, i = bench._pairs(train)
    tu, ti = bench._pairs(data.test_ds)
    stream = job.stream(0, StreamSettings(0.0, "refuse"))
    reference = stream.valid_reference
    for rows in recent_requests(train, args.requests, bench.PER_REQUEST, args.request_seed,
                                time_field=config["TIME_FIELD"]):
        stream.apply(rows)
    keep = np.zeros(u.size, dtype=bool)
    keep[stream.kept] = True
    touched = stream.forgotten_rows()

    def measure(model) -> dict:
        view = RequestStream(config, data, model, job.method, StreamSettings(0.0, "refuse"), kept=stream.kept,
                             applied=stream.applied, valid_reference=reference)
        test = user_ndcg(get_adapter(model), np.unique(tu), view.history(with_valid=True), (tu, ti)).mean()
        return {"test_ndcg@10": float(test), "monitor_ratio": view.valid_ndcg() / reference}

    def difference(model, sweeps: int) -> None:
        users, items = train.inter_feat[train.uid_field], train.inter_feat[train.iid_field]
        problems = []
        for m in (model, job.original):
            a = get_adapter(m)
            um = torch.zeros(a.n_users, dtype=torch.bool)
            im = torch.zeros(a.n_items, dtype=torch.bool)
            um[users[touched]] = True
            im[items[touched]] = True
            neg = torch.randint(1, a.n_items, (users.numel(), 1), generator=torch.Generator().manual_seed(0))
            obj = Objective(a, users, items, neg, "training", int(config["train_batch_size"]))
            problems.append(TwoSidedProblem(a, obj, torch.as_tensor(keep), um, im, 0.0, 0))
        problem = problems[0]
        problem.g0 = problems[1].g0  # the target taken at the original model
        for _ in range(sweeps):
            problem.half_sweep("user")
            problem.half_sweep("item")
        get_adapter(model).invalidate()

    rows = {"original": measure(job.original), f"after {args.requests} requests (two-sided, no budget)":
            measure(stream.model)}
    variants = {
        "consolidate: exact ALS sweep to the retained optimum": lambda m: consolidate_blocks(m, train, keep, touched),
        "difference form vs the original, 1 sweep": lambda m: difference(m, 1),
        "difference form vs the original, 8 sweeps": lambda m: difference(m, 8),
        "fine-tune the touched rows, 2 epochs, lr 1e-3": lambda m: consolidate_blocks(
            m, train, keep, touched, epochs=2, lr=1e-3, force_finetune=True,
            make_train_loader=lambda ds: pipeline.make_train_loader(config, data, ds)),
    }
    for name, fn in variants.items():
        model = copy.deepcopy(stream.model)
        fn(model)
        rows[name] = measure(model)
    once = copy.deepcopy(job.original)
    request = request_from_pairs(train, u[touched], i[touched], "file")
    res = job.method(UnlearnTask(model=once, model_name="WMF", train_ds=train, retain_ds=None, forget_ds=None,
                                 request_index=request.index, seed=1, valid_ds=data.valid_ds))
    rows["two-sided, all the requests at once from the original"] = measure(res.model)
    retrained, info = job.train_fresh(stream.retained_ds())
    rows[f"reference: retrained on the retained data ({info['epochs']} epochs)"] = measure(retrained)
    record = {"dataset": args.dataset, "requests": args.requests, "request_seed": args.request_seed,
              "code": args.code, "rows": rows}
    bench._write_json(record, os.path.join(out_dir, "consolidation_probe.json"))
    cmd = "OMP_NUM_THREADS=1 python benchmarks/consolidation_probe.py" + (
        "" if args.requests == 40 and args.dataset == "ml-100k" else f" --requests {args.requests} --dataset {args.dataset}"
    ) + ("" if args.epochs == 40 else f" --epochs {args.epochs}")
    L = ["# What consolidation does to a WMF stream (issue 23)", "",
         f"Produced by `{cmd}` (code `{args.code}`): {args.dataset}, WMF, {args.requests} single-user requests "
         f"(request seed {args.request_seed}) applied with `l2unrank_twosided` and no budget; each row below starts "
         "from that same state (the first two excepted). Test NDCG@10: every test user, train (retained) and valid "
         "history masked; monitor: the validation split's monitor part, against the original's.", "",
         *md_table(["model", "test NDCG@10", "monitor NDCG@10 / original's"],
                   ([k, fmt(v["test_ndcg@10"]), fmt(v["monitor_ratio"])] for k, v in rows.items())), ""]
    from recbole_unrank.report import write_text

    print(write_text(os.path.join(out_dir, "consolidation_probe.md"), "\n".join(L)))


if __name__ == "__main__":
    main()
