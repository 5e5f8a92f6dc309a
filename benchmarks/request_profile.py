"""One request's cost, before and after a code change, in the same sitting (issue 24, item 2).

    python benchmarks/request_profile.py --size 1M --code before=/path/to/old/checkout --code after=.
    python benchmarks/request_profile.py --size 1M --code now=. --models LightGCN --users 5

For every code tree given (``name=path``: a checkout whose ``recbole_unrank`` is imported),
a fresh worker process loads the synthetic dataset (``dataset/synth-<size>``, written by
``benchmarks/scale.py``; RecBole's own dataset cache under ``--work``, so it is parsed once),
builds each model as RecBole builds it (untrained: ``--synth-epochs 0``, as the 5M and 20M
points of ``scale.py``; latency does not depend on quality), prepares a graph model's graph
once, then answers ``--users`` single-user requests (10 train interactions each, the same
users in every tree: same seed) with ``l2unrank``'s project defaults, and one more under
cProfile. Trees alternate round by round (``--rounds``), so a load change on the shared
machine hits both sides alike. Writes ``<out>/request_profile.json`` and ``.md``: per model
and tree the median request time, its stages, peak memory, the profile's top functions, and
the ratio of each tree's median to the first tree's.

The harness (request picking, timing, memory meter) is ``scale.py``'s, from this checkout.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def child(spec: dict) -> dict:
    """In a fresh interpreter whose ``recbole_unrank`` is the tree ``spec['tree']``'s."""
    tree = os.path.abspath(spec["tree"])
    sys.path.insert(0, tree)
    import recbole_unrank

    assert os.path.dirname(os.path.dirname(os.path.abspath(recbole_unrank.__file__))) == tree, recbole_unrank.__file__
    sys.path.insert(1, HERE)
    import scale  # the harness; recbole_unrank stays the tree's (already imported)
    import torch

    from recbole_unrank import pipeline
    from recbole_unrank.methods import METHODS

    scale.silence()
    torch.set_num_threads(spec["threads"])
    os.makedirs(spec["work"], exist_ok=True)
    os.chdir(spec["work"])
    base = {"work": spec["work"], "seed": spec["seed"], "synth_epochs": 0, "synth_batch": 131072,
            "small": "ml-100k", "epochs_100k": 0, "device": spec["device"], "retrain_originals": False}
    t0 = time.perf_counter()
    data = pipeline.load_data(scale._config(spec["models"][0], spec["dataset"], base))
    out = {"tree": tree, "load_s": time.perf_counter() - t0, "models": {},
           "interactions": int(len(data.dataset.inter_feat)),
           "index_prep_s": scale._prepare_index(data, scale._config(spec["models"][0], spec["dataset"], base))}
    for name in spec["models"]:
        rec: dict = {}
        config, model = scale._original(data, base, name, rec)
        cls = METHODS["l2unrank"]
        method = cls(**pipeline.method_settings(config, cls))
        req = scale.Requests(method, model, config, data, spec["seed"], 2 * scale.REQUEST_INTERACTIONS)
        if hasattr(model, "norm_adj_matrix"):
            from recbole_unrank.adapters import get_adapter

            t0 = time.perf_counter()
            get_adapter(model).local()
            rec["graph_prep_s"] = time.perf_counter() - t0
        req.measure(1, spec["seed"] + 10_000)  # warm-up (first-call allocations, lazy imports): not counted
        rows = [req.measure(1, spec["seed"] + k) for k in range(spec["users"])]
        prof = req.measure(1, spec["seed"] + 999, profile=True)
        rec.update(
            time_s=scale.quantiles([r["time_s"] for r in rows]),
            stages={s: scale.quantiles([r["stages"].get(s, 0.0) for r in rows]) for s in rows[0]["stages"]},
            peak_bytes=scale.quantiles([r["peak_bytes"] for r in rows]),
            peak_delta_bytes=scale.quantiles([r["peak_delta_bytes"] for r in rows]),
            step_median=[r["step_median"] for r in rows], scope_size=[r["scope_size"] for r in rows],
            profile={"time_s": prof["time_s"], "top": prof["profile"][:15]},
        )
        out["models"][name] = rec
        del model, req
    return out


def run_child(spec: dict, timeout: float) -> dict:
    fd, path = tempfile.mkstemp(suffix=".json", prefix="reqprof-")
    os.close(fd)
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(1 << 20), PYTHONWARNINGS="ignore")
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if spec["device"] == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    env.pop("PYTHONPATH", None)  # the tree is chosen by the child itself
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec), "--child-out", path],
                          env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        os.remove(path)
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        raise RuntimeError(f"worker for {spec['tree']} failed (exit {proc.returncode}):\n{tail}")
    with open(path, encoding="utf-8") as f:
        res = json.load(f)
    os.remove(path)
    return res


def _commit(tree: str) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tree, capture_output=True, text=True, timeout=30)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "recbole_unrank"], cwd=tree, capture_output=True,
                               text=True, timeout=30).stdout.strip()
        return out.stdout.strip() + (" (uncommitted changes)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "?"


def report(res: dict) -> str:
    from recbole_unrank.tables import fmt, md_table

    names = list(res["trees"])
    first = names[0]
    lines = [f"# One request's cost: {' vs '.join(names)}", "",
             f"Produced by `python benchmarks/request_profile.py {res['argv']}` on {res['when']} "
             f"({res['dataset']}, {res['interactions']:,} interactions; torch threads {res['threads']}, device "
             f"{res['device']}; load average at start {res['load_start']}, at end {res['load_end']}). "
             f"{res['rounds']} round(s), trees alternating; per round and model {res['users']} single-user requests "
             "(10 train interactions each, the same users for every tree) after one warm-up request.", ""]
    lines += [f"- `{n}`: {res['trees'][n]['path']} at {res['trees'][n]['commit']}" for n in names] + [""]
    rows = []
    for model in res["models"]:
        for n in names:
            runs = [r["models"][model] for r in res["runs"][n]]
            med = sorted(x["time_s"]["median"] for x in runs)[len(runs) // 2]
            base = sorted(r["models"][model]["time_s"]["median"] for r in res["runs"][first])[len(runs) // 2]
            st = runs[0]["stages"]
            rows.append([model, n, fmt(med), fmt(med / base if n != first else 1.0) + "x",
                         " / ".join(f"{k} {fmt(v['median'])}" for k, v in st.items()),
                         fmt(runs[0]["peak_bytes"]["max"] / 2**30), fmt(runs[0].get("graph_prep_s"))])
    lines += ["| model | code | request s (median of a round's requests; upper median over rounds) | ratio to " + first +
              " | stages s (median, round 1) | "
              "peak RSS GiB | graph prep s |", "|---|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    lines += ["", "## Profiles (one request under cProfile, top functions by own time, round 1)", ""]
    for model in res["models"]:
        for n in names:
            p = res["runs"][n][0]["models"][model]["profile"]
            lines += [f"**{model}, `{n}`** (request {fmt(p['time_s'])} s under the profiler)", ""]
            lines += md_table(["function", "calls", "own s", "cumulative s"],
                              [[f"`{t['function']}`", t["calls"], fmt(t["tottime_s"]), fmt(t["cumtime_s"])]
                               for t in p["top"][:10]]) + [""]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="1M")
    p.add_argument("--models", default="WMF,NeuMF,LightGCN")
    p.add_argument("--code", action="append", default=[], help="name=path of a checkout (repeatable; first = baseline)")
    p.add_argument("--users", type=int, default=5)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--seed", type=int, default=2020)
    p.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "recbole_unrank_reqprof"))
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--child-out", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        res = child(json.loads(a.child))
        with open(a.child_out, "w", encoding="utf-8") as f:
            json.dump(res, f)
        return
    sys.path.insert(0, ROOT)
    sys.path.insert(1, HERE)
    from scale import parse_size, synth_name

    from recbole_unrank.errors import UnrankError

    trees = {}
    for item in a.code or ["now=."]:
        name, _, path = item.partition("=")
        if not path or not os.path.isdir(os.path.join(path, "recbole_unrank")):
            sys.exit(f"request_profile: --code {item}: give name=path of a checkout holding recbole_unrank/")
        trees[name] = {"path": os.path.abspath(path), "commit": _commit(path)}
    dataset = synth_name(parse_size(a.size))
    if not os.path.isfile(os.path.join(ROOT, "dataset", dataset, f"{dataset}.inter")):
        raise SystemExit(f"request_profile: dataset/{dataset} is missing: write it first "
                         f"(python benchmarks/scale.py --sizes {a.size} --parts latency --no-ml100k)")
    if a.device not in ("cpu", "cuda"):
        raise SystemExit(f"request_profile: --device={a.device}: give cpu or cuda")
    models = [m.strip() for m in a.models.split(",") if m.strip()]
    res = {"argv": " ".join(sys.argv[1:] if argv is None else argv), "when": time.strftime("%Y-%m-%d %H:%M"),
           "dataset": dataset, "threads": a.threads, "device": a.device, "users": a.users, "rounds": a.rounds,
           "models": models, "trees": trees, "runs": {n: [] for n in trees},
           "load_start": [round(x, 2) for x in os.getloadavg()]}
    try:
        for r in range(a.rounds):
            for name, tree in trees.items():
                print(f"[request_profile] round {r + 1}: {name} ({tree['path']}) ...", flush=True)
                spec = {"tree": tree["path"], "dataset": dataset, "models": models, "users": a.users,
                        "threads": a.threads, "device": a.device, "seed": a.seed, "work": a.work}
                out = run_child(spec, a.timeout)
                res["runs"][name].append(out)
                res["interactions"] = out["interactions"]
                for m, rec in out["models"].items():
                    print(f"[request_profile]   {m}: median {rec['time_s']['median']:.3f}s", flush=True)
    except UnrankError as exc:
        sys.exit(f"request_profile: {exc}")
    res["load_end"] = [round(x, 2) for x in os.getloadavg()]
    os.makedirs(a.out, exist_ok=True)
    write(os.path.join(a.out, "request_profile.json"), json.dumps(res, indent=1, default=float))
    md = report(res)
    write(os.path.join(a.out, "request_profile.md"), md)
    print(md)


def write(path: str, text: str) -> None:
    """``text`` at ``path``, whole or not at all."""
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


if __name__ == "__main__":
    main()
