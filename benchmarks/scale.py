"""Real-time forget requests at scale (issue 7): L2UnRank latency, growth and drift.

    python benchmarks/scale.py                           # everything, about 20 min on 2 cores
    python benchmarks/scale.py --sizes 0.1M,1M --models LightGCN --users 5
    python benchmarks/scale.py --parts latency --sizes 5M

Three parts, each in fresh worker processes (one per dataset, so every dataset's figures come
from a clean interpreter):

1. ``latency``: one request = 10 train interactions of one user (``request_from_pairs`` over
   that user's train rows). The original model is trained once and kept in memory; each request
   gets a private copy of it (``copy.deepcopy``, not timed) and L2UnRank (project defaults:
   user-block Gauss-Newton + calibrated step) is called directly on an ``UnlearnTask``, so the
   time is the method's own (scope, weights, solve, step calibration, cache refresh), without
   evaluation. Median and spread over ``--users`` different users, for each model, on ml-100k
   and on synthetic datasets (``recbole_unrank.synthetic``, written as RecBole atomic files
   under ``dataset/synth-*``). Beside it, one training epoch of RecBole's own trainer on the
   same data, measured in the same worker.
2. ``growth``: time and peak memory against the dataset size (``--sizes``, fixed request of one
   user) and against the request size (``--request-sizes`` users of 10 interactions each, on
   ``--growth-size``); log axes. Peak memory is the process's peak resident set size during the
   call: the kernel's high-water mark (``VmHWM``) is reset just before the call
   (``/proc/self/clear_refs``) and read just after, with glibc's mmap threshold pinned
   (``MALLOC_MMAP_THRESHOLD_``) so that freed tensors go back to the system and later points
   start clean. A cProfile of one request per (model, dataset) names what dominates.
3. ``successive``: ``--steps`` single-user requests applied one after another to the same model
   on ml-100k (each drawn from the current retained data, which shrinks), with test NDCG@10 and
   the forget measures over all requests so far after each step (pipeline's ``make_loaders`` /
   ``make_forget_loader`` with the cumulative retained set, ``metrics.evaluate_loader``), against
   one retraining without all of them (same config, seed and epoch budget).

Writes ``benchmarks/results/scale.md``, ``scale.json`` and ``scale_*.png``. No GPU figures: the
device is the CPU (``gpu_id: ''``); ``tests/test_scale_paths.py`` runs the CUDA path where a
GPU exists.
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import gc
import json
import math
import os
import pstats
import resource
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

MODELS = ["WMF", "NeuMF", "LightGCN"]
# Synthetic datasets: interactions -> (users, items). The generator lands about 4% short of
# its target, so it is asked for a little more.
SYNTH_SHAPES = {100_000: (5_000, 3_000), 1_000_000: (20_000, 10_000), 5_000_000: (50_000, 20_000),
                20_000_000: (150_000, 50_000)}
GEN_OVERSHOOT = 1.04
REQUEST_INTERACTIONS = 10
TARGETS = {
    "ml100k_lightgcn_s": 1.0,  # one single-user request on ml-100k with LightGCN
    "large_s": 10.0,  # on 5M interactions, every model
    "large_peak_gib": 4.0,  # on 5M interactions, every model (issue 15)
    "lightgcn_5m_s": 0.3,  # LightGCN, one single-user request on 5M, a prepared model (issue 15)
    "lightgcn_growth": 1.5,  # LightGCN, request time 1M -> 5M (issue 15)
    "drift": 0.03,  # test NDCG@10 after the successive requests vs retraining without them
}
GIB = 1024**3


# =========================================================================== small helpers
def parse_size(text: str) -> int:
    t = text.strip().upper()
    mult = 1
    if t.endswith("M"):
        mult, t = 1_000_000, t[:-1]
    elif t.endswith("K"):
        mult, t = 1_000, t[:-1]
    return int(round(float(t) * mult))


def size_tag(n: int) -> str:
    return f"{n / 1e6:g}M" if n >= 100_000 else f"{n / 1e3:g}K"


def synth_name(n: int) -> str:
    return "synth-" + size_tag(n).lower()


def synth_shape(n: int) -> tuple[int, int]:
    if n in SYNTH_SHAPES:
        return SYNTH_SHAPES[n]
    return max(1_000, n // 100), max(500, n // 250)


def _status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def rss_bytes() -> int:
    return _status_kib("VmRSS") * 1024


class PeakMeter:
    """Peak resident set size of this process over a block of code.

    Resets the kernel's high-water mark (``echo 5 > /proc/self/clear_refs``, Linux >= 4.0) and
    reads ``VmHWM`` after; where the reset is refused, a thread samples ``VmRSS`` every 2 ms
    (a lower bound: a spike shorter than that is missed)."""

    def __init__(self):
        self.method = "VmHWM reset"
        self._stop = threading.Event()
        self._sampled = 0
        self._thread = None

    def __enter__(self):
        gc.collect()
        self.before = rss_bytes()
        try:
            with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
                f.write("5")
        except OSError:
            self.method = "VmRSS sampled every 2 ms"
            self._sampled = self.before
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self._sampled = max(self._sampled, rss_bytes())
            time.sleep(0.002)

    def __exit__(self, *exc):
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.peak = max(self._sampled, rss_bytes())
        else:
            self.peak = _status_kib("VmHWM") * 1024
        self.delta = max(0, self.peak - self.before)
        return False


def quantiles(values: list[float]) -> dict:
    import numpy as np

    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return {}
    return {"median": float(np.median(v)), "p10": float(np.percentile(v, 10)),
            "p90": float(np.percentile(v, 90)), "min": float(v.min()), "max": float(v.max()), "n": int(v.size)}


def top_functions(profile: cProfile.Profile, n: int = 40) -> list[dict]:
    stats = pstats.Stats(profile)
    rows = []
    for (path, line, func), (cc, nc, tt, ct, _) in stats.stats.items():
        short = path.replace(ROOT + os.sep, "").replace(os.path.dirname(os.__file__), "<py>")
        if "site-packages" in short:
            short = short.split("site-packages" + os.sep, 1)[1]
        rows.append({"function": f"{short}:{line}({func})" if line else func, "calls": int(nc),
                     "tottime_s": float(tt), "cumtime_s": float(ct)})
    rows.sort(key=lambda r: -r["tottime_s"])
    return rows[:n]


# =========================================================================== the worker
def _silence():
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger().setLevel(logging.ERROR)
    for name in ("recbole", "recbole_unrank"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _config(model: str, dataset: str, spec: dict, extra: dict | None = None):
    from recbole_unrank import pipeline

    files = [os.path.join(ROOT, "config", f"{model}.yaml")]
    if dataset == "ml-100k":
        files.insert(0, os.path.join(ROOT, "config", "ml-100k.yaml"))
    overrides = {
        "data_path": os.path.join(ROOT, "dataset"),
        "checkpoint_dir": os.path.join(spec["work"], "saved"),
        "gpu_id": "",
        "show_progress": False,
        "seed": spec["seed"],
        "eval_batch_size": 409600,
    }
    if dataset == "ml-100k":
        overrides["epochs"] = spec["epochs_100k"]
        if spec.get("lr_100k"):
            overrides["learning_rate"] = spec["lr_100k"]
    else:
        overrides["epochs"] = spec["synth_epochs"]
        overrides["train_batch_size"] = spec["synth_batch"]
    overrides.update(extra or {})
    return pipeline.build_config(model, dataset, files, overrides)


def _train_loader(config, data, train_ds):
    from recbole.data.utils import create_samplers, get_dataloader

    samplers = create_samplers(config, data.dataset, [train_ds, data.valid_ds, data.test_ds])
    return get_dataloader(config, "train")(config, train_ds, samplers[0], shuffle=config["shuffle"])


def _fresh_model(config, train_ds):
    from recbole.utils import init_seed

    from recbole_unrank.models import get_model

    init_seed(config["seed"], config["reproducibility"])
    return get_model(config["model"])(config, train_ds).to(config["device"])


def _time_epochs(config, model, loader, epochs: int) -> list[float]:
    """``epochs`` epochs of RecBole's trainer on ``loader`` (no validation), each timed."""
    from recbole.utils import get_trainer

    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    times = []
    model.train()
    for e in range(epochs):
        t0 = time.perf_counter()
        trainer._train_epoch(loader, e, show_progress=False)
        times.append(time.perf_counter() - t0)
    model.eval()
    return times


def _original(config, data, spec, out: dict):
    """The original model, in memory: ml-100k trained with early stopping (cached across runs
    in the work folder), a synthetic dataset for ``synth_epochs`` epochs (timed; quality is
    irrelevant to latency). Also one timed training epoch on the same data."""
    import torch

    from recbole_unrank import pipeline

    model_name, dataset = config["model"], config["dataset"]
    t0 = time.perf_counter()
    train = _train_loader(config, data, data.train_ds)
    out["train_loader_s"] = time.perf_counter() - t0
    out["train_batch_size"] = int(config["train_batch_size"])
    if dataset == "ml-100k":
        import hashlib

        recipe = "".join(open(os.path.join(ROOT, "config", f), encoding="utf-8").read()
                         for f in ("ml-100k.yaml", f"{model_name}.yaml"))
        recipe += f"{spec['epochs_100k']}/{config['learning_rate']}/{spec['seed']}"
        tag = hashlib.sha1(recipe.encode()).hexdigest()[:10]  # a changed config trains again
        path = os.path.join(spec["work"], "ckpt", f"{model_name}-{dataset}-e{spec['epochs_100k']}-{tag}.pth")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if os.path.isfile(path) and not spec["retrain_originals"]:
            t0 = time.perf_counter()  # what the CLI does: RecBole builds the model, then the state loads
            model = pipeline.load_checkpoint(config, pipeline.read_checkpoint(path), data.train_ds, path)
            out["model_init_s"] = time.perf_counter() - t0
            out["original"] = {"cached": path}
        else:
            _, valid, _ = pipeline.make_loaders(config, data)
            model, info = pipeline.train_model(config, train, valid, path, tag="original")
            out["original"] = {**info, "checkpoint": path}
        # one epoch of RecBole's trainer on the same data, on a fresh model (what a retrain does)
        out["epoch_s"] = _time_epochs(config, _fresh_model(config, data.train_ds), train, 1)[0]
    else:
        t0 = time.perf_counter()
        model = _fresh_model(config, data.train_ds)
        out["model_init_s"] = time.perf_counter() - t0
        times = _time_epochs(config, model, train, spec["synth_epochs"])
        out["epoch_s"] = times[0] if times else None  # --synth-epochs 0: an untrained model
        out["original"] = {"epochs": len(times), "epoch_times_s": times}
    model.eval()
    del train
    gc.collect()
    return model


def _rows_by_user(ds):
    """Per user, its rows of ``ds.inter_feat`` (CSR over users, numpy)."""
    import numpy as np

    u = ds.inter_feat[ds.uid_field].numpy()
    i = ds.inter_feat[ds.iid_field].numpy()
    order = np.argsort(u, kind="stable")
    starts = np.searchsorted(u[order], np.arange(int(ds.user_num) + 1))
    return u, i, order, starts


def _valid_ndcg_sum(adapter, data, n_sample: int, seed: int) -> float:
    """The original's validation NDCG@10 summed over the validation users (the calibration
    guard's reference), estimated on a sample of validation users and scaled up."""
    import numpy as np
    import torch

    from recbole_unrank.influence import RankProbe

    tu, ti, order, starts = _rows_by_user(data.train_ds)
    vu = data.valid_ds.inter_feat[data.valid_ds.uid_field].numpy()
    vi = data.valid_ds.inter_feat[data.valid_ds.iid_field].numpy()
    v_users = np.unique(vu)
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(v_users, size=min(n_sample, v_users.size), replace=False))
    total = 0.0
    for chunk in np.array_split(pick, max(1, math.ceil(pick.size / 256))):
        row_of = {int(u): k for k, u in enumerate(chunk)}
        h = np.concatenate([order[starts[u]:starts[u + 1]] for u in chunk])
        vm = np.isin(vu, chunk)
        hr = torch.as_tensor([row_of[int(x)] for x in tu[h]], dtype=torch.long)
        vr = torch.as_tensor([row_of[int(x)] for x in vu[vm]], dtype=torch.long)
        probe = RankProbe(len(chunk), hr, torch.as_tensor(ti[h]), torch.empty(0, dtype=torch.long),
                          torch.empty(0, dtype=torch.long), vr, torch.as_tensor(vi[vm]))
        scores = adapter.user_scores(torch.as_tensor(chunk, dtype=torch.long))
        total += float(probe.valid_ndcg(scores, 10).sum())
    adapter.invalidate()
    return total * v_users.size / pick.size


def _task(model, model_name, train_ds, request, data, seed, valid_sum):
    from recbole_unrank.methods import UnlearnTask

    return UnlearnTask(
        model=model, model_name=model_name, train_ds=train_ds, retain_ds=None, forget_ds=None,
        request_index=request.index, device=next(model.parameters()).device,
        train_fresh=None, valid_score=None, forget_ranks=None, seed=seed,
        valid_ds=data.valid_ds, valid_ndcg_sum=valid_sum,
    )


def _pick_request(rng, by_user, users_pool, n_users: int):
    """``n_users`` distinct users of the pool, ``REQUEST_INTERACTIONS`` random train rows each:
    their (user, item) pairs."""
    import numpy as np

    u, i, order, starts = by_user
    chosen = rng.choice(users_pool, size=n_users, replace=False)
    rows = np.concatenate([rng.choice(order[starts[x]:starts[x + 1]], size=REQUEST_INTERACTIONS, replace=False)
                           for x in chosen])
    return u[rows], i[rows]


def _neighbourhood_share(model, pairs):
    """LightGCN with a prepared graph: the share of the adjacency's entries in the rows of the
    request endpoints' neighbours (what an exact update of the second layer must cross)."""
    import torch

    from recbole_unrank.adapters.lightgcn import _row_entries

    st = getattr(model, "_unrank_local", None)
    if st is None:
        return None
    u = torch.as_tensor(pairs[0]).long()
    i = torch.as_tensor(pairs[1]).long() + st.n_users
    t = torch.unique(torch.cat((u, i)))
    pos, _ = _row_entries(st.crow, t)
    nb = torch.unique(st.adj._indices()[1][pos])
    return int((st.crow[nb + 1] - st.crow[nb]).sum()) / max(1, st.adj._nnz())


def _one_request(method, model, config, data, pairs, seed, valid_sum, profile=False) -> dict:
    from recbole_unrank.request import request_from_pairs

    t0 = time.perf_counter()
    request = request_from_pairs(data.train_ds, pairs[0], pairs[1], "file")
    lookup_s = time.perf_counter() - t0
    share = _neighbourhood_share(model, pairs)
    task = _task(copy.deepcopy(model), config["model"], data.train_ds, request, data, seed, valid_sum)
    prof = cProfile.Profile() if profile else None
    with PeakMeter() as mem:
        if prof:
            prof.enable()
        t0 = time.perf_counter()
        result = method(task)
        wall = time.perf_counter() - t0
        if prof:
            prof.disable()
    info = result.info
    row = {
        "time_s": float(info.get("time_s", wall)), "wall_s": wall, "lookup_s": lookup_s,
        "stages": {k: float(v) for k, v in result.stages.items()},
        "pairs": len(request), "users": int(len(set(request.users.tolist()))),
        "scope_size": info.get("scope_size"), "train_size": info.get("train_size"),
        "step_median": info.get("calibration", {}).get("step_median"),
        "users_meeting_view": info.get("calibration", {}).get("users_meeting_target"),
        "rss_before_bytes": mem.before, "peak_bytes": mem.peak, "peak_delta_bytes": mem.delta,
        "memory_method": mem.method, "neighbourhood_share": share,
    }
    if prof:
        row["profile"] = top_functions(prof)
    del task, result
    gc.collect()
    return row


def _latency(method, model, config, data, spec, out):
    import numpy as np

    by_user = _rows_by_user(data.train_ds)
    deg = np.diff(by_user[3])
    pool = np.flatnonzero(deg >= 2 * REQUEST_INTERACTIONS)
    if pool.size < spec["users"] + 1:
        pool = np.flatnonzero(deg >= REQUEST_INTERACTIONS)
    rng = np.random.default_rng(spec["seed"])
    rows = []
    for k in range(spec["users"]):
        rows.append(_one_request(method, model, config, data, _pick_request(rng, by_user, pool, 1),
                                 spec["seed"] + k, out["valid_ndcg_sum"]))
    out["single"] = rows
    out["single_summary"] = {
        "time_s": quantiles([r["time_s"] for r in rows]),
        "lookup_s": quantiles([r["lookup_s"] for r in rows]),
        "peak_bytes": quantiles([r["peak_bytes"] for r in rows]),
        "peak_delta_bytes": quantiles([r["peak_delta_bytes"] for r in rows]),
        "scope_size": quantiles([r["scope_size"] or 0 for r in rows]),
        "stages": {s: quantiles([r["stages"].get(s, 0.0) for r in rows]) for s in rows[0]["stages"]},
        "users_meeting_view": float(np.mean([r["users_meeting_view"] or 0.0 for r in rows])),
    }
    if rows[0].get("neighbourhood_share") is not None:
        out["single_summary"]["neighbourhood_share"] = quantiles([r["neighbourhood_share"] for r in rows])
    prof = _one_request(method, model, config, data, _pick_request(rng, by_user, pool, 1),
                        spec["seed"] + 999, out["valid_ndcg_sum"], profile=True)
    out["profile"] = {"time_s": prof["time_s"], "top": prof["profile"]}
    if hasattr(model, "norm_adj_matrix"):  # the same requests without local updates, same worker
        from recbole_unrank.adapters import LightGCNAdapter

        rng = np.random.default_rng(spec["seed"])
        LightGCNAdapter.local_updates = False
        try:
            full = [_one_request(method, model, config, data, _pick_request(rng, by_user, pool, 1),
                                 spec["seed"] + k, out["valid_ndcg_sum"]) for k in range(spec.get("full_requests", 5))]
        finally:
            LightGCNAdapter.local_updates = True
        out["full_summary"] = {"time_s": quantiles([r["time_s"] for r in full])}


def _graph_preparation(method, model, config, data, spec, out):
    """A graph model as RecBole built it (uncoalesced adjacency, no per-layer state): first a
    request on a copy of it exactly so (what one CLI run that loads the model and answers one
    request pays: the coalesce of the adjacency and one full propagation are inside its time),
    then the preparation alone on the model itself (timed), which every later request reuses."""
    import numpy as np

    from recbole_unrank.adapters import get_adapter

    by_user = _rows_by_user(data.train_ds)
    pool = np.flatnonzero(np.diff(by_user[3]) >= REQUEST_INTERACTIONS)
    rng = np.random.default_rng(spec["seed"] + 3)
    cold = []
    for k in range(spec.get("cold_requests", 3)):
        cold.append(_one_request(method, model, config, data, _pick_request(rng, by_user, pool, 1),
                                 spec["seed"] + 500 + k, None))
    out["cold"] = cold
    out["cold_summary"] = {"time_s": quantiles([r["time_s"] for r in cold]),
                           "peak_bytes": quantiles([r["peak_bytes"] for r in cold])}
    with PeakMeter() as mem:
        t0 = time.perf_counter()
        get_adapter(model).local()
        out["graph_prep_s"] = time.perf_counter() - t0
    out["graph_prep_peak_bytes"] = mem.peak


def _request_growth(method, model, config, data, spec, out):
    import numpy as np

    by_user = _rows_by_user(data.train_ds)
    pool = np.flatnonzero(np.diff(by_user[3]) >= 2 * REQUEST_INTERACTIONS)
    rng = np.random.default_rng(spec["seed"] + 1)
    points = []
    limit = spec["request_size_limits"].get(config["model"])
    for n_users in spec["request_sizes"]:
        if n_users > pool.size or (limit and n_users > limit):
            points.append({"request_users": n_users, "skipped": "more users than the pool" if n_users > pool.size
                           else f"above --request-size-limit for {config['model']} ({limit})"})
            continue
        reps = 3 if n_users <= 10 else 1
        rows = [_one_request(method, model, config, data, _pick_request(rng, by_user, pool, n_users),
                             spec["seed"] + n_users + r, out["valid_ndcg_sum"], profile=(r == 0 and n_users >= 100))
                for r in range(reps)]
        best = sorted(rows, key=lambda r: r["time_s"])[len(rows) // 2]  # the median run
        points.append({"request_users": n_users, "reps": reps, **best,
                       "time_s_all": [r["time_s"] for r in rows]})
    out["request_growth"] = points


# --------------------------------------------------------------------------- successive
def _evaluate(config, data, model, retained, forgotten, reference=None):
    from recbole_unrank import metrics, pipeline

    _, _, test = pipeline.make_loaders(config, data, retained)
    res, _ = metrics.evaluate_loader(model, test, ["NDCG", "Recall"], [10, 20])
    out = {"test": res}
    if forgotten is not None:
        f_loader = pipeline.make_forget_loader(config, retained, forgotten)
        names = ["forget_hit", "forget_ndcg", "mean_rank"] + (["rdr", "rank_decline_ratio"] if reference else [])
        fres, ranks = metrics.evaluate_loader(model, f_loader, names, [10, 20], reference=reference)
        out["forget"] = fres
        out["_ranks"] = ranks
    return out


def _successive(method, model0, config, data, spec, out):
    """``steps`` single-user requests applied one after another to the same model."""
    import numpy as np
    import torch

    from recbole_unrank import pipeline
    from recbole_unrank.request import request_from_pairs

    steps = spec["steps"]
    train_ds = data.train_ds
    rng = np.random.default_rng(spec["seed"] + 7)
    by_user = _rows_by_user(train_ds)
    pool = np.flatnonzero(np.diff(by_user[3]) >= 2 * REQUEST_INTERACTIONS)
    chosen = rng.choice(pool, size=steps, replace=False)
    model = copy.deepcopy(model0)
    current = train_ds
    orig_rows = np.arange(len(train_ds.inter_feat))  # row of train_ds behind each row of current
    forgotten: list[int] = []
    original_eval = _evaluate(config, data, model0, train_ds, None)
    trace = []
    for k, user in enumerate(chosen):
        cu = current.inter_feat[current.uid_field].numpy()
        ci = current.inter_feat[current.iid_field].numpy()
        mine = np.flatnonzero(cu == user)
        pick = rng.choice(mine, size=REQUEST_INTERACTIONS, replace=False)
        request = request_from_pairs(current, cu[pick], ci[pick], "file")
        task = _task(model, config["model"], current, request, data, spec["seed"] + k, out["valid_ndcg_sum"])
        result = method(task)
        model = result.model
        keep = np.ones(len(current.inter_feat), dtype=bool)
        keep[request.index] = False
        forgotten.extend(orig_rows[request.index].tolist())
        orig_rows = orig_rows[keep]
        current = current.copy(current.inter_feat[torch.from_numpy(np.flatnonzero(keep))])
        forget_ds = train_ds.copy(train_ds.inter_feat[torch.from_numpy(np.sort(np.asarray(forgotten)))])
        ev = _evaluate(config, data, model, current, forget_ds)
        trace.append({"step": k + 1, "user": int(user), "time_s": float(result.info["time_s"]),
                      "retained": int(len(current.inter_feat)), "forgotten": len(forgotten),
                      "test": ev["test"], "forget": ev["forget"],
                      "step_median": result.info.get("calibration", {}).get("step_median"),
                      "users_meeting_view": result.info.get("calibration", {}).get("users_meeting_target")})
    # the original on the final forget set, then one retraining without all the requests
    orig_final = _evaluate(config, data, model0, current, forget_ds)
    train, valid, _ = pipeline.make_loaders(config, data, current)
    retrained, info = pipeline.train_model(config, train, valid, None, tag="retrain")
    retrain_eval = _evaluate(config, data, retrained, current, forget_ds, reference=orig_final["_ranks"])
    final_eval = _evaluate(config, data, model, current, forget_ds, reference=orig_final["_ranks"])
    for ev in (orig_final, retrain_eval, final_eval):
        ev.pop("_ranks", None)
    out["successive"] = {
        "steps": trace, "original": {"test": original_eval["test"], "forget_final": orig_final["forget"]},
        "final": final_eval, "retrain": {**retrain_eval, "time_s": info["time_s"], "epochs": info["epochs"]},
        "ndcg_gap": final_eval["test"]["ndcg@10"] / max(retrain_eval["test"]["ndcg@10"], 1e-12) - 1.0,
    }


def worker(spec: dict) -> dict:
    """All measurements on one dataset, for every model asked; returns a JSON-able dict."""
    sys.argv = [sys.argv[0]]
    os.makedirs(spec["work"], exist_ok=True)
    os.chdir(spec["work"])  # RecBole writes ./log, ./log_tensorboard
    _silence()
    import torch

    import recbole_unrank  # noqa: F401
    from recbole_unrank import pipeline
    from recbole_unrank.adapters import get_adapter
    from recbole_unrank.methods import METHODS

    _silence()
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    dataset = spec["dataset"]
    res = {"dataset": dataset, "threads": torch.get_num_threads(), "models": {},
           "load_start": [round(x, 2) for x in os.getloadavg()]}
    first = _config(spec["models"][0], dataset, spec)
    with PeakMeter() as mem:
        t0 = time.perf_counter()
        data = pipeline.load_data(first)
        res["load_s"] = time.perf_counter() - t0
    res["load_peak_bytes"] = mem.peak
    ds = data.dataset
    res.update(interactions=int(len(ds.inter_feat)), train_interactions=int(len(data.train_ds.inter_feat)),
               n_users=int(ds.user_num) - 1, n_items=int(ds.item_num) - 1)
    for model_name in spec["models"]:
        out: dict = {}
        res["models"][model_name] = out
        config = _config(model_name, dataset, spec)
        t0 = time.perf_counter()
        model = _original(config, data, spec, out)
        out["prepare_s"] = time.perf_counter() - t0
        method_cls = METHODS["l2unrank"]
        method = method_cls(**pipeline.method_settings(config, method_cls))
        if hasattr(model, "norm_adj_matrix") and "latency" in spec["parts"]:
            _graph_preparation(method, model, config, data, spec, out)
        out["valid_ndcg_sum"] = _valid_ndcg_sum(get_adapter(model), data, spec["valid_sample"], spec["seed"])
        if "latency" in spec["parts"]:
            _latency(method, model, config, data, spec, out)
        if dataset == spec.get("growth_dataset") and "growth" in spec["parts"]:
            _request_growth(method, model, config, data, spec, out)
        if dataset == "ml-100k" and "successive" in spec["parts"] and model_name in spec["successive_models"]:
            _successive(method, model, config, data, spec, out)
        del model
        gc.collect()
    res["process_peak_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    res["load_end"] = [round(x, 2) for x in os.getloadavg()]
    return res


# =========================================================================== orchestration
def ensure_synthetic(n: int, seed: int, regenerate: bool = False) -> dict:
    """Write ``dataset/synth-<size>`` with the project's generator unless it is there."""
    name = synth_name(n)
    path = os.path.join(ROOT, "dataset", name, f"{name}.inter")
    users, items = synth_shape(n)
    info = {"name": name, "users": users, "items": items, "target": n, "path": path}
    if os.path.isfile(path) and not regenerate:
        info["generated_s"] = None
        return info
    from recbole_unrank.synthetic import generate_interactions, write_atomic

    t0 = time.perf_counter()
    u, i, ts = generate_interactions(users, items, int(n * GEN_OVERSHOOT), seed)
    write_atomic(os.path.join(ROOT, "dataset"), name, u, i, ts)
    info["generated_s"] = time.perf_counter() - t0
    return info


def code_state() -> dict:
    """The package's commit and uncommitted changes (the tree is shared: record what ran)."""
    def git(*a):
        try:
            return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            return ""
    diff = git("diff", "HEAD", "--", "recbole_unrank")
    return {"commit": git("rev-parse", "--short", "HEAD").strip(),
            "dirty": sorted(line[3:] for line in git("status", "--porcelain", "--", "recbole_unrank").splitlines()
                            if len(line) > 3),
            "diff_sha1": __import__("hashlib").sha1(diff.encode()).hexdigest()[:10] if diff else None}


def changed_files(start: dict, end: dict) -> list[str]:
    """Package files that differ between two code states (commits, plus uncommitted files)."""
    names = set(start.get("dirty", [])) | set(end.get("dirty", []))
    if start.get("commit") and end.get("commit") and start["commit"] != end["commit"]:
        out = subprocess.run(["git", "diff", "--name-only", start["commit"], end["commit"], "--", "recbole_unrank"],
                             cwd=ROOT, capture_output=True, text=True).stdout
        names |= set(out.split())
    return sorted(names)


def run_worker(spec: dict, timeout: float) -> dict:
    """``worker(spec)`` in a fresh interpreter (clean memory figures); its JSON back."""
    fd, path = tempfile.mkstemp(suffix=".json", prefix="scale-")
    os.close(fd)
    env = dict(os.environ)
    env["MALLOC_MMAP_THRESHOLD_"] = str(1 << 20)  # freed tensors >= 1 MiB go back to the system
    env["PYTHONWARNINGS"] = "ignore"
    env["CUDA_VISIBLE_DEVICES"] = ""
    # OpenMP threads that spin at barriers collapse when the cores are shared with other jobs
    # (measured here: LightGCN's ml-100k epoch 22 s instead of 1.4 s, a request 1.1 s instead
    # of 0.05 s); passive waiting keeps two threads useful on a loaded machine.
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec), "--worker-out", path],
                          env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        os.remove(path)
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        raise RuntimeError(f"worker for {spec['dataset']} failed (exit {proc.returncode}):\n{tail}")
    with open(path, encoding="utf-8") as f:
        res = json.load(f)
    os.remove(path)
    res["worker_wall_s"] = wall
    return res


# =========================================================================== report
def _gib(b) -> float:
    return float(b) / GIB


def _fmt_s(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.3f}" if x < 10 else f"{x:.1f}"


def _model_rows(results: dict):
    for ds_name, res in results["datasets"].items():
        for model, out in res["models"].items():
            yield ds_name, res, model, out


def check_targets(results: dict) -> list[dict]:
    checks = []
    ml = results["datasets"].get("ml-100k", {}).get("models", {}).get("LightGCN")
    if ml and "single_summary" in ml:
        t = ml["single_summary"]["time_s"]
        checks.append({"target": "ml-100k, LightGCN, one single-user request < 1 s (median of "
                                 f"{t['n']}; max {t['max']:.3f} s)",
                       "value": t["median"], "limit": TARGETS["ml100k_lightgcn_s"], "unit": "s",
                       "ok": t["median"] < TARGETS["ml100k_lightgcn_s"], "worst_ok": t["max"] < TARGETS["ml100k_lightgcn_s"]})
    large = [n for n in results["datasets"] if n.startswith("synth-")]
    if large:
        biggest = "synth-5m" if "synth-5m" in large else max(large, key=lambda n: results["datasets"][n]["interactions"])
        res = results["datasets"][biggest]
        for model, out in res["models"].items():
            if "single_summary" not in out:
                continue
            t = out["single_summary"]["time_s"]
            p = out["single_summary"]["peak_bytes"]
            checks.append({"target": f"{biggest} ({res['interactions']:,} interactions), {model}: request < 10 s "
                                     f"(median; max {t['max']:.2f} s)",
                           "value": t["median"], "limit": TARGETS["large_s"], "unit": "s",
                           "ok": t["median"] < TARGETS["large_s"], "worst_ok": t["max"] < TARGETS["large_s"]})
            checks.append({"target": f"{biggest}, {model}: peak memory during the request < 4 GiB (max over requests)",
                           "value": _gib(p["max"]), "limit": TARGETS["large_peak_gib"], "unit": "GiB",
                           "ok": _gib(p["max"]) < TARGETS["large_peak_gib"]})
    big = results["datasets"].get("synth-5m", {}).get("models", {}).get("LightGCN", {})
    small = results["datasets"].get("synth-1m", {}).get("models", {}).get("LightGCN", {})
    same_run = results["datasets"].get("synth-5m", {}).get("same_run", {})
    if "synth-1m" in same_run:  # 5M merged from another run: take that run's 1M for the ratio
        small = same_run["synth-1m"].get("LightGCN", {})
    if "single_summary" in big:
        t = big["single_summary"]["time_s"]
        checks.append({"target": "synth-5m, LightGCN: single-user request < 0.3 s (median; a model that serves "
                                 f"requests, graph prepared once; max {t['max']:.2f} s)",
                       "value": t["median"], "limit": TARGETS["lightgcn_5m_s"], "unit": "s",
                       "ok": t["median"] < TARGETS["lightgcn_5m_s"], "worst_ok": t["max"] < TARGETS["lightgcn_5m_s"]})
        if "cold_summary" in big:
            c = big["cold_summary"]["time_s"]["median"]
            checks.append({"target": "synth-5m, LightGCN: the same request as the first on a model just built by "
                                     "RecBole (a one-request CLI run: coalesce + one full propagation inside)",
                           "value": c, "limit": TARGETS["lightgcn_5m_s"], "unit": "s",
                           "ok": c < TARGETS["lightgcn_5m_s"]})
    if "full_summary" in big and "single_summary" in big:
        f = big["full_summary"]["time_s"]["median"]
        checks.append({"target": "synth-5m, LightGCN: the same requests rebuilding the retained graph and "
                                 "propagating over all of it (the path before local updates, same worker; "
                                 "ratio to the local path)",
                       "value": f / big["single_summary"]["time_s"]["median"], "limit": 1.0, "unit": "x",
                       "ok": f > big["single_summary"]["time_s"]["median"]})
    if "single_summary" in big and "single_summary" in small:
        g = big["single_summary"]["time_s"]["median"] / small["single_summary"]["time_s"]["median"]
        checks.append({"target": "LightGCN: request time growth from synth-1m to synth-5m < 1.5x (same run)",
                       "value": g, "limit": TARGETS["lightgcn_growth"], "unit": "x",
                       "ok": g < TARGETS["lightgcn_growth"]})
    ml100k = results["datasets"].get("ml-100k", {}).get("models", {})
    for model, out in ml100k.items():
        succ = out.get("successive")
        if succ:
            gap = succ["ndcg_gap"]
            checks.append({"target": f"ml-100k, {model}: test NDCG@10 after {len(succ['steps'])} successive "
                                     "requests within 3% of retraining without them",
                           "value": 100 * gap, "limit": 100 * TARGETS["drift"], "unit": "% (relative)",
                           "ok": abs(gap) <= TARGETS["drift"] or gap > 0})
    return checks


def _log_time_memory_axes(axes, xlabel: str) -> None:
    """Log-log axes for a (seconds, GiB) pair of panels against ``xlabel``."""
    for ax, ylab in zip(axes, ("seconds", "GiB")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylab)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)


def _plots(results: dict, out_dir: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    synth = sorted((r for n, r in results["datasets"].items() if n.startswith("synth-")),
                   key=lambda r: r["interactions"])
    models = results["args"]["models"]

    def save(fig, name):
        path = os.path.join(out_dir, name)
        tmp = path + ".tmp.png"
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
        plt.close(fig)
        os.replace(tmp, path)
        paths.append(path)

    if synth:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for model in models:
            xs = [r["interactions"] for r in synth if "single_summary" in r["models"].get(model, {})]
            if not xs:
                continue
            rs = [r["models"][model] for r in synth if "single_summary" in r["models"].get(model, {})]
            med = [o["single_summary"]["time_s"]["median"] for o in rs]
            lo = [o["single_summary"]["time_s"]["p10"] for o in rs]
            hi = [o["single_summary"]["time_s"]["p90"] for o in rs]
            line = axes[0].plot(xs, med, "o-", label=f"{model}: L2UnRank, 1 user (slope {fitted_slope(results, model):.2f})")[0]
            axes[0].fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15)
            axes[0].plot(xs, [o["epoch_s"] or float("nan") for o in rs], "s--", color=line.get_color(), alpha=0.6,
                         label=f"{model}: one training epoch")
            axes[1].plot(xs, [_gib(o["single_summary"]["peak_bytes"]["max"]) for o in rs], "o-",
                         color=line.get_color(), label=f"{model}: process peak during request")
            axes[1].plot(xs, [max(_gib(o["single_summary"]["peak_delta_bytes"]["max"]), 1e-3) for o in rs], "v:",
                         color=line.get_color(), label=f"{model}: added by the request")
        axes[0].axhline(TARGETS["lightgcn_5m_s"], color="grey", lw=0.8, ls=":")
        axes[1].axhline(TARGETS["large_peak_gib"], color="grey", lw=0.8, ls=":")
        _log_time_memory_axes(axes, "dataset size (interactions)")
        axes[0].set_title("time vs dataset size (request: 1 user, 10 interactions)")
        axes[1].set_title("peak memory vs dataset size")
        save(fig, "scale_dataset_growth.png")

    grow = [(m, o["request_growth"]) for _, _, m, o in _model_rows(results) if o.get("request_growth")]
    if grow:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for model, pts in grow:
            pts = [p for p in pts if "time_s" in p]
            xs = [p["request_users"] for p in pts]
            line = axes[0].plot(xs, [p["time_s"] for p in pts], "o-", label=model)[0]
            axes[1].plot(xs, [_gib(p["peak_bytes"]) for p in pts], "o-", color=line.get_color(),
                         label=f"{model}: process peak")
            axes[1].plot(xs, [max(_gib(p["peak_delta_bytes"]), 1e-3) for p in pts], "v:", color=line.get_color(),
                         label=f"{model}: added by the request")
        _log_time_memory_axes(axes, "request size (users, 10 interactions each)")
        ds = results["args"]["growth_dataset"]
        axes[0].set_title(f"time vs request size ({ds})")
        axes[1].set_title(f"peak memory vs request size ({ds})")
        save(fig, "scale_request_growth.png")

    succ = [(m, o["successive"]) for _, _, m, o in _model_rows(results) if o.get("successive")]
    if succ:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for model, s in succ:
            steps = [0] + [t["step"] for t in s["steps"]]
            ndcg = [s["original"]["test"]["ndcg@10"]] + [t["test"]["ndcg@10"] for t in s["steps"]]
            line = axes[0].plot(steps, ndcg, "o-", ms=3, label=f"{model}: L2UnRank, one request after another")[0]
            axes[0].axhline(s["retrain"]["test"]["ndcg@10"], color=line.get_color(), ls="--",
                            label=f"{model}: retrain without all {len(s['steps'])}")
            axes[1].plot([t["step"] for t in s["steps"]], [t["forget"]["forget_hit@10"] for t in s["steps"]], "o-",
                         ms=3, color=line.get_color(), label=f"{model}: L2UnRank")
            axes[1].axhline(s["retrain"]["forget"]["forget_hit@10"], color=line.get_color(), ls="--",
                            label=f"{model}: retrain")
        from matplotlib.ticker import MaxNLocator

        for ax in axes:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes[0].set_xlabel("requests applied")
        axes[0].set_ylabel("test NDCG@10")
        axes[0].set_title("utility drift over successive requests (ml-100k)")
        axes[1].set_xlabel("requests applied")
        axes[1].set_ylabel("forget_hit@10 over all requests so far")
        axes[1].set_title("forgotten pairs still in the top 10")
        for ax in axes:
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
        save(fig, "scale_successive.png")
    return paths


def write_report(results: dict, out_dir: str) -> str:
    a = results["args"]
    L = ["# Real-time forget requests at scale (issues 7 and 15)", ""]
    L.append(f"Produced by `python benchmarks/scale.py{' ' + a['argv'] if a['argv'] else ''}` on {results['host']['when']}: "
             f"{results['host']['cpus']} CPU cores (torch threads: {results['host']['torch_threads']}), "
             f"load average at start {results['host']['load_start']}, at end {results['host']['load_end']}; "
             f"whole benchmark {results['wall_s'] / 60:.1f} min. **CPU only: no GPU figures were measured** "
             "(no GPU on this machine; `tests/test_scale_paths.py` runs the CUDA path where one exists).")
    for name, res in results["datasets"].items():
        if "reused_from" in res:
            L.append(f"{name}: the worker's result was reused from an earlier run of the same settings "
                     f"(`--reuse {os.path.basename(res['reused_from'])}`; worker wall {res['worker_wall_s']:.0f} s"
                     + (f", load average {res['load_start'][0]} at its start, {res['load_end'][0]} at its end"
                        if "load_start" in res else "") + ").")
        if "merged_from" in res:
            m = res["merged_from"]
            L.append(f"{name} comes from a separate run, `python benchmarks/scale.py {m['argv']}` on {m['when']} "
                     f"(load average at start {m['load'][0]}, at end {m['load'][1]}; package commit "
                     f"`{(m.get('code') or {}).get('commit', '?')}`), merged with `--report-only --merge`.")
    L.append("")
    cs = results.get("code_start", {"commit": "?", "dirty": []})
    ce = results.get("code_end", cs)
    L.append(f"Package code: commit `{cs['commit']}`"
             + (f" with uncommitted changes in {', '.join(cs['dirty'])}" if cs["dirty"] else "")
             + ("." if cs == ce or (not results.get("code_changed_files") and cs.get("dirty") == ce.get("dirty")
                                     and cs.get("diff_sha1") == ce.get("diff_sha1"))
                else f"; the package changed during the run (the tree is shared; ended at "
                f"`{ce['commit']}`{', dirty: ' + ', '.join(ce['dirty']) if ce['dirty'] else ''}; files: "
                f"{', '.join(results.get('code_changed_files') or ['?'])}): workers that started later ran the "
                "newer code."))
    L.append("")
    L.append("Method: L2UnRank with the project defaults (`unrank_update: users`, Gauss-Newton user blocks, "
             "calibrated step). A request = 10 train interactions of one user (`request_from_pairs`). The "
             "original model is trained once and held in memory; every request runs on a private copy "
             "(the copy is not timed) and the method is called directly on an `UnlearnTask`: the time is "
             "scope + weights + solve + step calibration + cache refresh, without any evaluation. "
             "`lookup` is `request_from_pairs` (tokens/pairs to train rows), reported apart. LightGCN: the "
             "model as RecBole built it is prepared once (adjacency coalesced, per-layer embeddings kept: "
             "`graph prep`), as a process that serves requests holds it; the first request on an unprepared "
             "model (a one-request command-line run) is timed apart (`cold request`), and the same requests "
             "on the path before local updates (retained graph rebuilt, full propagation) are timed in the "
             "same worker.")
    L.append("")

    # ---- targets
    L += ["## Targets", "", "| target | measured | limit | holds |", "|---|---|---|---|"]
    for c in results["checks"]:
        worst = "" if "worst_ok" not in c or not c["ok"] else ("" if c["worst_ok"] else " (median only; the slowest request misses)")
        L.append(f"| {c['target']} | {c['value']:.3f} {c['unit']} | {c['limit']:g} {c['unit']} | "
                 f"{'yes' if c['ok'] else '**no**'}{worst} |")
    L.append("| no step materialises a users x items dense matrix, nor a params x params one | checked on tiny "
             "for WMF / NeuMF / LightGCN by `tests/test_scale_paths.py` (every aten op's output shape) | - | see test |")
    L.append("")

    # ---- latency table
    L += ["## 1. One request, one user", "",
          "Median (p10-p90) over different users; stages are medians. `epoch` is one training epoch of "
          "RecBole's trainer on the same train split, in the same worker (for the synthetic sets the "
          "original is trained for that one epoch only: quality is irrelevant to latency).", "",
          "| dataset | interactions | model | L2UnRank s: median (p10-p90) [max] | scope s | weights s | solve s | "
          "lookup s | scope size | epoch s (batch) | epoch / request | peak RSS GiB (added) |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for ds_name, res, model, out in _model_rows(results):
        s = out.get("single_summary")
        if not s:
            continue
        t = s["time_s"]
        st = s["stages"]
        L.append(
            f"| {ds_name} | {res['interactions']:,} | {model} | {_fmt_s(t['median'])} ({_fmt_s(t['p10'])}-"
            f"{_fmt_s(t['p90'])}) [{_fmt_s(t['max'])}] | {_fmt_s(st['scope_s']['median'])} | "
            f"{_fmt_s(st['weights_s']['median'])} | {_fmt_s(st['solve_s']['median'])} | "
            f"{_fmt_s(s['lookup_s']['median'])} | {s['scope_size']['median']:,.0f} | {_fmt_s(out['epoch_s'])} "
            f"({out['train_batch_size']}) | "
            f"{'-' if not out['epoch_s'] else format(out['epoch_s'] / t['median'], ',.0f') + 'x'} | "
            f"{_gib(s['peak_bytes']['max']):.2f} ({_gib(s['peak_delta_bytes']['max']):.3f}) |")
    L.append("")
    L.append("Peak RSS is the whole process's high-water mark during the request (data, model, its copy and "
             "the request's own work); `added` is that peak minus the resident size just before the call.")
    L.append("")

    # ---- data preparation
    L += ["### Dataset preparation (measured apart, not part of a request)", "",
          "| dataset | interactions (train) | users x items | generator s | RecBole create_dataset + split s | "
          "peak RSS while loading GiB | train loader s | model init s (LightGCN) | LightGCN graph prep s | "
          "LightGCN cold request s (median) | worker peak RSS GiB | worker wall s |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for ds_name, res in results["datasets"].items():
        gen = results["generated"].get(ds_name, {}).get("generated_s")
        first = next(iter(res["models"].values()), {})
        lg = res["models"].get("LightGCN", {})
        cold = lg.get("cold_summary", {}).get("time_s", {}).get("median")
        L.append(f"| {ds_name} | {res['interactions']:,} ({res['train_interactions']:,}) | {res['n_users']:,} x "
                 f"{res['n_items']:,} | {'(existing files)' if gen is None else f'{gen:.1f}'} | {res['load_s']:.1f} | "
                 f"{_gib(res['load_peak_bytes']):.2f} | {_fmt_s(first.get('train_loader_s'))} | "
                 f"{_fmt_s(first.get('model_init_s'))} ({_fmt_s(lg.get('model_init_s'))}) | "
                 f"{_fmt_s(lg.get('graph_prep_s'))} | {_fmt_s(cold)} | {_gib(res['process_peak_bytes']):.2f} | "
                 f"{res['worker_wall_s']:.0f} |")
    L.append("")
    L.append("`worker peak RSS` is the worker process's high-water mark over everything it did (loading, "
             "training every model's original for one epoch or more, all requests).")
    L.append("")

    # ---- growth
    L += ["## 2. Growth", "", "### Against the dataset size (request: 1 user, 10 interactions)", "",
          "![time and memory against dataset size](scale_dataset_growth.png)", "",
          "| model | " + " | ".join(f"{n} ({results['datasets'][n]['interactions']:,})" for n in results["datasets"]
                                    if n.startswith("synth-")) + " |",
          "|---|" + "---|" * sum(1 for n in results["datasets"] if n.startswith("synth-"))]
    for model in a["models"]:
        cells = []
        for n, res in results["datasets"].items():
            if not n.startswith("synth-"):
                continue
            o = res["models"].get(model, {}).get("single_summary")
            cells.append("-" if not o else f"{_fmt_s(o['time_s']['median'])} s, {_gib(o['peak_bytes']['max']):.2f} GiB "
                                           f"(+{_gib(o['peak_delta_bytes']['max']):.3f})")
        L.append(f"| {model} | " + " | ".join(cells) + " |")
        if model == "LightGCN":
            cells = []
            for n, res in results["datasets"].items():
                if not n.startswith("synth-"):
                    continue
                o = res["models"].get(model, {})
                cells.append("-" if "full_summary" not in o else
                             f"{_fmt_s(o['full_summary']['time_s']['median'])} s "
                             f"(x{o['full_summary']['time_s']['median'] / o['single_summary']['time_s']['median']:.1f})")
            L.append("| LightGCN, graph rebuilt and propagated in full (same requests, same worker; x local) | "
                     + " | ".join(cells) + " |")
    L.append("")
    grow = [(m, o["request_growth"]) for _, _, m, o in _model_rows(results) if o.get("request_growth")]
    if grow:
        L += [f"### Against the request size (on {a['growth_dataset']})", "",
              "![time and memory against request size](scale_request_growth.png)", "",
              "| model | users | pairs | scope size | L2UnRank s | scope / weights / solve s | peak RSS GiB (added) |",
              "|---|---|---|---|---|---|---|"]
        for model, pts in grow:
            for p in pts:
                if "time_s" not in p:
                    L.append(f"| {model} | {p['request_users']} | - | - | skipped: {p['skipped']} | - | - |")
                    continue
                st = p["stages"]
                L.append(f"| {model} | {p['request_users']} | {p['pairs']} | {p['scope_size']:,} | {_fmt_s(p['time_s'])} | "
                         f"{_fmt_s(st['scope_s'])} / {_fmt_s(st['weights_s'])} / {_fmt_s(st['solve_s'])} | "
                         f"{_gib(p['peak_bytes']):.2f} (+{_gib(p['peak_delta_bytes']):.3f}) |")
        L.append("")

    # ---- does the cost follow the scope?
    L += growth_analysis(results)

    # ---- profiles
    L += ["### Where the time goes (cProfile of one single-user request, top functions by own time)", ""]
    synth_sizes = [r["interactions"] for n, r in results["datasets"].items() if n.startswith("synth-")]
    for ds_name, res, model, out in _model_rows(results):
        prof = out.get("profile")
        largest = ds_name.startswith("synth-") and res["interactions"] == max(synth_sizes)
        if not prof or not (largest or (ds_name == "ml-100k" and model == "LightGCN")):
            continue
        L += [f"**{model} on {ds_name}** (request {prof['time_s']:.2f} s under the profiler)", "",
              "| function | calls | own s | cumulative s |", "|---|---|---|---|"]
        for r in prof["top"][:10]:
            L.append(f"| `{r['function']}` | {r['calls']} | {r['tottime_s']:.3f} | {r['cumtime_s']:.3f} |")
        L.append("")
    for model, pts in grow:
        for p in pts:
            if p.get("profile") and p["request_users"] == max(q["request_users"] for q in pts if q.get("profile")):
                L += [f"**{model}, request of {p['request_users']} users on {a['growth_dataset']}**", "",
                      "| function | calls | own s | cumulative s |", "|---|---|---|---|"]
                for r in p["profile"][:8]:
                    L.append(f"| `{r['function']}` | {r['calls']} | {r['tottime_s']:.3f} | {r['cumtime_s']:.3f} |")
                L.append("")

    # ---- successive
    succ = [(m, o) for _, _, m, o in _model_rows(results) if o.get("successive")]
    if succ:
        L += ["## 3. Many requests in a row (ml-100k)", "", "![drift](scale_successive.png)", ""]
        for model, o in succ:
            s = o["successive"]
            L += [f"### {model}", "",
                  f"{len(s['steps'])} single-user requests (10 interactions each, users drawn once, each request "
                  "from the current retained data), applied one after another to the same model. After each step: "
                  "test NDCG@10 with the current retained history masked, and forget measures over every request so "
                  "far (only retained history masked).", "",
                  "| step | retained | forgotten | request s | test NDCG@10 | test Recall@10 | forget_hit@10 (all so far) | "
                  "mean rank |", "|---|---|---|---|---|---|---|---|"]
            L.append(f"| 0 (original) | {s['steps'][0]['retained'] + s['steps'][0]['forgotten']:,} | 0 | - | "
                     f"{s['original']['test']['ndcg@10']:.4f} | {s['original']['test']['recall@10']:.4f} | - | - |")
            for t in s["steps"]:
                L.append(f"| {t['step']} | {t['retained']:,} | {t['forgotten']} | {t['time_s']:.3f} | "
                         f"{t['test']['ndcg@10']:.4f} | {t['test']['recall@10']:.4f} | "
                         f"{t['forget']['forget_hit@10']:.3f} | {t['forget']['mean_rank']:.1f} |")
            f, r, of = s["final"], s["retrain"], s["original"]["forget_final"]
            L += ["", "| model | test NDCG@10 | test Recall@10 | forget_hit@10 | forget_hit@20 | mean rank | time s |",
                  "|---|---|---|---|---|---|---|",
                  f"| original | {s['original']['test']['ndcg@10']:.4f} | {s['original']['test']['recall@10']:.4f} | "
                  f"{of['forget_hit@10']:.3f} | {of['forget_hit@20']:.3f} | {of['mean_rank']:.1f} | - |",
                  f"| L2UnRank x{len(s['steps'])} | {f['test']['ndcg@10']:.4f} | {f['test']['recall@10']:.4f} | "
                  f"{f['forget']['forget_hit@10']:.3f} | {f['forget']['forget_hit@20']:.3f} | "
                  f"{f['forget']['mean_rank']:.1f} | {sum(t['time_s'] for t in s['steps']):.2f} (all steps) |",
                  f"| retrain without all | {r['test']['ndcg@10']:.4f} | {r['test']['recall@10']:.4f} | "
                  f"{r['forget']['forget_hit@10']:.3f} | {r['forget']['forget_hit@20']:.3f} | "
                  f"{r['forget']['mean_rank']:.1f} | {r['time_s']:.1f} ({r['epochs']} epochs) |", "",
                  f"Test NDCG@10 after the {len(s['steps'])} requests is {100 * s['ndcg_gap']:+.2f}% relative to "
                  f"the retrained model ({100 * (f['test']['ndcg@10'] / s['original']['test']['ndcg@10'] - 1):+.2f}% "
                  "relative to the original; the retrained model itself is "
                  f"{100 * (r['test']['ndcg@10'] / s['original']['test']['ndcg@10'] - 1):+.2f}%)."]
            prev = s["original"]["test"]["ndcg@10"]
            drops = []
            for t in s["steps"]:
                drops.append((t["test"]["ndcg@10"] - prev, t))
                prev = t["test"]["ndcg@10"]
            worst_drop, worst = min(drops, key=lambda x: x[0])
            total = f["test"]["ndcg@10"] - s["original"]["test"]["ndcg@10"]
            if total < 0 and worst_drop < 0:
                L.append(f"The largest single-step change is step {worst['step']}: NDCG@10 {worst_drop:+.4f} "
                         f"({100 * worst_drop / total:.0f}% of the whole drift), step scale {worst['step_median']:.3g}, "
                         f"the user's forgotten items {'left' if (worst['users_meeting_view'] or 0) >= 1 else 'did not all leave'} "
                         "the top 10. The calibration's utility guard allows each request to cost up to "
                         "(1 - unrank_utility_guard) of the validation NDCG@10 sum; that allowance is per request, "
                         "not cumulative over successive requests.")
            L.append("")

    # ---- settings
    L += ["## Settings and caveats", ""]
    L += [f"- ml-100k originals: project configs (`config/ml-100k.yaml` + `config/<model>.yaml`), at most "
          f"{a['epochs_100k']} epochs with early stopping"
          + (f", learning rate {a['lr_100k']}" if a.get("lr_100k") else "") + "; the retraining of part 3 uses the "
          "same config, seed and epoch budget. Trained originals are cached in the work folder "
          f"(`{a['work']}`) across runs; `--retrain-originals` trains them again. In this run: "
          + ", ".join(f"{m} {'loaded from that cache' if 'cached' in o.get('original', {}) else 'trained'}"
                      for m, o in results["datasets"].get("ml-100k", {}).get("models", {}).items()) + ".",
          f"- Synthetic originals: {a['synth_epochs']} epoch(s) of RecBole's trainer with train_batch_size "
          f"{a['synth_batch']} (a larger batch than RecBole's default 2048, to keep the benchmark short; for "
          "LightGCN every batch propagates over the whole graph, so with the default batch an epoch would take "
          "many times longer: the `epoch / request` ratio is a lower bound).",
          "- Every model is built by RecBole itself, as the command line builds it (LightGCN's adjacency through "
          "RecBole's dok-matrix builder: the `model init` column). Nothing of RecBole is replaced by the benchmark. "
          "A LightGCN model then needs its graph prepared once (the adjacency coalesced, one full propagation "
          "kept per layer: `graph prep`); a one-request command-line run pays it inside its request (`cold "
          "request`), a model that serves requests pays it once. Nothing of it is cached in the checkpoint.",
          "- Memory: `VmHWM` reset before each request (`/proc/self/clear_refs`), read after; glibc's mmap "
          "threshold pinned to 1 MiB in the workers so freed tensors are returned and each point starts clean. "
          "One fresh worker process per dataset.",
          f"- Calibration guard reference (`valid_ndcg_sum`): the original's validation NDCG@10 summed over "
          f"validation users, estimated on {a['valid_sample']} sampled validation users (computed once per model, "
          "not timed).",
          "- The machine is shared: other jobs were running (see the load averages above), so absolute times are "
          "noisy and likely pessimistic."]
    L.append("")
    L += ["## What changed in the package for this issue", ""] + [f"- {c}" for c in results.get("package_changes", [])]
    L.append("")
    text = "\n".join(L)
    path = os.path.join(out_dir, "scale.md")
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(path + ".tmp", path)
    return path


def _exponent(x1, y1, x2, y2) -> float:
    return math.log(y2 / y1) / math.log(x2 / x1) if min(x1, y1, x2, y2) > 0 and x1 != x2 else float("nan")


def fitted_slope(results: dict, model: str) -> float:
    """Least-squares slope of log(median seconds per request) on log(interactions), synthetic points."""
    import numpy as np

    pts = [(r["interactions"], r["models"][model]["single_summary"]["time_s"]["median"])
           for n, r in results["datasets"].items() if n.startswith("synth-") and "single_summary" in r["models"].get(model, {})]
    if len(pts) < 2:
        return float("nan")
    x, y = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
    return float(np.polyfit(x, y, 1)[0])


def growth_analysis(results: dict) -> list[str]:
    """Growth exponents (time ~ size^b) between the smallest and the largest points, and what
    the profile of the largest dataset says dominates."""
    L = ["### Does the cost follow the scope or the dataset?", "",
         "Exponent `b` of `time ~ size^b` between the smallest and the largest point (1 = linear). "
         "`scope` is the median number of interactions in the influence scope: the request's 1-hop "
         "neighbourhood (every train interaction of the request user or of one of its items; the user-block "
         "path's default for every model). It grows with the dataset too, since the request's items have more "
         "interactions in a bigger one.", "",
         "`fitted slope`: least-squares slope of log(seconds per request) against log(interactions) over every "
         "synthetic point.", "",
         "| model | dataset growth | time exponent | fitted slope (points) | scope exponent | request-size growth | "
         "time exponent | largest dataset: top own-time functions (share of the profiled request) |",
         "|---|---|---|---|---|---|---|---|"]
    synth = sorted((r for n, r in results["datasets"].items() if n.startswith("synth-")), key=lambda r: r["interactions"])
    for model in results["args"]["models"]:
        pts = [r for r in synth if "single_summary" in r["models"].get(model, {})]
        d_txt = t_exp = s_exp = fit = "-"
        top = "-"
        if len(pts) >= 2:
            a, b = pts[0], pts[-1]
            sa, sb = a["models"][model]["single_summary"], b["models"][model]["single_summary"]
            d_txt = f"{a['interactions']:,} -> {b['interactions']:,} (x{b['interactions'] / a['interactions']:.0f})"
            t_exp = f"{_exponent(a['interactions'], sa['time_s']['median'], b['interactions'], sb['time_s']['median']):.2f}"
            s_exp = f"{_exponent(a['interactions'], max(sa['scope_size']['median'], 1), b['interactions'], max(sb['scope_size']['median'], 1)):.2f}"
            fit = f"{fitted_slope(results, model):.2f} ({len(pts)})"
        if pts and pts[-1]["models"][model].get("profile"):
            prof = pts[-1]["models"][model]["profile"]
            top = "; ".join(f"`{r['function'].split('(')[-1].rstrip(')')}` {100 * r['tottime_s'] / max(prof['time_s'], 1e-9):.0f}%"
                            for r in prof["top"][:3])
        r_txt = r_exp = "-"
        for ds in results["datasets"].values():
            g = [p for p in ds["models"].get(model, {}).get("request_growth", []) if "time_s" in p]
            if len(g) >= 2:
                r_txt = f"{g[0]['request_users']} -> {g[-1]['request_users']} users"
                r_exp = f"{_exponent(g[0]['request_users'], g[0]['time_s'], g[-1]['request_users'], g[-1]['time_s']):.2f}"
        L.append(f"| {model} | {d_txt} | {t_exp} | {fit} | {s_exp} | {r_txt} | {r_exp} | {top} |")
    lightgcn_largest = "no LightGCN point"
    if synth and "single_summary" in synth[-1]["models"].get("LightGCN", {}):
        t = synth[-1]["models"]["LightGCN"]["single_summary"]["time_s"]["median"]
        lightgcn_largest = (f"{synth[-1]['interactions']:,} interactions: {t:.2f} s, "
                            f"{'within' if t < TARGETS['lightgcn_5m_s'] else 'over'} the {TARGETS['lightgcn_5m_s']:g} s "
                            "target of issue 15")
    shares = [(r["name"] if "name" in r else n, r["models"]["LightGCN"]["single_summary"]["neighbourhood_share"])
              for n, r in results["datasets"].items()
              if "neighbourhood_share" in r["models"].get("LightGCN", {}).get("single_summary", {})]
    neighbourhood = ("the rows of a request's neighbours held, as a share of all adjacency entries (median, "
                     "p10-p90): " + "; ".join(f"{n} {100 * q['median']:.0f}% ({100 * q['p10']:.0f}-{100 * q['p90']:.0f}%)"
                                               for n, q in shares)) if shares else "not measured in this run"
    L += ["", "Reading (from the profiles below):", "",
          "- **WMF, NeuMF**: the solve is one `d x d` block per request user, built from that user's own "
          "scope pairs, and the step calibration scores the request user over the catalogue (`[1, n_items]`). "
          "What grows with the dataset is a handful of vectorised O(|D|) passes over the train interaction "
          "list (the scope's boolean masks and `nonzero`, the retained-row mask, the request users' history "
          "mask in `_probe`), a few tens of ms each at 5M: sub-linear to linear in |D| with a small constant, "
          "and never a users x items or params x params object.",
          "- **LightGCN** (issue 15): a model that serves requests keeps its per-layer embeddings; a request "
          "drops its edges in place (explicit zeros in the coalesced adjacency) and updates the layers exactly "
          "where they change: the request's endpoints `T`, their neighbours, and, through the neighbours' rows "
          "crossed with |T| columns (one CSR product when they are a large share of the graph), every node "
          "within L hops. On these power-law graphs the neighbours of a request's items reach a large share of "
          f"the graph ({neighbourhood}), so an exact update still touches a fixed share of the "
          f"graph, with |T| columns instead of d ({lightgcn_largest}). What else grows with |D| is the "
          "same vectorised passes over the interaction list as for WMF, plus the guard's 500 other users "
          "scored over the catalogue (`[500, n_items]`, the sample of `methods/l2unrank.py`). The first "
          "request on a model RecBole just built also pays the graph preparation (coalesce, one full "
          "propagation): the `cold request` column.",
          "- **Request size**: WMF and LightGCN grow sub-linearly up to 100 users (fixed costs dominate) and "
          "about linearly beyond (the `[U, n_items]` calibration scores, top-k and the per-user blocks); NeuMF "
          "grows linearly from the start: every calibration step scores `U x n_items` pairs through the MLP.", ""]
    return L


PACKAGE_CHANGES = [
    "`adapters/lightgcn.py` `_final`: the final embeddings are cached outside autograd, keyed by the adjacency "
    "object and both embedding tables' version counters, and dropped by `invalidate()` (one request used to "
    "propagate over the whole graph ~10 times: 7 of 10.6 s at 5M interactions; now twice, the second for the "
    "request users' columns). `_columns`' cache key now includes the adjacency.",
    "`adapters/lightgcn.py` `drop_edges` + `LightGCNAdapter.remove_edges`: the retained graph is derived from "
    "the model's own (coalesced) train graph by dropping the request's entries and re-deriving every value "
    "from the new degrees: no sort of the 2|D| entries (1.5-1.8 s at 5M), result identical to a rebuild "
    "(tested). Checked first: entry count = 2 x train rows and every request edge present; otherwise the "
    "caller rebuilds as before. A RecBole-built (uncoalesced) adjacency is coalesced once, then later requests "
    "on the same model skip the sort.",
    "`adapters/lightgcn.py` `prepare_user_delta` / `scores_with_delta`: the step calibration moves only the "
    "request users' rows and the item rows of the final embeddings (not all users), and reuses "
    "`M[rows, U] delta` when every user has the same step (since extended by another engineer with a sample "
    "of other users for the graph-model guard).",
    "`adapters/base.py`: `ModelAdapter.remove_edges` (default: False, i.e. rebuild).",
    "`methods/l2unrank.py` `unlearn`: the retained graph goes through `adapter.remove_edges` first, "
    "`set_graph` (the old rebuild) otherwise.",
]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="0.1M,1M,5M", help="synthetic dataset sizes (interactions), e.g. 0.1M,1M,5M")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--parts", default="latency,growth,successive")
    p.add_argument("--no-ml100k", action="store_true", help="skip ml-100k (part 1's small dataset and part 3)")
    p.add_argument("--users", type=int, default=20, help="single-user requests per (model, dataset)")
    p.add_argument("--request-sizes", default="1,10,100,1000", help="users per request for the request-size growth")
    p.add_argument("--request-size-limit", default="",
                   help="MODEL:N pairs: skip request-size points above N users for that model")
    p.add_argument("--growth-size", default="1M", help="synthetic size of the request-size growth")
    p.add_argument("--steps", type=int, default=20, help="successive requests (part 3)")
    p.add_argument("--successive-models", default="LightGCN,WMF")
    p.add_argument("--epochs-100k", type=int, default=40, help="epoch budget of ml-100k originals and retraining")
    p.add_argument("--lr-100k", type=float, default=None, help="learning rate on ml-100k (default: project config)")
    p.add_argument("--synth-epochs", type=int, default=1)
    p.add_argument("--synth-batch", type=int, default=131072)
    p.add_argument("--valid-sample", type=int, default=2000)
    p.add_argument("--seed", type=int, default=2020)
    p.add_argument("--threads", type=int, default=0, help="torch threads in the workers (0: torch's default)")
    p.add_argument("--retrain-originals", action="store_true", help="train the ml-100k originals again")
    p.add_argument("--regenerate", action="store_true", help="write the synthetic datasets again (timed)")
    p.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "recbole_unrank_scale"))
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    p.add_argument("--timeout", type=float, default=3600, help="seconds per worker")
    p.add_argument("--report-only", action="store_true", help="rebuild scale.md and the plots from scale.json")
    p.add_argument("--rerun", action="store_true", help="run every worker again (default: reuse finished ones)")
    p.add_argument("--reuse", action="append", default=[],
                   help="a finished worker's result file (work/results/<dataset>-<key>.json) to use for its dataset")
    p.add_argument("--merge", action="append", default=[],
                   help="with --report-only: add the datasets of another run's scale.json (e.g. a 20M point)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        res = worker(json.loads(args.worker))
        with open(args.worker_out, "w", encoding="utf-8") as f:
            json.dump(res, f)
        return

    if args.report_only:
        with open(os.path.join(args.out, "scale.json"), encoding="utf-8") as f:
            results = json.load(f)
        for extra in args.merge:  # datasets of another run (e.g. the 20M point, run last and apart)
            with open(extra, encoding="utf-8") as f:
                other = json.load(f)
            for name, res in other["datasets"].items():
                if name not in results["datasets"]:
                    smaller = [n for n, r in other["datasets"].items() if r["interactions"] < res["interactions"]
                               and n.startswith("synth-")]
                    if smaller:  # the same run's smaller points: growth ratios stay within one run
                        res["same_run"] = {n: other["datasets"][n]["models"] for n in smaller}
                    res["merged_from"] = {"argv": other["args"]["argv"], "when": other["host"]["when"],
                                          "load": [other["host"]["load_start"], other["host"].get("load_end")],
                                          "code": other.get("code_start")}
                    results["datasets"][name] = res
            results["args"]["sizes"] = sorted(set(results["args"]["sizes"]) | set(other["args"]["sizes"]))
            results.setdefault("merged", []).append(other["args"]["argv"])
        results["checks"] = check_targets(results)
        results["package_changes"] = PACKAGE_CHANGES
        if "code_end" in results and "code_changed_files" not in results:
            results["code_changed_files"] = changed_files(results["code_start"], results["code_end"])
        _plots(results, args.out)
        print(write_report(results, args.out))
        return

    start = time.perf_counter()
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    parts = {x.strip() for x in args.parts.split(",") if x.strip()}
    sizes = sorted({parse_size(s) for s in args.sizes.split(",") if s.strip()})
    growth_n = parse_size(args.growth_size)
    limits = {}
    for item in filter(None, args.request_size_limit.split(",")):
        m, n = item.split(":")
        limits[m.strip()] = int(n)
    spec_base = {
        "models": models, "parts": sorted(parts), "users": args.users,
        "request_sizes": [int(x) for x in args.request_sizes.split(",") if x.strip()],
        "request_size_limits": limits, "growth_dataset": synth_name(growth_n) if "growth" in parts else None,
        "steps": args.steps, "successive_models": [m.strip() for m in args.successive_models.split(",")],
        "epochs_100k": args.epochs_100k, "lr_100k": args.lr_100k, "synth_epochs": args.synth_epochs,
        "synth_batch": args.synth_batch, "valid_sample": args.valid_sample, "seed": args.seed,
        "threads": args.threads, "retrain_originals": args.retrain_originals, "work": args.work,
    }
    os.makedirs(args.out, exist_ok=True)
    results = {
        "args": {**spec_base, "argv": " ".join(sys.argv[1:] if argv is None else argv), "sizes": sizes,
                 "growth_dataset": synth_name(growth_n), "work": args.work},
        "host": {"cpus": os.cpu_count(), "load_start": [round(x, 2) for x in os.getloadavg()],
                 "when": time.strftime("%Y-%m-%d %H:%M")},
        "datasets": {}, "generated": {}, "code_start": code_state(),
    }
    reuse, reuse_paths = {}, {}
    for path in args.reuse:
        with open(path, encoding="utf-8") as f:
            res = json.load(f)
        reuse[res["dataset"]], reuse_paths[res["dataset"]] = res, path
    jobs = []
    if not args.no_ml100k and parts & {"latency", "successive"}:
        jobs.append("ml-100k")
    run_sizes = set(sizes) | ({growth_n} if "growth" in parts else set())
    for n in sorted(run_sizes):
        info = ensure_synthetic(n, args.seed, args.regenerate)
        results["generated"][info["name"]] = info
        print(f"[scale] dataset {info['name']}: {info['path']}"
              + (f" (generated in {info['generated_s']:.1f}s)" if info["generated_s"] else ""), flush=True)
        jobs.append(info["name"])
    for ds in jobs:
        spec = {**spec_base, "dataset": ds}
        if ds != "ml-100k":
            spec["parts"] = [x for x in spec["parts"] if x != "successive"]
            if ds != spec_base["growth_dataset"] and "latency" not in parts:
                continue
        # resumable: a finished worker's result is kept in the work folder (atomically) and reused
        # by the same command unless --rerun; the package commit is part of the key
        import hashlib

        key = hashlib.sha1(json.dumps({**spec, "code": results["code_start"]}, sort_keys=True).encode()).hexdigest()[:12]
        cached = os.path.join(args.work, "results", f"{ds}-{key}.json")
        if ds in reuse:  # --reuse: a finished worker's result given by path
            res = reuse[ds]
            res["reused_from"] = reuse_paths[ds]
            print(f"[scale] worker {ds}: reusing {reuse_paths[ds]}", flush=True)
        elif os.path.isfile(cached) and not args.rerun:
            with open(cached, encoding="utf-8") as f:
                res = json.load(f)
            print(f"[scale] worker {ds}: finished before, reusing {cached}", flush=True)
        else:
            print(f"[scale] worker {ds} ...", flush=True)
            res = run_worker(spec, args.timeout)
            os.makedirs(os.path.dirname(cached), exist_ok=True)
            with open(cached + ".tmp", "w", encoding="utf-8") as f:
                json.dump(res, f)
            os.replace(cached + ".tmp", cached)
        results["datasets"][ds] = res
        for model, out in res["models"].items():
            s = out.get("single_summary")
            if s:
                print(f"[scale]   {model}: request median {s['time_s']['median']:.3f}s (max {s['time_s']['max']:.3f}s), "
                      f"epoch {_fmt_s(out['epoch_s'])}s, peak {_gib(s['peak_bytes']['max']):.2f} GiB", flush=True)
            if out.get("successive"):
                print(f"[scale]   {model}: after {args.steps} requests NDCG@10 {100 * out['successive']['ndcg_gap']:+.2f}% "
                      "vs retrain", flush=True)
        print(f"[scale] worker {ds} done in {res['worker_wall_s']:.0f}s", flush=True)
    import torch

    results["host"]["torch_threads"] = args.threads or torch.get_num_threads()
    results["host"]["load_end"] = [round(x, 2) for x in os.getloadavg()]
    results["wall_s"] = time.perf_counter() - start
    results["code_end"] = code_state()
    results["code_changed_files"] = changed_files(results["code_start"], results["code_end"])
    results["checks"] = check_targets(results)
    results["package_changes"] = PACKAGE_CHANGES
    results["plots"] = [os.path.basename(x) for x in _plots(results, args.out)]
    path = os.path.join(args.out, "scale.json")
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1, default=float)
    os.replace(path + ".tmp", path)
    md = write_report(results, args.out)
    for c in results["checks"]:
        print(f"[scale] {'OK  ' if c['ok'] else 'MISS'} {c['target']}: {c['value']:.3f} {c['unit']} (limit {c['limit']:g})")
    print(md)


if __name__ == "__main__":
    main()
