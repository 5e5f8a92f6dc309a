"""Issue 22's targets, judged on twosided_check.py's records (one per model, task and seed).

A record is ``{"model", "task", "seed", "original": {...}, "methods": {name: {...}}}`` with, per
row, ``forget_hit@10``, ``ndcg@10`` (test), ``req_ndcg@10`` (the request users' test NDCG@10),
``mia_auc``, ``over_unlearned`` and ``time_s`` (a row that failed holds only ``error``).

Every target is read against retrain's row of the same record (same request, same sitting):

- forget_hit@10 <= retrain's + 0.01;
- |MIA AUC - retrain's| <= 0.03, judged only where the audit has power: the original's MIA AUC
  minus retrain's (the *audit power*) at least 0.02 in size; else "n/a (no power)", not met;
- over_unlearned (share of forgotten pairs ranked more than twice as low as retrain ranks them)
  <= 0.10;
- test NDCG@10 >= 0.98 x retrain's;
- the request users' test NDCG@10 >= 0.95 x retrain's; on a user task (retraining leaves those
  users cold) <= retrain's + 0.01 instead;
- speed-up (retrain's time / the method's) >= 200x.

Over seeds, each target is judged on the mean of its per-seed value (MIA: the mean of the
per-seed |gaps| over the seeds whose audit has power).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from recbole_unrank.tables import md_table  # noqa: E402 (after the sys.path line)

#: Issue 22's thresholds, in one place.
TARGETS = {
    "forget_hit_slack": 0.01,  # forget_hit@10 <= retrain's + this
    "mia_tolerance": 0.03,  # |MIA AUC - retrain's| <= this
    "audit_power_min": 0.02,  # |original's MIA AUC - retrain's| below this: the audit cannot tell them apart
    "over_unlearned_max": 0.10,  # share of forgotten pairs ranked > 2x lower than under retraining
    "test_ndcg_ratio": 0.98,  # test NDCG@10 >= this x retrain's
    "request_ndcg_ratio": 0.95,  # request users' test NDCG@10 >= this x retrain's (not user tasks)
    "user_task_request_slack": 0.01,  # user tasks: request users' NDCG@10 <= retrain's + this
    "speedup_min": 200.0,  # retrain's time / the method's time >= this
}
#: The columns of the targets table, in the issue's order.
TARGET_NAMES = ("forget_hit@10", "MIA AUC", "over-unlearned", "test NDCG@10", "request users' NDCG@10", "speed-up")
NO_POWER = "audit cannot tell the original from retrain"


def is_user_task(task: str) -> bool:
    """``user``, ``user-core``, ``user-edge``: whole users forgotten."""
    return task == "user" or task.startswith("user-")


def audit_power(res: dict) -> float | None:
    """The original's MIA AUC minus retrain's (None when either is missing)."""
    o = res["original"].get("mia_auc")
    r = res["methods"].get("retrain", {}).get("mia_auc")
    return None if o is None or r is None else o - r


def has_power(power: float | None, targets: dict = TARGETS) -> bool:
    return power is not None and abs(power) >= targets["audit_power_min"]


def values(res: dict, method: str) -> dict:
    """The per-target values of ``method`` in one record (a value is None when not measured);
    ``error`` when the method failed."""
    ret = res["methods"]["retrain"]
    m = res["original"] if method == "original" else res["methods"][method]
    if "error" in m:
        return {"error": m["error"]}
    power = audit_power(res)
    out = {"power": power, "forget_hit@10": m["forget_hit@10"] - ret["forget_hit@10"],
           "MIA AUC": None, "over-unlearned": m.get("over_unlearned"),
           "test NDCG@10": m["ndcg@10"] / ret["ndcg@10"] if ret["ndcg@10"] else None,
           "request users' NDCG@10": None, "speed-up": None}
    if m.get("mia_auc") is not None and ret.get("mia_auc") is not None and has_power(power):
        out["MIA AUC"] = abs(m["mia_auc"] - ret["mia_auc"])
    req, rreq = m.get("req_ndcg@10"), ret.get("req_ndcg@10")
    if req is not None and rreq is not None:
        if is_user_task(res["task"]):
            out["request users' NDCG@10"] = req - rreq
        elif rreq > 0:
            out["request users' NDCG@10"] = req / rreq
    if method != "original" and m.get("time_s"):
        out["speed-up"] = ret["time_s"] / m["time_s"]
    return out


def mean_values(per_seed: list[dict]) -> dict:
    """The mean of each target's value over seeds (None-valued seeds left out); ``n_power``:
    how many seeds' audit had power; ``failed``: how many seeds the method failed on."""
    ok = [v for v in per_seed if "error" not in v]
    out = {"seeds": len(per_seed), "failed": len(per_seed) - len(ok),
           "n_power": sum(1 for v in ok if has_power(v["power"]))}
    if not ok:
        out["error"] = per_seed[0]["error"]
        return out
    for k in ("power",) + TARGET_NAMES:
        xs = [v[k] for v in ok if v.get(k) is not None]
        out[k] = sum(xs) / len(xs) if xs else None
    return out


def verdict(name: str, value: float | None, task: str, power_ok: bool = True,
            targets: dict = TARGETS) -> tuple[bool | None, str]:
    """(met?, text) for one target: ``met``, ``missed by X``, or why it is not judged (None)."""
    if name == "MIA AUC" and not power_ok:
        return None, "n/a (no power)"
    if value is None:
        return None, "not measured"
    if name == "forget_hit@10":
        miss = value - targets["forget_hit_slack"]
        shown = f"{value:+.3f}"
    elif name == "MIA AUC":
        miss = value - targets["mia_tolerance"]
        shown = f"{value:.3f}"
    elif name == "over-unlearned":
        miss = value - targets["over_unlearned_max"]
        shown = f"{value:.3f}"
    elif name == "test NDCG@10":
        miss = targets["test_ndcg_ratio"] - value
        shown = f"{value:.3f}x"
    elif name == "request users' NDCG@10":
        if is_user_task(task):
            miss = value - targets["user_task_request_slack"]
            shown = f"{value:+.3f}"
        else:
            miss = targets["request_ndcg_ratio"] - value
            shown = f"{value:.3f}x"
    elif name == "speed-up":
        miss = targets["speedup_min"] - value
        shown = f"{value:.0f}x" if abs(miss) >= 1 else f"{value:.1f}x"  # 199.6x is not "200x missed"
    else:
        raise KeyError(name)
    if miss <= 0:
        return True, f"{shown} met"
    # a miss below 0.001 keeps one significant figure (0.0004, not a "missed by 0.000")
    if name == "speed-up":
        by = f"{miss:.0f}x" if miss >= 1 else f"{miss:.1f}x"
    else:
        by = f"{miss:.3f}" if miss >= 0.001 else f"{miss:.1g}"
    return False, f"{shown} missed by {by}"


def judge(vals: dict, task: str) -> dict:
    """Every target's (met?, text) for one value dict (one seed's or the mean over seeds)."""
    if "error" in vals:
        return {n: (False, "failed") for n in TARGET_NAMES}
    power_ok = has_power(vals.get("power")) if "n_power" not in vals else vals["n_power"] > 0
    return {n: verdict(n, vals.get(n), task, power_ok) for n in TARGET_NAMES}


def methods_of(records: list[dict]) -> list[str]:
    seen: list[str] = []
    for res in records:
        for name in res["methods"]:
            if name != "retrain" and name not in seen:
                seen.append(name)
    return seen


def _seed_count(oks: list) -> str:
    """`` (k/n seeds)``: seeds meeting a target on their own, out of those judged (a seed whose
    audit has no power is not judged on MIA: counted apart as n/a)."""
    judged = [ok for ok in oks if ok is not None]
    na = len(oks) - len(judged)
    return f" ({sum(1 for ok in judged if ok)}/{len(judged)} seeds" + (f", {na} n/a)" if na else ")")


def targets_table(records: list[dict], methods: list[str] | None = None) -> tuple[str, list[str]]:
    """The targets table over the given records (mean over their seeds per model x task x
    method) and the notes: every (model, task, seed) whose audit has no power. ``methods``:
    the rows wanted (default every method but retrain, in the records' order; ``original``: the
    model before unlearning, judged like a method, with no speed-up)."""
    groups: dict = {}
    for res in records:
        groups.setdefault((res["model"], res["task"]), []).append(res)
    rows, notes = [], []
    for (model, task), recs in groups.items():
        for res in recs:
            p = audit_power(res)
            if not has_power(p):
                notes.append(f"{model} {task} seed {res['seed']}: {NO_POWER} (power "
                             f"{'not measured' if p is None else f'{p:+.3f}'})")
        for name in methods or methods_of(recs):
            per_seed = [values(r, name) for r in recs if name == "original" or name in r["methods"]]
            if not per_seed:
                continue
            mv = mean_values(per_seed)
            if "error" in mv:
                rows.append([model, task, name, str(mv["seeds"]), "", f"failed: {mv['error']}"] + [""] * 6)
                continue
            j = judge(mv, task)
            met = sum(1 for ok, _ in j.values() if ok)
            if len(per_seed) > 1:  # how many seeds meet each target on their own
                each = [judge(v, task) for v in per_seed]
                j = {n: (ok, text + _seed_count([e[n][0] for e in each])) for n, (ok, text) in j.items()}
            if name == "original":  # nothing was run: no time to compare
                j["speed-up"] = (None, "n/a (no update)")
            power = "" if mv["power"] is None else f"{mv['power']:+.3f}"
            seeds = str(mv["seeds"]) + (f" ({mv['failed']} failed)" if mv["failed"] else "")
            rows.append([model, task, name, seeds, power] + [j[n][1] for n in TARGET_NAMES]
                        + [f"{met}/{len(TARGET_NAMES)}"])
    head = ["model", "task", "method", "seeds", "audit power", "forget_hit@10 - retrain's (<= +0.01)",
            "abs(MIA - retrain's) (<= 0.03)", "over-unlearned (<= 0.10)", "test NDCG@10 / retrain's (>= 0.98)",
            "req. users: / retrain's (>= 0.95); user tasks: - retrain's (<= +0.01)", "speed-up (>= 200x)", "met"]
    return "\n".join(md_table(head, rows)), notes


def versus_table(records: list[dict], refs: tuple = ("l2unrank_twosided", "l2unrank")) -> str:
    """Per model x task and baseline: the targets the baseline meets where the reference misses
    them (wins) and those it misses where the reference meets them (loses), judged on the means
    over seeds. The reference: the first of ``refs`` that finished on the group (l2unrank where
    the two-sided update is refused, as on LightGCN)."""
    groups: dict = {}
    for res in records:
        groups.setdefault((res["model"], res["task"]), []).append(res)
    rows = []
    for (model, task), recs in groups.items():
        def means(name, recs=recs):
            per_seed = [values(r, name) for r in recs if name in r["methods"]]
            return mean_values(per_seed) if per_seed else None
        ref = next((r for r in refs if (mr := means(r)) is not None and "error" not in mr), None)
        if ref is None:
            continue
        mref = means(ref)
        jref = judge(mref, task)
        for name in methods_of(recs):
            if name == ref:
                continue
            mv = means(name)
            if mv is None:
                continue
            j = judge(mv, task)
            wins = [n for n in TARGET_NAMES if j[n][0] and not jref[n][0]]
            loses = [n for n in TARGET_NAMES if jref[n][0] and not j[n][0]]
            met = sum(1 for ok, _ in j.values() if ok)
            met_ref = sum(1 for ok, _ in jref.values() if ok)
            rows.append([model, task, name, ref, f"{met}/{len(TARGET_NAMES)} vs {met_ref}/{len(TARGET_NAMES)}",
                         ", ".join(wins) or "-", ", ".join(loses) or "-"])
    head = ["model", "task", "baseline", "reference", "targets met: baseline vs reference",
            "baseline meets, reference misses", "baseline misses, reference meets"]
    return "\n".join(md_table(head, rows))


def targets_report(records: list[dict], methods: list[str] | None = None) -> str:
    """The targets table with its notes, as markdown."""
    table, notes = targets_table(records, methods)
    seeds = sorted({r["seed"] for r in records})
    text = (f"Issue 22's targets (thresholds: benchmarks/twosided_targets.py TARGETS), seeds "
            f"{', '.join(map(str, seeds))}; a value over seeds is the mean of the per-seed values "
            f"(MIA: of the per-seed |gaps| where the audit has power), judged against the target; "
            f"(k/n seeds): how many seeds meet it on their own; met: targets met by the mean.\n\n{table}\n")
    if notes:
        text += "\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    if any("l2unrank_twosided" in r["methods"] for r in records) and len(methods_of(records)) > 1:
        text += ("\nWhere each baseline wins or loses against l2unrank_twosided (l2unrank where that is refused; "
                 "on the means over seeds):\n\n"
                 + versus_table(records) + "\n")
    return text
