"""Real-time forget requests at scale (issues 7 and 15): L2UnRank latency, growth and drift.

    python benchmarks/scale.py                           # everything, about 20 min on 2 cores
    python benchmarks/scale.py --sizes 0.1M,1M --models LightGCN --users 5
    python benchmarks/scale.py --parts latency --sizes 5M
    python benchmarks/scale.py --quick --out /tmp/scale  # every part on the tiny dataset (a test runs it)
    python benchmarks/scale.py --report-only             # scale.md and the plots again from scale.json
    python benchmarks/scale.py --device cuda --sizes 1M,5M --no-ml100k --parts latency   # on a GPU

Three parts, each in fresh worker processes (one per dataset, so every dataset's figures come
from a clean interpreter):

1. ``latency``: one request = 10 train interactions of one user (``request_from_pairs`` over
   that user's train rows). The original model is trained once and kept in memory; each request
   gets a private copy of it (``copy.deepcopy``, not timed) and L2UnRank (project defaults:
   user-block Gauss-Newton + calibrated step) is called on an ``UnlearnTask``, so the time is
   the method's own (scope, weights, solve, step calibration, cache refresh), without
   evaluation. Median and spread over ``--users`` different users, for each model, on ml-100k
   and on synthetic datasets (``recbole_unrank.synthetic``, written as RecBole atomic files
   under ``dataset/synth-*``). Beside it, one training epoch of RecBole's ``Trainer.fit`` on
   the same data, measured in the same worker. A LightGCN model is first answered as RecBole
   built it (``cold``: a one-request command-line run), then its graph is prepared once, as a
   process that serves requests holds it.
2. ``growth``: time and peak memory against the dataset size (``--sizes``, fixed request of one
   user) and against the request size (``--request-sizes`` users of 10 interactions each, on
   ``--growth-size``); log axes. Peak memory is the process's peak resident set size during the
   call (:class:`PeakMeter`). A cProfile of one request per (model, dataset) names what dominates.
3. ``successive``: ``--steps`` single-user requests applied one after another to the same model
   on ml-100k (each drawn from the current retained data, which shrinks), with test NDCG@10 and
   the forget measures over all requests so far after each step (pipeline's ``make_loaders`` /
   ``make_forget_loader`` with the cumulative retained set, ``metrics.evaluate_loader``), against
   one retraining without all of them (same config, seed and epoch budget).

Everything is built and run through the package's and RecBole's public functions; nothing of
either is replaced. This file measures and writes ``benchmarks/results/scale.json``;
``scale_report.py`` checks the targets and writes ``scale.md`` and ``scale_*.png`` from it.

``--device`` (``cpu``, ``cuda`` or ``auto``: CUDA where present, the default) is where the
workers train and answer: ``cpu`` hides the GPU from them (``gpu_id: ''``,
``CUDA_VISIBLE_DEVICES=''``), ``cuda`` gives them the first GPU (``gpu_id: '0'``) and waits for
its kernels before a request's clock stops; peak GPU memory is recorded beside the resident set.
A synthetic size the machine cannot hold is refused before generation (one line: the estimate
and the limit; nothing written).
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import gc
import hashlib
import json
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
for path in (ROOT, HERE):
    if path not in sys.path:
        sys.path.insert(0, path)

from harness import changed_files, code_state, config_files, load_average, silence, write_json  # noqa: E402
from scale_report import check_targets, gib, plots, write_report  # noqa: E402

MODELS = ["WMF", "NeuMF", "LightGCN"]
# Synthetic datasets: interactions -> (users, items). The generator lands about 4% short of
# its target, so it is asked for a little more.
SYNTH_SHAPES = {100_000: (5_000, 3_000), 1_000_000: (20_000, 10_000), 5_000_000: (50_000, 20_000),
                20_000_000: (150_000, 50_000)}
GEN_OVERSHOOT = 1.04
REQUEST_INTERACTIONS = 10
# --quick: every part, small, on the tiny dataset instead of ml-100k (no synthetic set)
QUICK = {"sizes": "", "models": "WMF,LightGCN", "small": "tiny", "users": 2, "steps": 2, "epochs_100k": 2,
         "successive_models": "WMF,LightGCN", "parts": "latency,successive"}


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
    for (path, line, func), (_cc, nc, tt, ct, _) in stats.stats.items():
        short = path.replace(ROOT + os.sep, "").replace(os.path.dirname(os.__file__), "<py>")
        if "site-packages" in short:
            short = short.split("site-packages" + os.sep, 1)[1]
        rows.append({"function": f"{short}:{line}({func})" if line else func, "calls": int(nc),
                     "tottime_s": float(tt), "cumtime_s": float(ct)})
    rows.sort(key=lambda r: -r["tottime_s"])
    return rows[:n]


# =========================================================================== the worker
def _config(model: str, dataset: str, spec: dict, extra: dict | None = None):
    from recbole_unrank import pipeline

    files = config_files(model, dataset)
    overrides = {"data_path": os.path.join(ROOT, "dataset"), "checkpoint_dir": os.path.join(spec["work"], "saved"),
                 "gpu_id": "0" if spec.get("device") == "cuda" else "", "show_progress": False, "seed": spec["seed"], "eval_batch_size": 409600}
    if dataset == spec["small"]:
        overrides["epochs"] = spec["epochs_100k"]
        if spec.get("lr_100k"):
            overrides["learning_rate"] = spec["lr_100k"]
    else:  # RecBole's own dataset cache (save_dataset): the atomic file is parsed once per size
        overrides.update(epochs=spec["synth_epochs"], train_batch_size=spec["synth_batch"], save_dataset=True)
    return pipeline.build_config(model, dataset, files, {**overrides, **(extra or {})})


def _fresh_model(config, train_ds):
    """A new model as RecBole builds it (``recbole_unrank.get_model``: ours, else RecBole's)."""
    from recbole.utils import init_seed

    from recbole_unrank import get_model

    init_seed(config["seed"], config["reproducibility"])
    return get_model(config["model"])(config, train_ds).to(config["device"])


def _fit(config, model, loader) -> tuple[int, float]:
    """``config['epochs']`` epochs of RecBole's ``Trainer.fit`` on ``loader``, without
    validation (``eval_step`` 0) nor checkpoint; returns (epochs, seconds)."""
    from recbole.utils import get_trainer

    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    t0 = time.perf_counter()
    if config["epochs"] > 0:
        trainer.fit(loader, None, verbose=False, saved=False, show_progress=False)
    model.eval()
    return int(config["epochs"]), time.perf_counter() - t0


def _original(data, spec: dict, model_name: str, out: dict):
    """The original model, in memory: on the small real dataset trained with early stopping
    (``pipeline.train_model``, cached across runs in the work folder); on a synthetic one
    ``synth_epochs`` epochs (timed; quality is irrelevant to latency). ``out['epoch_s']``: one
    training epoch on the same data, of a fresh model (what a retrain pays per epoch)."""
    from recbole_unrank import pipeline

    dataset = data.dataset.dataset_name
    config = _config(model_name, dataset, spec)
    t0 = time.perf_counter()
    train = pipeline.make_train_loader(config, data, data.train_ds)
    out.update(train_loader_s=time.perf_counter() - t0, train_batch_size=int(config["train_batch_size"]))
    if dataset == spec["small"]:
        recipe = "".join(open(f, encoding="utf-8").read() for f in config_files(model_name, dataset))
        recipe += f"{spec['epochs_100k']}/{config['learning_rate']}/{spec['seed']}"
        tag = hashlib.sha1(recipe.encode()).hexdigest()[:10]  # a changed config trains again
        path = os.path.join(spec["work"], "ckpt", f"{model_name}-{dataset}-e{spec['epochs_100k']}-{tag}.pth")
        if os.path.isfile(path) and not spec["retrain_originals"]:
            t0 = time.perf_counter()  # what the CLI does: RecBole builds the model, then the state loads
            model = pipeline.load_checkpoint(config, pipeline.read_checkpoint(path), data.train_ds, path)
            out.update(model_init_s=time.perf_counter() - t0, original={"cached": path})
        else:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            _, valid, _ = pipeline.make_loaders(config, data)
            model, info = pipeline.train_model(config, train, valid, path, tag="original")
            out["original"] = {**info, "checkpoint": path}
        one = _config(model_name, dataset, spec, {"epochs": 1, "eval_step": 0})
        out["epoch_s"] = _fit(one, _fresh_model(one, data.train_ds), train)[1]
    else:
        t0 = time.perf_counter()
        model = _fresh_model(config, data.train_ds)
        out["model_init_s"] = time.perf_counter() - t0
        epochs, seconds = _fit(_config(model_name, dataset, spec, {"eval_step": 0}), model, train)
        out["epoch_s"] = seconds / epochs if epochs else None  # --synth-epochs 0: an untrained model
        out["original"] = {"epochs": epochs, "time_s": seconds}
    model.eval()
    del train
    gc.collect()
    return config, model


def _rows_by_user(ds):
    """Per user, its rows of ``ds.inter_feat`` (CSR over users, numpy)."""
    import numpy as np

    u = ds.inter_feat[ds.uid_field].numpy()
    i = ds.inter_feat[ds.iid_field].numpy()
    order = np.argsort(u, kind="stable")
    starts = np.searchsorted(u[order], np.arange(int(ds.user_num) + 1))
    return u, i, order, starts


def _neighbourhood_share(model, pairs):
    """LightGCN with a prepared graph: the share of the adjacency's entries in the rows of the
    request endpoints' neighbours (what an exact update of the second layer must cross)."""
    from recbole_unrank.adapters.lightgcn_graph import local_graph

    st = local_graph(model)
    if st is None:
        return None
    return st.neighbour_share(pairs[0], pairs[1])


def _prepare_index(data, config) -> float | None:
    """The train and validation interactions indexed on the device (``influence.index``), as a
    process that serves requests from one loaded data set holds them: paid once here (timed),
    then every request of every model reads its rows from them. None where the package has no
    index (an older checkout)."""
    try:
        from recbole_unrank.influence.index import interaction_index
    except ImportError:
        return None
    import torch

    t0 = time.perf_counter()
    n_users, n_items = int(data.dataset.user_num), int(data.dataset.item_num)
    for split in (data.train_ds, data.valid_ds):
        feat = split.inter_feat
        interaction_index(feat[split.uid_field], feat[split.iid_field], torch.device(config["device"]), n_users, n_items)
    return time.perf_counter() - t0


def _cuda_sync(config):
    """``torch.cuda.synchronize`` where the config's device is a GPU, else None."""
    import torch

    return torch.cuda.synchronize if torch.device(config["device"]).type == "cuda" else None


def resolve_device(choice: str) -> str:
    """``--device``: ``auto`` is CUDA where torch sees a GPU, else the CPU; ``cuda`` without a GPU
    is refused (one line)."""
    import torch

    from recbole_unrank.errors import UnrankError

    if choice not in ("cpu", "cuda", "auto"):
        raise UnrankError(f"--device={choice}: give cpu, cuda or auto")
    has_cuda = torch.cuda.is_available()
    if choice == "cuda" and not has_cuda:
        raise UnrankError("--device=cuda: torch sees no CUDA device here; use --device cpu (or auto)")
    return "cuda" if choice == "cuda" or (choice == "auto" and has_cuda) else "cpu"


def _device_name(device: str) -> str:
    import platform

    import torch

    return torch.cuda.get_device_name(0) if device == "cuda" else (platform.processor() or platform.machine())


def _task(model, model_name, train_ds, request, data, seed):
    """The method's input, as the pipeline builds it for one request (no evaluation hooks)."""
    from recbole_unrank.methods import UnlearnTask

    return UnlearnTask(
        model=model, model_name=model_name, train_ds=train_ds, retain_ds=None, forget_ds=None,
        request_index=request.index, seed=seed, valid_ds=data.valid_ds,
    )


class Requests:
    """Single- or multi-user requests on one model: ``n_users`` distinct users of the pool
    (users with at least ``min_rows`` train rows), ``REQUEST_INTERACTIONS`` random train rows
    each; each answered on a private copy of the model and measured (:meth:`measure`)."""

    def __init__(self, method, model, config, data, seed: int, min_rows: int):
        import numpy as np

        self.method, self.model, self.config, self.data = method, model, config, data
        self.by_user = _rows_by_user(data.train_ds)
        deg = np.diff(self.by_user[3])
        self.pool = np.flatnonzero(deg >= min_rows)
        self.rng = np.random.default_rng(seed)

    def pick(self, n_users: int):
        """(users, items) of a request."""
        import numpy as np

        u, i, order, starts = self.by_user
        chosen = self.rng.choice(self.pool, size=n_users, replace=False)
        rows = np.concatenate([self.rng.choice(order[starts[x]:starts[x + 1]], size=REQUEST_INTERACTIONS,
                                               replace=False) for x in chosen])
        return u[rows], i[rows]

    def measure(self, n_users: int, seed: int, profile: bool = False) -> dict:
        """One request of ``n_users`` users: the method's time and stages, the lookup, the
        process's peak memory during the call, and (``profile``) its top functions."""
        from recbole_unrank.request import request_from_pairs

        pairs = self.pick(n_users)
        data, config = self.data, self.config
        t0 = time.perf_counter()
        request = request_from_pairs(data.train_ds, pairs[0], pairs[1], "file")
        lookup_s = time.perf_counter() - t0
        share = _neighbourhood_share(self.model, pairs)
        task = _task(copy.deepcopy(self.model), config["model"], data.train_ds, request, data, seed)
        prof = cProfile.Profile() if profile else None
        cuda = _cuda_sync(config)
        if cuda:
            import torch

            torch.cuda.reset_peak_memory_stats()
        with PeakMeter() as mem:
            if prof:
                prof.enable()
            t0 = time.perf_counter()
            result = self.method(task)
            if cuda:
                cuda()  # the clock stops once the GPU's queued kernels are done
            wall = time.perf_counter() - t0
            if prof:
                prof.disable()
        info, calibration = result.info, result.info.get("calibration", {})
        row = {
            # on a GPU the wall time, which ends after the kernels did (the method's own clock may not)
            "time_s": wall if cuda else float(info.get("time_s", wall)), "method_time_s": info.get("time_s"),
            "wall_s": wall, "lookup_s": lookup_s,
            "stages": {k: float(v) for k, v in result.stages.items()},
            "pairs": len(request), "users": int(len(set(request.users.tolist()))),
            "scope_size": info.get("scope_size"), "train_size": info.get("train_size"),
            "step_median": calibration.get("step_median"), "users_meeting_view": calibration.get("users_meeting_target"),
            "rss_before_bytes": mem.before, "peak_bytes": mem.peak, "peak_delta_bytes": mem.delta,
            "memory_method": mem.method, "neighbourhood_share": share,
        }
        if cuda:
            import torch

            row["cuda_peak_bytes"] = int(torch.cuda.max_memory_allocated())
        if prof:
            row["profile"] = top_functions(prof)
        del task, result
        gc.collect()
        return row


def _latency(requests: Requests, spec: dict, out: dict) -> None:
    """Part 1: ``spec['users']`` single-user requests, then one more under the profiler."""
    import numpy as np

    rows = [requests.measure(1, spec["seed"] + k) for k in range(spec["users"])]
    summary = {key: quantiles([r[key] or 0 for r in rows])
               for key in ("time_s", "lookup_s", "peak_bytes", "peak_delta_bytes", "scope_size")}
    summary["stages"] = {s: quantiles([r["stages"].get(s, 0.0) for r in rows]) for s in rows[0]["stages"]}
    summary["users_meeting_view"] = float(np.mean([r["users_meeting_view"] or 0.0 for r in rows]))
    if "cuda_peak_bytes" in rows[0]:
        summary["cuda_peak_bytes"] = quantiles([r["cuda_peak_bytes"] for r in rows])
    if rows[0].get("neighbourhood_share") is not None:
        summary["neighbourhood_share"] = quantiles([r["neighbourhood_share"] for r in rows])
    prof = requests.measure(1, spec["seed"] + 999, profile=True)
    out.update(single=rows, single_summary=summary, profile={"time_s": prof["time_s"], "top": prof["profile"]})


def _graph_preparation(requests: Requests, spec: dict, out: dict) -> None:
    """A graph model as RecBole built it (uncoalesced adjacency, no per-layer state): first
    requests on copies of it exactly so (what one CLI run that loads the model and answers one
    request pays: the coalesce of the adjacency and one full propagation are inside its time),
    then the preparation alone on the model itself (timed), which every later request reuses."""
    from recbole_unrank.adapters import get_adapter

    cold = [requests.measure(1, spec["seed"] + 500 + k) for k in range(spec.get("cold_requests", 3))]
    out["cold"] = cold
    out["cold_summary"] = {"time_s": quantiles([r["time_s"] for r in cold]),
                           "peak_bytes": quantiles([r["peak_bytes"] for r in cold])}
    with PeakMeter() as mem:
        t0 = time.perf_counter()
        get_adapter(requests.model).local()
        out["graph_prep_s"] = time.perf_counter() - t0
    out["graph_prep_peak_bytes"] = mem.peak


def _request_growth(requests: Requests, spec: dict, out: dict) -> None:
    """Part 2, request size: the median of 3 runs (1 above 10 users) per request size."""
    points = []
    model = requests.config["model"]
    limit = spec["request_size_limits"].get(model)
    for n_users in spec["request_sizes"]:
        if n_users > requests.pool.size or (limit and n_users > limit):
            points.append({"request_users": n_users, "skipped": "more users than the pool"
                           if n_users > requests.pool.size else f"above --request-size-limit for {model} ({limit})"})
            continue
        reps = 3 if n_users <= 10 else 1
        rows = [requests.measure(n_users, spec["seed"] + n_users + r, profile=(r == 0 and n_users >= 100))
                for r in range(reps)]
        median = sorted(rows, key=lambda r: r["time_s"])[len(rows) // 2]
        points.append({"request_users": n_users, "reps": reps, **median, "time_s_all": [r["time_s"] for r in rows]})
    out["request_growth"] = points


# --------------------------------------------------------------------------- successive
def _evaluate(config, data, model, retained, forgotten, reference=None):
    from recbole_unrank import pipeline
    from recbole_unrank.evaluation import metrics

    _, _, test = pipeline.make_loaders(config, data, retained)
    res, _ = metrics.evaluate_loader(model, test, ["NDCG", "Recall"], [10, 20])
    out = {"test": res}
    if forgotten is not None:
        f_loader = pipeline.make_forget_loader(config, retained, forgotten)
        names = ["forget_hit", "forget_ndcg", "mean_rank"] + (["rdr", "rank_decline_ratio"] if reference else [])
        out["forget"], out["_ranks"] = metrics.evaluate_loader(model, f_loader, names, [10, 20], reference=reference)
    return out


def _successive(method, model0, config, data, spec, out):
    """Part 3: ``steps`` single-user requests applied one after another to the same model,
    each drawn from the current retained data; then one retraining without all of them."""
    import numpy as np
    import torch

    from recbole_unrank import pipeline
    from recbole_unrank.request import request_from_pairs

    train_ds = data.train_ds
    rng = np.random.default_rng(spec["seed"] + 7)
    by_user = _rows_by_user(train_ds)
    pool = np.flatnonzero(np.diff(by_user[3]) >= 2 * REQUEST_INTERACTIONS)
    chosen = rng.choice(pool, size=spec["steps"], replace=False)
    model, current = copy.deepcopy(model0), train_ds
    orig_rows = np.arange(len(train_ds.inter_feat))  # row of train_ds behind each row of current
    forgotten: list[int] = []
    original_eval = _evaluate(config, data, model0, train_ds, None)
    trace = []
    for k, user in enumerate(chosen):
        cu = current.inter_feat[current.uid_field].numpy()
        ci = current.inter_feat[current.iid_field].numpy()
        pick = rng.choice(np.flatnonzero(cu == user), size=REQUEST_INTERACTIONS, replace=False)
        request = request_from_pairs(current, cu[pick], ci[pick], "file")
        result = method(_task(model, config["model"], current, request, data, spec["seed"] + k))
        model = result.model
        keep = np.ones(len(current.inter_feat), dtype=bool)
        keep[request.index] = False
        forgotten.extend(orig_rows[request.index].tolist())
        orig_rows = orig_rows[keep]
        current = current.copy(current.inter_feat[torch.from_numpy(np.flatnonzero(keep))])
        forget_ds = train_ds.copy(train_ds.inter_feat[torch.from_numpy(np.sort(np.asarray(forgotten)))])
        ev = _evaluate(config, data, model, current, forget_ds)
        calibration = result.info.get("calibration", {})
        trace.append({"step": k + 1, "user": int(user), "time_s": float(result.info["time_s"]),
                      "retained": int(len(current.inter_feat)), "forgotten": len(forgotten),
                      "test": ev["test"], "forget": ev["forget"], "step_median": calibration.get("step_median"),
                      "users_meeting_view": calibration.get("users_meeting_target")})
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
    silence()
    import torch

    import recbole_unrank  # noqa: F401
    from recbole_unrank import pipeline
    from recbole_unrank.methods import METHODS

    silence()
    started = time.perf_counter()
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    dataset, parts = spec["dataset"], spec["parts"]
    res = {"dataset": dataset, "threads": torch.get_num_threads(), "models": {}, "device": spec.get("device", "cpu"),
           "load_start": load_average()}
    with PeakMeter() as mem:
        t0 = time.perf_counter()
        config0 = _config(spec["models"][0], dataset, spec)
        saved = os.path.join(config0["checkpoint_dir"], f"{dataset}-Dataset.pth")
        res["dataset_cache"] = {"path": saved, "existed": os.path.isfile(saved)} if config0["save_dataset"] else None
        data = pipeline.load_data(config0)
        res["load_s"] = time.perf_counter() - t0
    res["load_peak_bytes"] = mem.peak
    ds = data.dataset
    res.update(interactions=int(len(ds.inter_feat)), train_interactions=int(len(data.train_ds.inter_feat)),
               n_users=int(ds.user_num) - 1, n_items=int(ds.item_num) - 1)
    res["index_prep_s"] = _prepare_index(data, config0)
    for model_name in spec["models"]:
        out: dict = {}
        res["models"][model_name] = out
        t0 = time.perf_counter()
        config, model = _original(data, spec, model_name, out)
        out["prepare_s"] = time.perf_counter() - t0
        cls = METHODS["l2unrank"]
        method = cls(**pipeline.method_settings(config, cls))

        def requests(seed, min_rows, method=method, model=model, config=config):
            return Requests(method, model, config, data, seed, min_rows)

        if hasattr(model, "norm_adj_matrix") and "latency" in parts:
            _graph_preparation(requests(spec["seed"] + 3, REQUEST_INTERACTIONS), spec, out)
        if "latency" in parts:
            single = requests(spec["seed"], 2 * REQUEST_INTERACTIONS)
            if single.pool.size < spec["users"] + 1:  # a small dataset: users with fewer rows too
                single = requests(spec["seed"], REQUEST_INTERACTIONS)
            _latency(single, spec, out)
        if dataset == spec.get("growth_dataset") and "growth" in parts:
            _request_growth(requests(spec["seed"] + 1, 2 * REQUEST_INTERACTIONS), spec, out)
        if dataset == spec["small"] and "successive" in parts and model_name in spec["successive_models"]:
            _successive(method, model, config, data, spec, out)
        del model
        gc.collect()
        cell = spec.get("cells", {}).get(model_name)
        if cell:  # one record per finished (dataset, model) cell, written atomically: a rerun resumes here
            record = {**{k: v for k, v in res.items() if k != "models"}, "models": {model_name: out},
                      "worker_elapsed_s": time.perf_counter() - started,
                      "process_peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                      "load_end": load_average()}
            write_json(record, cell)
    res["process_peak_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    res["load_end"] = load_average()
    return res


# =========================================================================== orchestration
def ensure_synthetic(n: int, seed: int, regenerate: bool = False) -> dict:
    """Write ``dataset/synth-<size>`` with the project's generator unless it is there; a size
    the machine cannot hold is refused first (``UnrankError``: estimate and limit, nothing written)."""
    name = synth_name(n)
    path = os.path.join(ROOT, "dataset", name, f"{name}.inter")
    users, items = synth_shape(n)
    info = {"name": name, "users": users, "items": items, "target": n, "path": path}
    if os.path.isfile(path) and not regenerate:
        info["generated_s"] = None
        return info
    from recbole_unrank.synthetic import check_fits, generate_interactions, write_atomic

    info["estimate"] = check_fits(users, items, int(n * GEN_OVERSHOOT), os.path.dirname(path),
                                  option=f"--sizes {size_tag(n)}")
    t0 = time.perf_counter()
    u, i, ts = generate_interactions(users, items, int(n * GEN_OVERSHOOT), seed)
    write_atomic(os.path.join(ROOT, "dataset"), name, u, i, ts)
    info["generated_s"] = time.perf_counter() - t0
    return info


def run_worker(spec: dict, timeout: float) -> dict:
    """``worker(spec)`` in a fresh interpreter (clean memory figures); its JSON back."""
    fd, path = tempfile.mkstemp(suffix=".json", prefix="scale-")
    os.close(fd)
    env = dict(os.environ)
    env["MALLOC_MMAP_THRESHOLD_"] = str(1 << 20)  # freed tensors >= 1 MiB go back to the system
    env["PYTHONWARNINGS"] = "ignore"
    if spec.get("device", "cpu") == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # RecBole's Config would hide it too (gpu_id '')
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


# =========================================================================== the command
def merge_records(results: dict, paths: list[str]) -> None:
    """``--report-only --merge``: add the datasets of other runs' scale.json (e.g. a 20M point,
    run last and apart); a merged dataset keeps its own run's smaller points for growth ratios."""
    for extra in paths:
        with open(extra, encoding="utf-8") as f:
            other = json.load(f)
        for name, res in other["datasets"].items():
            if name in results["datasets"]:
                continue
            smaller = [n for n, r in other["datasets"].items()
                       if r["interactions"] < res["interactions"] and n.startswith("synth-")]
            if smaller:  # the same run's smaller points: growth ratios stay within one run
                res["same_run"] = {n: other["datasets"][n]["models"] for n in smaller}
            res["merged_from"] = {"argv": other["args"]["argv"], "when": other["host"]["when"],
                                  "load": [other["host"]["load_start"], other["host"].get("load_end")],
                                  "code": other.get("code_start")}
            results["datasets"][name] = res
        results["args"]["sizes"] = sorted(set(results["args"]["sizes"]) | set(other["args"]["sizes"]))
        results.setdefault("merged", []).append(other["args"]["argv"])


def before_record(path: str) -> dict:
    """What ``--before`` keeps of another run: its command, code, load and per (dataset, model)
    request-time summary and peak memory."""
    with open(path, encoding="utf-8") as f:
        other = json.load(f)
    cells = {}
    for name, res in other["datasets"].items():
        for model, out in res["models"].items():
            s = out.get("single_summary")
            if s:
                cells.setdefault(name, {})[model] = {"time_s": s["time_s"], "peak_bytes": s["peak_bytes"],
                                                     "stages": {k: v["median"] for k, v in s["stages"].items()},
                                                     "profile": out.get("profile")}
    return {"argv": other["args"]["argv"], "when": other["host"]["when"], "code": other.get("code_start"),
            "path": os.path.relpath(path, ROOT) if os.path.abspath(path).startswith(ROOT + os.sep) else path,
            "load": [other["host"]["load_start"], other["host"].get("load_end")], "cells": cells}


def report(results: dict, out_dir: str, save: bool = False) -> str:
    """Targets and plots into the record (saved as scale.json first with ``save``), then
    scale.md; returns its path."""
    results["checks"] = check_targets(results)
    results["plots"] = [os.path.basename(x) for x in plots(results, out_dir)]
    if save:
        path = os.path.join(out_dir, "scale.json")
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1, default=float)
        os.replace(path + ".tmp", path)
    return write_report(results, out_dir)


def _parser() -> argparse.ArgumentParser:
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
    p.add_argument("--seed", type=int, default=2020)
    p.add_argument("--threads", type=int, default=0, help="torch threads in the workers (0: torch's default)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (CUDA where torch sees one)")
    p.add_argument("--retrain-originals", action="store_true", help="train the ml-100k originals again")
    p.add_argument("--regenerate", action="store_true", help="write the synthetic datasets again (timed)")
    p.add_argument("--quick", action="store_true",
                   help="every part on the tiny dataset with a few requests (checks the benchmark runs; "
                        "give --out and --work apart from the real results); options given explicitly "
                        "(--models, --parts, --users, ...) override its choices")
    p.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "recbole_unrank_scale"))
    p.add_argument("--out", default=None, help="where scale.json / .md / .png go (default: benchmarks/results; "
                   "with --quick: <work>/quick)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per worker")
    p.add_argument("--report-only", action="store_true", help="rebuild scale.md and the plots from scale.json")
    p.add_argument("--rerun", action="store_true", help="run every worker again (default: reuse finished ones)")
    p.add_argument("--reuse", action="append", default=[],
                   help="a finished worker's result file (work/results/<dataset>-<key>.json) to use for its dataset")
    p.add_argument("--merge", action="append", default=[],
                   help="with --report-only: add the datasets of another run's scale.json (e.g. a 20M point)")
    p.add_argument("--before", default=None,
                   help="with --report-only: another run's scale.json (older code, same settings) to compare "
                        "request medians and peaks with, per dataset and model")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    return p


def _spec_base(args) -> dict:
    """What every worker is told (its dataset is added per worker)."""
    if args.quick:  # --quick's values replace the defaults; an option given explicitly wins
        for key, value in QUICK.items():
            if key != "small" and key not in getattr(args, "given", set()):
                setattr(args, key, value)
    parts = sorted({x.strip() for x in args.parts.split(",") if x.strip()})
    limits = {m.strip(): int(n) for m, n in (item.split(":") for item in filter(None, args.request_size_limit.split(",")))}
    growth = parse_size(args.growth_size)
    return {
        "models": [m.strip() for m in args.models.split(",") if m.strip()], "parts": parts, "users": args.users,
        "request_sizes": [int(x) for x in args.request_sizes.split(",") if x.strip()],
        "request_size_limits": limits, "growth_dataset": synth_name(growth) if "growth" in parts else None,
        "steps": args.steps, "successive_models": [m.strip() for m in args.successive_models.split(",")],
        "epochs_100k": args.epochs_100k, "lr_100k": args.lr_100k, "synth_epochs": args.synth_epochs,
        "synth_batch": args.synth_batch, "seed": args.seed,
        "threads": args.threads, "retrain_originals": args.retrain_originals, "work": args.work,
        "small": QUICK["small"] if args.quick else "ml-100k", "device": resolve_device(args.device),
    }


def _worker_result(spec: dict, args, code: dict, reuse: dict) -> dict:
    """A dataset's result: given by ``--reuse``, or assembled from one record per (dataset,
    model) cell, each finished before with the same spec and code (kept atomically in the work
    folder; unless ``--rerun``) or run now: one worker for the cells still missing, which writes
    each cell as soon as its model is done, so a run stopped midway resumes at the next model."""
    ds = spec["dataset"]
    if ds in reuse:
        print(f"[scale] worker {ds}: reusing {reuse[ds]['reused_from']}", flush=True)
        return reuse[ds]
    cells = {}
    for model in spec["models"]:
        key = hashlib.sha1(json.dumps({**spec, "models": [model], "code": code}, sort_keys=True).encode()).hexdigest()
        cells[model] = os.path.join(args.work, "results", f"{ds}-{model}-{key[:12]}.json")
    todo = [m for m in spec["models"] if args.rerun or not os.path.isfile(cells[m])]
    for m in spec["models"]:
        if m not in todo:
            print(f"[scale] {ds} / {m}: finished before, reusing {cells[m]}", flush=True)
    wall = None
    if todo:
        print(f"[scale] worker {ds} ({', '.join(todo)}) ...", flush=True)
        ran = run_worker({**spec, "models": todo, "cells": {m: cells[m] for m in todo}}, args.timeout)
        wall = ran["worker_wall_s"]
    records = {}
    for m in spec["models"]:
        with open(cells[m], encoding="utf-8") as f:
            records[m] = json.load(f)
    last = records[todo[-1]] if todo else records[spec["models"][-1]]
    res = {k: v for k, v in last.items() if k not in ("models", "worker_elapsed_s")}
    res["models"] = {m: records[m]["models"][m] for m in spec["models"]}
    res["process_peak_bytes"] = max(r["process_peak_bytes"] for r in records.values())
    res["worker_wall_s"] = wall if wall is not None else max(r["worker_elapsed_s"] for r in records.values())
    res["cells"] = {m: {"path": cells[m], "resumed": m not in todo} for m in spec["models"]}
    return res


def main(argv=None) -> None:
    from recbole_unrank.errors import UnrankError

    try:
        _main(argv)
    except UnrankError as exc:
        sys.exit(f"scale: {exc}")


def _given(argv) -> set[str]:
    """The options given on the command line (their ``dest`` names), not left at a default."""
    p = _parser()
    for action in p._actions:
        action.default = argparse.SUPPRESS
    return set(vars(p.parse_args(argv)))


def _main(argv=None) -> None:
    args = _parser().parse_args(argv)
    args.given = _given(argv)
    if args.out is None:
        args.out = os.path.join(args.work, "quick") if args.quick else os.path.join(HERE, "results")
    if args.worker:
        res = worker(json.loads(args.worker))
        with open(args.worker_out, "w", encoding="utf-8") as f:
            json.dump(res, f)
        return
    if args.report_only:
        with open(os.path.join(args.out, "scale.json"), encoding="utf-8") as f:
            results = json.load(f)
        merge_records(results, args.merge)
        if args.before:
            results["before"] = before_record(args.before)
        if "code_end" in results and "code_changed_files" not in results:
            results["code_changed_files"] = changed_files(results["code_start"], results["code_end"])
        print(report(results, args.out))
        return

    start = time.perf_counter()
    spec_base = _spec_base(args)
    sizes = sorted({parse_size(s) for s in args.sizes.split(",") if s.strip()})
    growth_n = parse_size(args.growth_size)
    os.makedirs(args.out, exist_ok=True)
    results = {
        "args": {**spec_base, "argv": " ".join(sys.argv[1:] if argv is None else argv), "sizes": sizes,
                 "growth_dataset": synth_name(growth_n), "work": args.work, "small_dataset": spec_base["small"]},
        "host": {"cpus": os.cpu_count(), "load_start": load_average(),
                 "device": spec_base["device"], "device_name": _device_name(spec_base["device"]),
                 "when": time.strftime("%Y-%m-%d %H:%M")},
        "datasets": {}, "generated": {}, "code_start": code_state(),
    }
    reuse = {}
    for path in args.reuse:
        with open(path, encoding="utf-8") as f:
            res = json.load(f)
        reuse[res["dataset"]] = {**res, "reused_from": path}
    parts = set(spec_base["parts"])
    jobs = [spec_base["small"]] if not args.no_ml100k and parts & {"latency", "successive"} else []
    for n in sorted(set(sizes) | ({growth_n} if "growth" in parts else set())):
        info = ensure_synthetic(n, args.seed, args.regenerate)
        results["generated"][info["name"]] = info
        print(f"[scale] dataset {info['name']}: {info['path']}"
              + (f" (generated in {info['generated_s']:.1f}s)" if info["generated_s"] else ""), flush=True)
        if info["name"] == spec_base["growth_dataset"] or "latency" in parts:
            jobs.append(info["name"])
    for ds in jobs:
        spec = {**spec_base, "dataset": ds}
        if ds != spec_base["small"]:
            spec["parts"] = [x for x in spec["parts"] if x != "successive"]
        res = results["datasets"][ds] = _worker_result(spec, args, results["code_start"], reuse)
        for model, out in res["models"].items():
            s = out.get("single_summary")
            if s:
                print(f"[scale]   {model}: request median {s['time_s']['median']:.3f}s (max {s['time_s']['max']:.3f}s), "
                      f"epoch {out['epoch_s'] or 0:.3f}s, peak {gib(s['peak_bytes']['max']):.2f} GiB", flush=True)
            if out.get("successive"):
                print(f"[scale]   {model}: after {args.steps} requests NDCG@10 {100 * out['successive']['ndcg_gap']:+.2f}% "
                      "vs retrain", flush=True)
        print(f"[scale] worker {ds} done in {res['worker_wall_s']:.0f}s", flush=True)
    import torch

    results["host"]["torch_threads"] = args.threads or torch.get_num_threads()
    results["host"]["load_end"] = load_average()
    results["wall_s"] = time.perf_counter() - start
    results["code_end"] = code_state()
    results["code_changed_files"] = changed_files(results["code_start"], results["code_end"])
    md = report(results, args.out, save=True)
    for c in results["checks"]:
        print(f"[scale] {'OK  ' if c['ok'] else 'MISS'} {c['target']}: {c['value']:.3f} {c['unit']} (limit {c['limit']:g})")
    print(md)


if __name__ == "__main__":
    main()
