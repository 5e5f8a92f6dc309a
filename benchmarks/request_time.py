"""Time one unlearning request of one method on a trained original, repeated (no evaluation
between repeats): the request's own cost, for before/after comparisons of the code.

    python benchmarks/request_time.py --checkpoint ORIGINAL.pth [--model NeuMF] [--method l2unrank]
        [--task interaction] [--seed 101] [--repeats 3] [--profile 25]

The request is drawn with the suite's default task settings (benchmarks/twosided_check.py's
TASKS) on ml-100k with the project's config. Prints one JSON line: the time of every repeat,
their median, the method's stages, and (``--profile N``) the N functions with the most
cumulative time in one further profiled repeat. Compare two versions of the code by running
this script from each tree in the same sitting, alternately.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from recbole_unrank import pipeline  # noqa: E402 (after the sys.path line)
from recbole_unrank.methods import METHODS  # noqa: E402 (after the sys.path line)

TASKS = {
    "interaction": {"unrank_request": "interaction", "unrank_user_ratio": 0.1, "unrank_inter_ratio": 0.2},
    "item": {"unrank_request": "item", "unrank_item_ratio": 0.02},
    "user": {"unrank_request": "user", "unrank_user_ratio": 0.05},
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--model", default="NeuMF")
    p.add_argument("--method", default="l2unrank")
    p.add_argument("--task", default="interaction", choices=sorted(TASKS))
    p.add_argument("--seed", type=int, default=101, help="request seed (timing only: a design seed)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--profile", type=int, default=0)
    a = p.parse_args()
    files = [os.path.join(ROOT, "config", "ml-100k.yaml"), os.path.join(ROOT, "config", f"{a.model}.yaml")]
    settings = {**TASKS[a.task], "unrank_request_users": "random", "unrank_request_seed": a.seed,
                "checkpoint_dir": os.path.join(HERE, "out", "request_time"), "show_progress": False}
    config = pipeline.build_config(a.model, "ml-100k", files, settings, argv=[])
    run, ckpt = pipeline.prepare_run(config, a.checkpoint, methods=[a.method])
    cls = METHODS[a.method]
    method = cls(**pipeline.method_settings(config, cls))
    times, stages, info = [], None, {}
    for _ in range(a.repeats):
        task = run._task()
        t0 = time.perf_counter()
        result = method.unlearn(task)
        times.append(time.perf_counter() - t0)
        stages, info = result.stages, result.info
    out = {"method": a.method, "model": a.model, "task": a.task, "seed": a.seed, "request_rows": len(run.request),
           "times_s": times, "median_s": statistics.median(times), "stages": stages,
           "calibration": {k: (info.get("calibration") or {}).get(k)
                           for k in ("request_users", "measures", "user_scorings", "step_median", "step_cap")}}
    if a.profile:
        prof = cProfile.Profile()
        task = run._task()
        prof.enable()
        method.unlearn(task)
        prof.disable()
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(a.profile)
        out["profile"] = buf.getvalue()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
