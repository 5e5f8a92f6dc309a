"""One prepared device check (issue 24): every CUDA check and GPU figure in one run of < 8 min.

    python benchmarks/gpu_check.py                    # on a machine with CUDA: the whole check
    python benchmarks/gpu_check.py --reduced --out /tmp/gpu   # every part on the CPU, tiny, < 1 min

Three parts, each under its own time limit (a part that runs out is recorded as such, with what
it had finished), writing one report, ``gpu.md`` + ``gpu.json`` (default ``benchmarks/results``):

1. ``tests``: the fast suite (``pytest -m "not slow"``, on the CPU cores: the tests force
   ``gpu_id ''``; in parallel with pytest-xdist where it is installed) started in the background
   beside the GPU parts, and the CUDA-marked tests (``pytest -m cuda``) in the foreground first;
   pass / fail / skip counts and the names of the failures.
2. ``compare``: the main comparison on ml-100k for WMF, NeuMF and LightGCN: ``l2unrank`` and
   ``l2unrank_twosided`` against ``retrain`` (``recbole_unrank.run_unrank``, one fresh process
   per model, ``--compare-epochs`` for the original and the retraining, the paper's interaction
   request). A method the registry lacks is skipped and named in the report.
3. ``latency``: single-user request latency of every model on synthetic sets of 1M and 5M
   interactions (``benchmarks/scale.py --parts latency --device``, one run per size); 20M only
   where the time left exceeds an estimate from the 5M run (else recorded as skipped, why).

``--reduced``: the same parts on the CPU, small: a few fast test files and ``-m cuda`` (skipped
without a GPU), the comparison on ``tiny`` with one epoch, latency through ``scale.py --quick``
(the tiny dataset, two requests per model). ``tests/test_gpu_check.py`` runs it end to end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MODELS = ["WMF", "NeuMF", "LightGCN"]
METHODS = ["l2unrank", "l2unrank_twosided"]
# Per-part limits (seconds) of the full check, within --budget (470 s: under 8 minutes with the
# interpreter's start). The fast suite runs beside the others on the CPU cores; latency takes
# what the budget has left after the CUDA tests and the comparison (at least its entry here).
LIMITS = {"cuda_tests": 90, "fast_tests": 460, "compare": 150, "latency": 200}
REDUCED_LIMITS = {"cuda_tests": 60, "fast_tests": 60, "compare": 60, "latency": 60}
# --reduced: two quick fast tests, and the CUDA-marked tests of one file (skipped on a CPU)
REDUCED_TEST_FILES = ["tests/test_synthetic.py::test_sorted_unique_is_numpys_unique",
                      "tests/test_synthetic.py::test_check_fits_refuses_over_the_limit_with_estimate_and_limit"]
REDUCED_CUDA_FILES = ["tests/test_device.py"]
OUTCOMES = ("PASSED", "FAILED", "ERROR", "SKIPPED", "XFAIL", "XPASS")


# =========================================================================== helpers
def _env(device: str, threads: int | None = None) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONWARNINGS"] = "ignore"
    env["PYTHONUNBUFFERED"] = "1"
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def _run(cmd: list[str], limit: float, env: dict, cwd: str = ROOT) -> dict:
    """Run ``cmd`` under ``limit`` seconds; its exit code (None when stopped), output and time."""
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=limit, check=False)
        rc, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc = None
        out = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        out += (exc.stderr or b"").decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
    return {"rc": rc, "output": out, "wall_s": time.perf_counter() - t0, "timed_out": rc is None}


def pytest_counts(output: str) -> dict:
    """Counts of ``pytest -v`` outcomes (plain and xdist lines) and the failed tests' names;
    read from the per-test lines, so a run stopped at its limit still reports what finished."""
    counts = {k.lower(): 0 for k in OUTCOMES}
    failed = []
    for line in output.splitlines():
        m = re.search(r"\b(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b", line)
        if not m or "::" not in line or line.startswith(("FAILED ", "ERROR ")):  # -r summary lines
            continue
        counts[m.group(1).lower()] += 1
        if m.group(1) in ("FAILED", "ERROR"):
            failed.append(next(tok for tok in line.split() if "::" in tok))
    summary = re.findall(r"=+ (.*(?:passed|failed|skipped|error|deselected|no tests ran).*) =+", output)
    return {**counts, "failed_names": failed[:50], "summary_line": summary[-1] if summary else None}


def versions(device: str) -> dict:
    import numpy
    import pandas
    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
           "pandas": pandas.__version__,
           "cuda_runtime": torch.version.cuda, "platform": platform.platform(), "cpus": os.cpu_count()}
    try:
        import recbole

        out["recbole"] = recbole.__version__
    except Exception as exc:  # noqa: BLE001 - recorded, the parts will fail and say so
        out["recbole"] = f"not importable: {exc}"
    if device == "cuda":
        p = torch.cuda.get_device_properties(0)
        out.update(device_name=p.name, device_memory_gib=round(p.total_memory / 2**30, 1),
                   driver=_nvidia_smi("driver_version"))
    else:
        out["device_name"] = f"CPU ({platform.machine()})"
    return out


def _nvidia_smi(field: str) -> str | None:
    try:
        return subprocess.run(["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader"], capture_output=True,
                              text=True, timeout=20, check=False).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=20, check=False).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


# =========================================================================== part 1: tests
def start_fast_tests(args, log_path: str) -> tuple[subprocess.Popen, float]:
    """The fast suite in the background (CPU), its output to ``log_path``."""
    cmd = [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-m", "not slow and not cuda"]
    cmd += REDUCED_TEST_FILES if args.reduced else ["tests"]
    if not args.reduced and args.xdist_workers > 0:
        try:
            import xdist  # noqa: F401

            cmd += ["-n", str(args.xdist_workers)]
        except ImportError:
            pass
    log = open(log_path, "w", encoding="utf-8")  # noqa: SIM115 - closed in finish_fast_tests
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env("cpu", threads=1), stdout=log, stderr=subprocess.STDOUT)
    proc._gpu_check_log = log  # type: ignore[attr-defined]
    ended: list[float] = []  # when it ended (collected later, after the GPU parts)
    threading.Thread(target=lambda: (proc.wait(), ended.append(time.perf_counter())), daemon=True).start()
    proc._gpu_check_ended = ended  # type: ignore[attr-defined]
    proc._gpu_check_cmd = cmd  # type: ignore[attr-defined]
    return proc, time.perf_counter()


def finish_fast_tests(proc: subprocess.Popen, started: float, limit: float, log_path: str) -> dict:
    left = max(1.0, limit - (time.perf_counter() - started))
    try:
        rc = proc.wait(timeout=left)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        rc = None
    proc._gpu_check_log.close()  # type: ignore[attr-defined]
    with open(log_path, encoding="utf-8", errors="replace") as f:
        output = f.read()
    ended = proc._gpu_check_ended  # type: ignore[attr-defined]
    time.sleep(0.05)
    res = {"command": " ".join(proc._gpu_check_cmd[1:]), "rc": rc, "timed_out": rc is None,  # type: ignore[attr-defined]
           "wall_s": (ended[0] if ended else time.perf_counter()) - started, "limit_s": limit, **pytest_counts(output)}
    res["status"] = _test_status(res)
    if rc not in (0, None):
        res["tail"] = "\n".join(output.strip().splitlines()[-15:])
    return res


def _test_status(res: dict) -> str:
    if res["timed_out"]:
        return "timed out"
    if res["failed"] or res["error"]:
        return "failures"
    return "ok" if res["rc"] in (0, 5) else f"exit {res['rc']}"  # 5: nothing collected


def cuda_tests(args, device: str) -> dict:
    cmd = [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-m", "cuda",
           *(REDUCED_CUDA_FILES if args.reduced else ["tests"])]
    r = _run(cmd, args.limits["cuda_tests"], _env(device))
    res = {"command": " ".join(cmd[1:]), "rc": r["rc"], "timed_out": r["timed_out"], "wall_s": r["wall_s"],
           "limit_s": args.limits["cuda_tests"], **pytest_counts(r["output"])}
    res["status"] = _test_status(res)
    if r["rc"] not in (0, 5, None):
        res["tail"] = "\n".join(r["output"].strip().splitlines()[-15:])
    return res


# =========================================================================== part 2: compare
def compare_worker(models: list[str], dataset: str, methods: list[str], epochs: int, device: str,
                   work: str) -> dict:
    """``--compare-worker``: each model's comparison in this process, one after another."""
    return {m: compare_one(m, dataset, methods, epochs, device, work) for m in models}


def compare_one(model: str, dataset: str, methods: list[str], epochs: int, device: str, work: str) -> dict:
    """One model: the original, each method and retrain on the same request (the paper's
    interaction request); the rows as ``run_unrank`` returns them, trimmed."""
    os.makedirs(work, exist_ok=True)
    os.chdir(work)  # RecBole writes ./log and ./log_tensorboard
    import torch

    import recbole_unrank

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    presets = [dataset, model] if dataset == "ml-100k" else None
    methods, not_run = methods_for(model, methods)
    config = {"unrank_methods": [*methods, "retrain"], "epochs": epochs, "gpu_id": "0" if device == "cuda" else "",
              "seed": 2020, "show_progress": False, "data_path": os.path.join(ROOT, "dataset"),
              "checkpoint_dir": os.path.join(work, "saved"), "unrank_output_dir": os.path.join(work, "runs")}
    t0 = time.perf_counter()
    record = recbole_unrank.run_unrank(model=model, dataset=dataset, preset=presets, config_dict=config)
    keep = ("method", "status", "error", "time_s", "epochs")
    rows = []
    for row in record["rows"]:
        r = {k: row[k] for k in keep if k in row}
        r["test"] = {k: row.get("test", {}).get(k) for k in ("ndcg@10", "recall@10")}
        r["forget"] = {k: row.get("forget", {}).get(k) for k in ("forget_hit@10", "mean_rank")}
        rows.append(r)
    return {"rows": rows, "not_run": not_run, "wall_s": time.perf_counter() - t0, "device": record.get("device", device),
            "cuda_peak_bytes": int(torch.cuda.max_memory_allocated()) if device == "cuda" else None}


def methods_for(model: str, methods: list[str]) -> tuple[list[str], dict]:
    """The methods that act on ``model`` and, for the others, why not (a method that refuses a
    model refuses the whole run, so it is left out of that model's run and reported)."""
    from recbole_unrank.methods.twosided import SUPPORTED

    not_run = {m: f"{m} supports {', '.join(SUPPORTED)} only" for m in methods
               if m == "l2unrank_twosided" and model not in SUPPORTED}
    return [m for m in methods if m not in not_run], not_run


def compare(args, device: str, work: str) -> dict:
    from recbole_unrank.methods import METHODS as REGISTRY

    methods = [m for m in METHODS if m in REGISTRY]
    res = {"dataset": args.compare_dataset, "epochs": args.compare_epochs, "methods": methods,
           "skipped_methods": [m for m in METHODS if m not in REGISTRY], "models": {}, "limit_s": args.limits["compare"]}
    t_end = time.perf_counter() + args.limits["compare"]
    # a fresh process per model on the device (clean GPU memory figures); one for all, reduced
    groups = [args.models] if args.reduced else [[m] for m in args.models]
    for group in groups:
        left = t_end - time.perf_counter()
        if left < 5:
            res["models"].update({m: {"status": "skipped: the part's time limit was spent"} for m in group})
            continue
        out = os.path.join(work, f"compare-{'-'.join(group)}.json")
        cmd = [sys.executable, os.path.abspath(__file__), "--compare-worker", ",".join(group), "--compare-dataset",
               args.compare_dataset, "--compare-epochs", str(args.compare_epochs), "--device", device,
               "--work", os.path.join(work, "compare"), "--worker-out", out, "--methods", ",".join(methods)]
        r = _run(cmd, left, _env(device, threads=args.threads))
        if r["rc"] == 0 and os.path.isfile(out):
            with open(out, encoding="utf-8") as f:
                got = json.load(f)
            for model, one in got.items():
                res["models"][model] = {"status": "ok", **one, **_speedups(one["rows"])}
        else:
            tail = "\n".join(r["output"].strip().splitlines()[-12:])
            res["models"].update({m: {"status": "timed out" if r["timed_out"] else f"exit {r['rc']}",
                                      "wall_s": r["wall_s"], "tail": tail} for m in group})
    return res


def _speedups(rows: list[dict]) -> dict:
    by = {r["method"]: r for r in rows}
    ret = by.get("retrain")
    if not ret or ret.get("status") == "failed":
        return {}
    return {"speedup": {m: ret["time_s"] / max(r["time_s"], 1e-9) for m, r in by.items()
                        if m not in ("original", "retrain") and r.get("status") != "failed" and r.get("time_s")}}


# =========================================================================== part 3: latency
def latency(args, device: str, work: str) -> dict:
    """``scale.py --parts latency`` once per size (``--reduced``: once, ``--quick`` on tiny)."""
    res = {"limit_s": args.limits["latency"], "sizes": {}, "users": args.users}
    t_end = time.perf_counter() + args.limits["latency"]
    runs = [("tiny", ["--quick", "--parts", "latency"])] if args.reduced else \
        [(s, ["--sizes", s, "--no-ml100k", "--parts", "latency"]) for s in args.sizes]
    last_wall = {}
    for tag, extra in runs:
        left = t_end - time.perf_counter()
        if tag.upper() == "20M" and "5M" in last_wall:
            # RecBole's loading and the generator grow about linearly: 4x the 5M worker's time
            need = 4.2 * last_wall["5M"]
            if need > left:
                res["sizes"][tag] = {"status": f"skipped: estimated {need:.0f} s (4.2 x the 5M run) > {left:.0f} s left"}
                continue
        if left < 10:
            res["sizes"][tag] = {"status": "skipped: the part's time limit was spent"}
            continue
        out = os.path.join(work, f"scale-{tag}")
        cmd = [sys.executable, os.path.join(HERE, "scale.py"), *extra, "--models", ",".join(args.models),
               "--users", str(args.users), "--device", device, "--work", os.path.join(work, "scale-work"),
               "--out", out, "--timeout", str(max(5, int(left) - 5)), "--synth-epochs", "1"]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        r = _run(cmd, left, _env(device))
        last_wall[tag.upper()] = r["wall_s"]
        path = os.path.join(out, "scale.json")
        if r["rc"] == 0 and os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                res["sizes"][tag] = {"status": "ok", "wall_s": r["wall_s"], **_latency_rows(json.load(f))}
        else:
            res["sizes"][tag] = {"status": "timed out" if r["timed_out"] else f"exit {r['rc']}", "wall_s": r["wall_s"],
                                 "tail": "\n".join(r["output"].strip().splitlines()[-12:])}
    return res


def _latency_rows(record: dict) -> dict:
    out = {}
    for name, ds in record["datasets"].items():
        models = {}
        for model, m in ds["models"].items():
            s = m.get("single_summary") or {}
            t = s.get("time_s", {})
            models[model] = {"median_s": t.get("median"), "p90_s": t.get("p90"), "max_s": t.get("max"), "n": t.get("n"),
                             "cuda_peak_bytes": (s.get("cuda_peak_bytes") or {}).get("max"),
                             "rss_peak_bytes": (s.get("peak_bytes") or {}).get("max"),
                             "graph_prep_s": m.get("graph_prep_s"), "epoch_s": m.get("epoch_s")}
        out = {"dataset": name, "interactions": ds.get("interactions"), "load_s": ds.get("load_s"),
               "device": ds.get("device"), "models": models}
    return out


# =========================================================================== report
def _f(x, digits=3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def render(rec: dict) -> str:
    v = rec["versions"]
    md = [f"# Device check{' (reduced, CPU)' if rec['reduced'] else ''}\n",
          (f"Command: `{rec['command']}` ({rec['when']}, commit {rec['commit']}), wall time {rec['wall_s']:.0f} s "
           f"of a {rec['budget_s']:.0f} s budget.  "),
          (f"Device: **{v.get('device_name')}** ({v.get('device_memory_gib', '-')} GiB, driver {v.get('driver') or '-'}); "
           f"Python {v['python']}, torch {v['torch']} (CUDA {v.get('cuda_runtime')}), RecBole {v.get('recbole')}, "
           f"NumPy {v['numpy']}, pandas {v.get('pandas')}, {v['cpus']} CPUs; load average {rec.get('load_start')} at "
           f"the start, {rec.get('load_end')} at the end (the fast suite runs on the CPU cores beside the GPU parts).\n")]
    t = rec["parts"].get("tests")
    if t:
        md.append("## Tests\n")
        md.append("| suite | status | passed | failed | errors | skipped | wall (s) | limit (s) |")
        md.append("|---|---|---|---|---|---|---|---|")
        for key, label in (("cuda", "`-m cuda`"), ("fast", "fast suite (`-m 'not slow and not cuda'`, CPU)")):
            r = t.get(key)
            if r:
                md.append(f"| {label} | {r['status']} | {r['passed']} | {r['failed']} | {r['error']} | {r['skipped']} | "
                          f"{r['wall_s']:.0f} | {r['limit_s']:.0f} |")
        for key in ("cuda", "fast"):
            r = t.get(key) or {}
            if r.get("failed_names"):
                md.append(f"\nFailed ({key}): " + ", ".join(f"`{n}`" for n in r["failed_names"]))
        md.append("")
    c = rec["parts"].get("compare")
    if c:
        md.append(f"## Comparison on {c['dataset']} (epochs of the original and of retraining: {c['epochs']})\n")
        if c["skipped_methods"]:
            md.append(f"Not in the method registry, skipped: {', '.join(c['skipped_methods'])}.\n")
        md.append("| model | method | status | time (s) | speed-up vs retrain | NDCG@10 | forget_hit@10 |")
        md.append("|---|---|---|---|---|---|---|")
        for model, m in c["models"].items():
            if m["status"] != "ok":
                md.append(f"| {model} | - | {m['status']} | - | - | - | - |")
                continue
            for r in m["rows"]:
                sp = m.get("speedup", {}).get(r["method"])
                md.append(f"| {model} | {r['method']} | {r.get('status', 'ok')} | {_f(r.get('time_s'))} | "
                          f"{'-' if sp is None else f'{sp:.0f}x'} | {_f(r['test'].get('ndcg@10'), 4)} | "
                          f"{_f(r['forget'].get('forget_hit@10'), 4)} |")
            for method, why in m.get("not_run", {}).items():
                md.append(f"| {model} | {method} | not run: {why} | - | - | - | - |")
        md.append("")
    lat = rec["parts"].get("latency")
    if lat:
        md.append(f"## Single-user request latency ({lat['users']} requests per model)\n")
        md.append("| size | model | status | median (s) | p90 (s) | GPU peak (MiB) | graph prep (s) | load (s) |")
        md.append("|---|---|---|---|---|---|---|---|")
        for tag, s in lat["sizes"].items():
            if s["status"] != "ok":
                md.append(f"| {tag} | - | {s['status']} | - | - | - | - | - |")
                continue
            for model, m in s["models"].items():
                peak = m.get("cuda_peak_bytes")
                md.append(f"| {tag} ({s['interactions']:,}) | {model} | ok | {_f(m['median_s'], 4)} | {_f(m['p90_s'], 4)} | "
                          f"{'-' if peak is None else f'{peak / 2**20:.0f}'} | {_f(m.get('graph_prep_s'))} | "
                          f"{_f(s.get('load_s'), 1)} |")
        md.append("")
    tails = [(f"{key} tests", r) for key, r in (t or {}).items()]
    tails += [(f"comparison, {m}", r) for m, r in ((c or {}).get("models") or {}).items()]
    tails += [(f"latency, {tag}", r) for tag, r in ((lat or {}).get("sizes") or {}).items()]
    for label, r in tails:  # what a part that did not finish said last
        if isinstance(r, dict) and r.get("tail"):
            md.append(f"Output of {label} (last lines):\n\n```\n{r['tail']}\n```\n")
    return "\n".join(md)


def write(rec: dict, out: str) -> tuple[str, str]:
    os.makedirs(out, exist_ok=True)
    js, md = os.path.join(out, "gpu.json"), os.path.join(out, "gpu.md")
    for path, text in ((js, json.dumps(rec, indent=1, default=float)), (md, render(rec))):
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(path + ".tmp", path)
    return md, js


# =========================================================================== the command
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reduced", action="store_true", help="every part on the CPU, small (< 1 min)")
    p.add_argument("--parts", default="tests,compare,latency")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--sizes", default="1M,5M,20M", help="latency sizes (20M only if the time left allows)")
    p.add_argument("--users", type=int, default=None, help="single-user requests per model and size (default 10; reduced 2)")
    p.add_argument("--compare-dataset", default=None, help="default ml-100k (reduced: tiny)")
    p.add_argument("--compare-epochs", type=int, default=None, help="default 10 (reduced: 1)")
    p.add_argument("--threads", type=int, default=4, help="torch threads of the GPU parts' processes")
    p.add_argument("--xdist-workers", type=int, default=8, help="fast suite's pytest-xdist workers (0: none)")
    p.add_argument("--budget", type=float, default=470, help="seconds for the whole check")
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    p.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda where present; reduced: cpu)")
    p.add_argument("--compare-worker", help=argparse.SUPPRESS)
    p.add_argument("--methods", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.compare_worker:
        res = compare_worker(args.compare_worker.split(","), args.compare_dataset, args.methods.split(","),
                             args.compare_epochs, args.device, args.work)
        with open(args.worker_out, "w", encoding="utf-8") as f:
            json.dump(res, f, default=float)
        return 0
    sys.path.insert(0, ROOT)
    import torch

    t0 = time.perf_counter()
    device = args.device or ("cpu" if args.reduced or not torch.cuda.is_available() else "cuda")
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_check: --device cuda: torch sees no CUDA device here; use --reduced (CPU) or --device cpu")
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    args.users = args.users or (2 if args.reduced else 10)
    args.compare_dataset = args.compare_dataset or ("tiny" if args.reduced else "ml-100k")
    args.compare_epochs = args.compare_epochs or (1 if args.reduced else 10)
    args.limits = dict(REDUCED_LIMITS if args.reduced else LIMITS)
    parts = {x.strip() for x in args.parts.split(",")}
    work = args.work or tempfile.mkdtemp(prefix="gpu_check-")
    os.makedirs(work, exist_ok=True)
    rec = {"command": "python benchmarks/gpu_check.py " + " ".join(sys.argv[1:] if argv is None else argv),
           "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": git_commit(), "reduced": args.reduced,
           "device": device, "budget_s": args.budget, "limits_s": args.limits, "versions": versions(device), "parts": {},
           "load_start": [round(x, 2) for x in os.getloadavg()]}
    fast = None
    if "tests" in parts:  # the fast suite on the CPU cores, beside the GPU parts
        log = os.path.join(work, "fast-tests.log")
        fast = (*start_fast_tests(args, log), log)
        rec["parts"]["tests"] = {"cuda": cuda_tests(args, device)}
        print(f"[gpu_check] cuda tests: {rec['parts']['tests']['cuda']['status']}", flush=True)
    if "compare" in parts:
        rec["parts"]["compare"] = compare(args, device, work)
        print(f"[gpu_check] compare: {[m['status'] for m in rec['parts']['compare']['models'].values()]}", flush=True)
    if "latency" in parts:  # the rest of the budget (its floor: LIMITS), less a margin for the report
        args.limits["latency"] = max(args.limits["latency"], args.budget - (time.perf_counter() - t0) - 10)
        rec["parts"]["latency"] = latency(args, device, work)
        print(f"[gpu_check] latency: {[s['status'] for s in rec['parts']['latency']['sizes'].values()]}", flush=True)
    if fast is not None:  # its limit counts from its start, and ends with the budget at the latest
        limit = min(args.limits["fast_tests"], args.budget - (fast[1] - t0))
        rec["parts"]["tests"]["fast"] = finish_fast_tests(fast[0], fast[1], limit, fast[2])
        print(f"[gpu_check] fast tests: {rec['parts']['tests']['fast']['status']}", flush=True)
    rec["wall_s"] = time.perf_counter() - t0
    rec["load_end"] = [round(x, 2) for x in os.getloadavg()]
    md, js = write(rec, args.out)
    print(f"[gpu_check] {md} and {js} ({rec['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
