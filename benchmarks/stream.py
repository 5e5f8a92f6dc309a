"""A day of forget requests: N single-user requests in a row on one model (issue 15).

    python benchmarks/stream.py                                  # WMF and LightGCN, 1000 requests each
    python benchmarks/stream.py --models WMF --requests 200      # a shorter stream
    python benchmarks/stream.py --report-only                    # rebuild stream.md from the records

Each request is one real user's 10 most recent train interactions still retained (ml-100k's
timestamps; users in an order drawn from ``--request-seed``, 1001 by default: a held-out
request seed, nothing was tuned on it; a user comes back in a later round only while at
least 10 of their train interactions would remain). The requests are applied one after another
to the same model by :class:`recbole_unrank.stream.RequestStream` (L2UnRank with the project
defaults, the cumulative utility budget ``--guard`` with ``--policy``), each on the data
retained so far.

After every ``--every`` requests a record is written (atomically) with: test NDCG@10 /
Recall@10 of the whole test split (RecBole's evaluator, retained history masked); the request
users' own test NDCG@10 (every user of a request so far) against the original's on the same
users; for every earlier request's pairs, the share ranked within the top 10 now
(forget_hit@10) and the share that came back there after leaving it with its own request; a
plain score AUC of the forgotten pairs against the same users' test pairs (``score_auc``);
time per request. At the retraining points, the MIA audit of DESIGN.md section 4
(``recbole_unrank.measures``, attack fitted on that retraining) for the stream's model, the
original and the retraining.
At three points (a third, two thirds, the end) one retraining without all requests so far
(same config, seed and epoch budget) gives the same measures. Rerunning the same command skips
every finished record: the stream resumes from the last saved state (in ``--work``).

Writes ``benchmarks/results/stream.md``, ``stream.json``, ``stream.png`` and one folder of
records per model under ``benchmarks/results/stream/``.
"""

from __future__ import annotations

import argparse
import copy
import glob
import hashlib
import json
import math
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

PER_REQUEST = 10
TARGETS = {"ndcg_gap": 0.02, "stay_below": 0.99}


def _atomic_json(obj, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, default=float)
    os.replace(tmp, path)


def _atomic_torch(obj, path: str) -> None:
    import torch

    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    torch.save(obj, tmp, pickle_protocol=4)
    os.replace(tmp, path)


def _silence():
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    for name in ("recbole", "recbole_unrank"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _config(model: str, args, extra: dict | None = None):
    from recbole_unrank import pipeline

    files = [os.path.join(ROOT, "config", "ml-100k.yaml"), os.path.join(ROOT, "config", f"{model}.yaml")]
    overrides = {"data_path": os.path.join(ROOT, "dataset"), "checkpoint_dir": os.path.join(args.work, "saved"),
                 "gpu_id": "", "show_progress": False, "seed": args.seed, "epochs": args.epochs,
                 "eval_batch_size": 409600,
                 # the timestamps, for "the user's most recent interactions" (the split is unchanged)
                 "load_col": {"inter": ["user_id", "item_id", "timestamp"]}}
    overrides.update(extra or {})
    return pipeline.build_config(model, "ml-100k", files, overrides)


def _original(config, data, args):
    """The original model: trained once with the project config, cached in the work folder."""
    from recbole_unrank import pipeline

    recipe = "".join(open(os.path.join(ROOT, "config", f), encoding="utf-8").read()
                     for f in ("ml-100k.yaml", f"{config['model']}.yaml")) + f"{args.epochs}/{args.seed}"
    tag = hashlib.sha1(recipe.encode()).hexdigest()[:10]
    path = os.path.join(args.work, "ckpt", f"{config['model']}-ml-100k-{tag}.pth")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if os.path.isfile(path):
        return pipeline.load_checkpoint(config, pipeline.read_checkpoint(path), data.train_ds, path), {"cached": path}
    train, valid, _ = pipeline.make_loaders(config, data)
    model, info = pipeline.train_model(config, train, valid, path, tag="original")
    return model, info


def _measures(stream, model, data, config, original=None) -> dict:
    """Utility and forgetting of ``model`` after the requests applied to ``stream`` so far."""
    import numpy as np

    from recbole_unrank import metrics, pipeline
    from recbole_unrank.adapters import get_adapter
    from recbole_unrank.stream import pair_ranks, score_auc, user_ndcg

    retained = stream.retained_ds()
    _, _, test = pipeline.make_loaders(config, data, retained)
    res, _ = metrics.evaluate_loader(model, test, ["NDCG", "Recall"], [10])
    adapter = get_adapter(model)
    tu, ti = data.test_ds.inter_feat[data.test_ds.uid_field].numpy(), data.test_ds.inter_feat[data.test_ds.iid_field].numpy()
    forgotten = stream.forgotten_rows()
    u, i = data.train_ds.inter_feat[data.train_ds.uid_field].numpy(), data.train_ds.inter_feat[data.train_ds.iid_field].numpy()
    fu, fi = u[forgotten], i[forgotten]
    req_users = np.unique(fu)
    req_users = req_users[np.isin(req_users, tu)]
    hist_test = stream.history(with_valid=True)
    out = {"test": {k: float(v) for k, v in res.items()}}
    out["request_users"] = {"users": int(req_users.size),
                            "ndcg@10": float(user_ndcg(adapter, req_users, hist_test, (tu, ti)).mean())}
    ranks, scores = pair_ranks(adapter, (fu, fi), stream.history())
    mine = np.isin(tu, np.unique(fu))
    _, test_scores = pair_ranks(adapter, (tu[mine], ti[mine]), stream.history())
    out["forget"] = {"pairs": int(fu.size), "forget_hit@10": float((ranks <= 10).mean()),
                     "mean_rank": float(ranks.mean()), "score_auc": score_auc(scores, test_scores)}
    out["_ranks"] = ranks
    return out


def _audit(stream, data, models: dict, retrained, seed: int) -> dict:
    """The MIA audit of DESIGN.md section 4 (``recbole_unrank.measures``): an attack fitted on
    ``retrained`` (members: retained train pairs, non-members: test pairs, of users outside the
    requests), its AUC on every forgotten pair against as many of the same users' test pairs,
    under each model of ``models``; with the plain score AUC on the same pairs."""
    import torch

    from recbole_unrank import measures
    from recbole_unrank.pipeline import score_users

    train = data.train_ds
    forget_ds = train.copy(train.inter_feat[torch.as_tensor(stream.forgotten_rows())])
    auditor = measures.Auditor(stream.retained_ds(), forget_ds, data.test_ds, score_users, seed=seed)
    ref = auditor.probe(retrained, with_attack_data=True)
    attack = measures.fit_attack(ref.members, ref.non_members, seed=seed)
    out = {"retrain": measures.Auditor.measures(ref, attack)}
    for name, model in models.items():
        out[name] = measures.Auditor.measures(auditor.probe(model), attack)
    return out


def _state_path(args, model: str, k: int) -> str:
    return os.path.join(args.work, "state", f"{model}-seed{args.request_seed}-guard{args.guard}-{args.policy}",
                        f"after-{k:05d}.pth")


def run_model(model_name: str, args, out_dir: str) -> None:
    import numpy as np
    import torch

    from recbole_unrank import pipeline
    from recbole_unrank.methods import METHODS
    from recbole_unrank.stream import RequestStream, StreamSettings, recent_requests

    config = _config(model_name, args)
    data = pipeline.load_data(config)
    original, orig_info = _original(config, data, args)
    original.eval()
    requests = recent_requests(data.train_ds, args.requests, PER_REQUEST, args.request_seed,
                               time_field=config["TIME_FIELD"])
    cls = METHODS["l2unrank"]
    method = cls(**pipeline.method_settings(config, cls))
    settings = StreamSettings(guard=args.guard, policy=args.policy)

    def train_fresh(ds, tag="retrain"):
        train, valid, _ = pipeline.make_loaders(config, data, ds)
        return pipeline.train_model(config, train, valid, None, tag=tag)

    points = list(range(args.every, args.requests + 1, args.every))
    if not points or points[-1] != args.requests:
        points.append(args.requests)
    thirds = sorted({min(points, key=lambda p: abs(p - args.requests * f)) for f in (1 / 3, 2 / 3, 1.0)})
    folder = os.path.join(out_dir, "stream", f"{model_name}-seed{args.request_seed}-guard{args.guard:g}-{args.policy}")
    done = {int(os.path.basename(p)[6:11]) for p in glob.glob(os.path.join(folder, "point-*.json"))}
    # resume from the last point with both its record and its saved state
    start = 0
    for k in sorted(done, reverse=True):
        if os.path.isfile(_state_path(args, model_name, k)):
            start = k
            break
    if start:
        saved = torch.load(_state_path(args, model_name, start), map_location="cpu", weights_only=False)
        stream = RequestStream(config, data, saved["model"], method, settings, train_fresh=train_fresh,
                               make_train_loader=lambda ds: pipeline.make_train_loader(config, data, ds),
                               seed=args.request_seed * 10000, kept=saved["kept"], applied=saved["applied"],
                               records=saved["records"], valid_reference=saved["valid_reference"])
        print(f"[stream] {model_name}: resuming after request {start}", flush=True)
    else:
        stream = RequestStream(config, data, copy.deepcopy(original), method, settings, train_fresh=train_fresh,
                               make_train_loader=lambda ds: pipeline.make_train_loader(config, data, ds),
                               seed=args.request_seed * 10000)
    from recbole_unrank.adapters import get_adapter
    from recbole_unrank.stream import pair_ranks

    for k in sorted(done):  # records written before the audit was measured: add it
        path = os.path.join(folder, f"point-{k:05d}.json")
        with open(path, encoding="utf-8") as f:
            point = json.load(f)
        if "retrain" not in point or "audit" in point or not os.path.isfile(_state_path(args, model_name, k)):
            continue
        saved = torch.load(_state_path(args, model_name, k), map_location="cpu", weights_only=False)
        past = RequestStream(config, data, saved["model"], method, StreamSettings(0.0), kept=saved["kept"],
                             applied=saved["applied"], records=saved["records"], valid_reference=1.0)
        retrained, _ = train_fresh(past.retained_ds())  # same config and seed: the same retraining
        point["audit"] = _audit(past, data, {"unlearned": past.model, "original": original}, retrained,
                                args.request_seed)
        _atomic_json(point, path)
        print(f"[stream] {model_name}: audit added to the record after {k}", flush=True)

    t_run = time.perf_counter()
    for k in range(start + 1, args.requests + 1):
        rows = requests[k - 1]
        if not np.isin(rows, stream.kept).all():  # a refused request's rows return in no later request
            rows = rows[np.isin(rows, stream.kept)]
        rec = stream.apply(rows)
        u, i = data.train_ds.inter_feat[data.train_ds.uid_field].numpy(), data.train_ds.inter_feat[data.train_ds.iid_field].numpy()
        post, _ = pair_ranks(get_adapter(stream.model), (u[rows], i[rows]), stream.history())
        rec["post_ranks"] = post.tolist()
        if rec["event"]:
            print(f"[stream] {model_name}: request {k}: budget broken, {rec['event']['policy']} "
                  f"({rec['event']['time_s']:.1f}s)", flush=True)
        if k not in points or k in done:
            continue
        point = {"model": model_name, "after": k, "request_seed": args.request_seed, "guard": args.guard,
                 "policy": args.policy, "code": args.code, "host_load": [round(x, 2) for x in os.getloadavg()]}
        m = _measures(stream, stream.model, data, config)
        o = _measures(stream, original, data, config)
        ranks = m.pop("_ranks")
        o.pop("_ranks")
        post_all = np.concatenate([np.asarray(r["post_ranks"]) for r in stream.records if r["event"] is None
                                   or not r["event"].get("refused")]) if stream.records else np.zeros(0)
        left = post_all > 10
        point["unlearned"] = m
        point["original"] = o
        point["came_back"] = {"pairs_that_left": int(left.sum()),
                              "share_back_in_top10": float((ranks[left] <= 10).mean()) if left.any() else 0.0,
                              "share_of_all_pairs_in_top10": float((ranks <= 10).mean())}
        window = [r for r in stream.records if r["request"] > k - args.every]
        point["time_s"] = {"median": float(np.median([r["time_s"] for r in window])),
                           "max": float(np.max([r["time_s"] for r in window])),
                           "mean": float(np.mean([r["time_s"] for r in window]))}
        point["events"] = [{"request": r["request"], **r["event"]} for r in stream.records if r["event"]]
        point["valid_ratio"] = stream.valid_ndcg() / stream.valid_reference
        if k in thirds:
            retrained, info = train_fresh(stream.retained_ds())
            r = _measures(stream, retrained, data, config)
            r.pop("_ranks")
            point["retrain"] = {**r, "time_s": info["time_s"], "epochs": info["epochs"]}
            point["ndcg_gap"] = m["test"]["ndcg@10"] / max(r["test"]["ndcg@10"], 1e-12) - 1.0
            point["audit"] = _audit(stream, data, {"unlearned": stream.model, "original": original}, retrained,
                                    args.request_seed)
            del retrained
        _atomic_torch({"model": stream.model, "kept": stream.kept, "applied": stream.applied,
                       "records": stream.records, "valid_reference": stream.valid_reference},
                      _state_path(args, model_name, k))
        point["records"] = window
        point["wall_s"] = time.perf_counter() - t_run
        _atomic_json(point, os.path.join(folder, f"point-{k:05d}.json"))
        print(f"[stream] {model_name}: after {k}: test NDCG@10 {m['test']['ndcg@10']:.4f}, forget_hit@10 "
              f"{m['forget']['forget_hit@10']:.3f}, back {point['came_back']['share_back_in_top10']:.3f}, "
              f"request median {point['time_s']['median']:.3f}s"
              + (f", retrain {point['retrain']['test']['ndcg@10']:.4f} (gap {100 * point['ndcg_gap']:+.2f}%)"
                 if "retrain" in point else ""), flush=True)


# ------------------------------------------------------------------------------ report
def load_points(out_dir: str) -> dict:
    by_model: dict = {}
    for path in sorted(glob.glob(os.path.join(out_dir, "stream", "*", "point-*.json"))):
        with open(path, encoding="utf-8") as f:
            p = json.load(f)
        by_model.setdefault(f"{p['model']} (request seed {p['request_seed']}, budget {p['guard']:g} "
                            f"{p['policy']})", []).append(p)
    for pts in by_model.values():
        pts.sort(key=lambda p: p["after"])
    return by_model


def _slope(xs, ys) -> float:
    import numpy as np

    if len(xs) < 2:
        return float("nan")
    return float(np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)[0])


def write_report(out_dir: str, argv: str) -> str:
    import numpy as np

    data = load_points(out_dir)
    L = ["# A day of requests: many single-user requests in a row (issue 15)", ""]
    cmds = []
    for name, pts in data.items():
        p0 = pts[-1]
        seed = "" if p0["request_seed"] == 1001 else f" --request-seed {p0['request_seed']}"
        cmds.append(f"{name}: `python benchmarks/stream.py --models {p0['model']} --requests {p0['after']}{seed}"
                    f" --guard {p0['guard']:g} --policy {p0['policy']}`")
    L.append("Produced by " + "; ".join(cmds) + " (records in `benchmarks/results/stream/`; "
             "`--report-only` rebuilds this file from them). ml-100k, "
             f"each request one user's {PER_REQUEST} most recent retained train interactions, L2UnRank with "
             "the project defaults, requests applied one after another to one model. CPU, one thread, shared "
             "machine: times are noisy; compare them within one run.")
    codes = sorted({p.get("code", "?") for pts in data.values() for p in pts})
    L.append(f"Package code: commit {', '.join(f'`{c}`' for c in codes)}.")
    L.append("")
    L += ["## Targets", "", "| model | target | measured | holds |", "|---|---|---|---|"]
    summary = {}
    for name, pts in data.items():
        last = pts[-1]
        gaps = [p for p in pts if "retrain" in p]
        s = {"requests": last["after"]}
        if gaps:
            g = gaps[-1]
            s["ndcg_gap"] = g["ndcg_gap"]
            L.append(f"| {name} | test NDCG@10 after {g['after']} requests within 2% of retraining without them | "
                     f"{100 * g['ndcg_gap']:+.2f}% | {'yes' if abs(g['ndcg_gap']) <= TARGETS['ndcg_gap'] or g['ndcg_gap'] > 0 else '**no**'} |")
        stay = 1.0 - last["came_back"]["share_of_all_pairs_in_top10"]
        L.append(f"| {name} | >= 99% of earlier requests' pairs stay below the viewing threshold (top 10), after "
                 f"{last['after']} | {100 * stay:.2f}% | {'yes' if stay >= TARGETS['stay_below'] else '**no**'} |")
        xs = [p["after"] for p in pts]
        med = [p["time_s"]["median"] for p in pts]
        slope = _slope(xs, med)
        first, lastm = med[0], med[-1]
        s.update(stay_below=stay, time_first=first, time_last=lastm, time_slope=slope)
        growth = slope * (xs[-1] - xs[0]) / max(float(np.median(med)), 1e-9)  # fitted change over the stream
        s["time_fitted_growth"] = growth
        if len(xs) < 2:
            L.append(f"| {name} | time per request does not grow along the stream | one window only "
                     f"(median {first:.3f} s) | - |")
            summary[name] = s
            continue
        L.append(f"| {name} | time per request does not grow along the stream | median {first:.3f} s in the first "
                 f"window, {lastm:.3f} s in the last; a line fitted to every window's median: "
                 f"{1000 * slope:+.4f} ms per request, {100 * growth:+.0f}% over the stream (the load average "
                 f"moved between {min(p['host_load'][0] for p in pts if 'host_load' in p):.1f} and "
                 f"{max(p['host_load'][0] for p in pts if 'host_load' in p):.1f}) | {'yes' if growth < 0.5 else '**no**'} |")
        summary[name] = s
    L.append("")
    for name, pts in data.items():
        L += [f"## {name}", "",
              "| after | test NDCG@10 | original | retrain | request users' NDCG@10 (users) | original on them | "
              "forget_hit@10 (all earlier) | came back to top 10 | score AUC (forget vs same users' test) | "
              "retrain AUC | MIA audit: unlearned / original / retrain | request s: median (max) | "
              "valid NDCG@10 / original's | events so far |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for p in pts:
            m, o, r = p["unlearned"], p["original"], p.get("retrain")
            L.append(f"| {p['after']} | {m['test']['ndcg@10']:.4f} | {o['test']['ndcg@10']:.4f} | "
                     f"{r['test']['ndcg@10']:.4f} ({100 * p['ndcg_gap']:+.2f}%) | " if r else
                     f"| {p['after']} | {m['test']['ndcg@10']:.4f} | {o['test']['ndcg@10']:.4f} | - | ")
            L[-1] += (f"{m['request_users']['ndcg@10']:.4f} ({m['request_users']['users']}) | "
                      f"{o['request_users']['ndcg@10']:.4f} | {m['forget']['forget_hit@10']:.4f} | "
                      f"{p['came_back']['share_back_in_top10']:.4f} | {m['forget']['score_auc']:.3f} | "
                      f"{r['forget']['score_auc']:.3f} | " if r else
                      f"{m['request_users']['ndcg@10']:.4f} ({m['request_users']['users']}) | "
                      f"{o['request_users']['ndcg@10']:.4f} | {m['forget']['forget_hit@10']:.4f} | "
                      f"{p['came_back']['share_back_in_top10']:.4f} | {m['forget']['score_auc']:.3f} | - | ")
            a = p.get("audit")
            L[-1] += ((f"{a['unlearned']['mia_auc']:.3f} / {a['original']['mia_auc']:.3f} / "
                       f"{a['retrain']['mia_auc']:.3f} | ") if a else "- | ")
            L[-1] += (f"{p['time_s']['median']:.3f} ({p['time_s']['max']:.3f}) | {p['valid_ratio']:.4f} | "
                      f"{len(p['events'])} |")
        L.append("")
        rt = [p for p in pts if "retrain" in p]
        if rt:
            L.append("Retraining without all requests so far: " + "; ".join(
                f"after {p['after']}: {p['retrain']['time_s']:.0f} s ({p['retrain']['epochs']} epochs), test "
                f"NDCG@10 {p['retrain']['test']['ndcg@10']:.4f}, forget_hit@10 {p['retrain']['forget']['forget_hit@10']:.4f}"
                for p in rt) + ".")
            L.append("")
        ev = pts[-1]["events"]
        guard = pts[-1]["guard"]
        if guard:
            L.append(f"Cumulative budget: validation NDCG@10 of the whole split >= {guard:g} x the original's, "
                     f"policy `{pts[-1]['policy']}`. "
                     + (f"It broke {len(ev)} time(s), costing {sum(e['time_s'] for e in ev):.0f} s of "
                        f"{ev[0]['policy']} in all; the first: " + "; ".join(
                         f"request {e['request']} (valid x{e['valid_before']:.4f} -> x{e['valid_after']:.4f}, "
                         f"{e['policy']} {e['time_s']:.1f} s)" for e in ev[:5])
                        + ("; ..." if len(ev) > 5 else "") + "." if ev else "It never broke."))
        else:
            L.append("No cumulative budget in this run (`--guard 0`).")
        L.append("")
    L += ["![stream](stream.png)", "",
          "Notes: `forget_hit@10 (all earlier)` ranks every pair of every request so far under the current model "
          "with only retained history masked; `came back` is the share of the pairs that had left the top 10 "
          "right after their own request and are back in it now. `score AUC` is P(score of a forgotten pair > "
          "score of a test pair of the same users) under the model: retraining's value is the reference (a plain "
          "score test). `MIA audit` (at the retraining points): the membership-inference audit of DESIGN.md "
          "section 4 (`recbole_unrank.measures`: a logistic attack fitted on the retrained model, its AUC on "
          "the forgotten pairs against as many of the same users' test pairs; about 0.5 for retraining, above "
          "for a model that still holds the data, below for over-unlearning). Request users' NDCG@10 is over the test "
          "items of every user with a request so far (train and valid history masked).", ""]
    text = "\n".join(L)
    path = os.path.join(out_dir, "stream.md")
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(path + ".tmp", path)
    _atomic_json({"summary": summary, "points": data}, os.path.join(out_dir, "stream.json"))
    _plot(data, out_dir)
    return path


def _plot(data: dict, out_dir: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 5))
    for name, pts in data.items():
        xs = [p["after"] for p in pts]
        line = axes[0].plot(xs, [p["unlearned"]["test"]["ndcg@10"] for p in pts], "o-", ms=3, label=f"{name}")[0]
        rt = [p for p in pts if "retrain" in p]
        axes[0].plot([p["after"] for p in rt], [p["retrain"]["test"]["ndcg@10"] for p in rt], "s--",
                     color=line.get_color(), label=f"{name}: retrain")
        axes[1].plot(xs, [p["unlearned"]["forget"]["forget_hit@10"] for p in pts], "o-", ms=3,
                     color=line.get_color(), label=f"{name}: forget_hit@10")
        axes[1].plot([p["after"] for p in rt], [p["retrain"]["forget"]["forget_hit@10"] for p in rt], "s--",
                     color=line.get_color(), label=f"{name}: retrain")
        axes[2].plot(xs, [p["time_s"]["median"] for p in pts], "o-", ms=3, color=line.get_color(), label=name)
    axes[0].set_title("test NDCG@10")
    axes[1].set_title("earlier requests' pairs in the top 10")
    axes[2].set_title("seconds per request (median of each window)")
    for ax in axes:
        ax.set_xlabel("requests applied")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=1, frameon=False)
    path = os.path.join(out_dir, "stream.png")
    fig.savefig(path + ".tmp.png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    os.replace(path + ".tmp.png", path)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="WMF,LightGCN")
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--every", type=int, default=50, help="requests between two records")
    p.add_argument("--request-seed", type=int, default=1001, help="held-out request seed (1001+ for reporting)")
    p.add_argument("--seed", type=int, default=2020, help="training seed of the original and the retrainings")
    p.add_argument("--epochs", type=int, default=40, help="epoch budget of the original and every retraining")
    p.add_argument("--guard", type=float, default=None, help="cumulative budget (default: unrank_stream_guard)")
    p.add_argument("--policy", default=None, help="refuse | finetune | retrain (default: unrank_stream_policy)")
    p.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "recbole_unrank_stream"))
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args(argv)
    shown = " ".join(sys.argv[1:] if argv is None else argv)
    import subprocess

    args.code = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                               text=True).stdout.strip()
    if args.report_only:
        print(write_report(args.out, shown.replace("--report-only", "").strip()))
        return
    sys.argv = [sys.argv[0]]
    os.makedirs(args.work, exist_ok=True)
    os.chdir(args.work)
    _silence()
    import torch

    import recbole_unrank  # noqa: F401

    _silence()
    torch.set_num_threads(args.threads)
    from recbole_unrank.stream import StreamSettings

    if args.guard is None or args.policy is None:
        cfg = _config("WMF", args)
        args.guard = cfg["unrank_stream_guard"] if args.guard is None else args.guard
        args.policy = cfg["unrank_stream_policy"] if args.policy is None else args.policy
    StreamSettings(args.guard, args.policy)  # bad values: one clear line
    for model in [m.strip() for m in args.models.split(",") if m.strip()]:
        run_model(model, args, args.out)
    print(write_report(args.out, shown))


if __name__ == "__main__":
    main()
