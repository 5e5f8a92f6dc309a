"""Step calibration and the utility guard, shared by every calibrated influence method.

A step direction ``Delta`` (from any solve) is scaled before it is applied: per request user
(``scale_u``, when the update lives in the request users' own blocks) or by one scale for the
whole update. Everything is measured on the request users' scores over all items with their
retained train items masked, never on the test split.

**Target** (``calib_target``):

* ``valid_rank`` (default): after retraining, a forgotten item ranks like the same user's
  held-out relevant items. So a user's step is the smallest on the grid at which the median
  rank of the user's forgotten items reaches the median rank of the user's own validation
  items (both under the stepped model). A user without validation items falls back to the
  viewing threshold.
* ``view``: the smallest step at which at most ``view_share`` of the user's forgotten items
  stay inside the top ``view_k``.

**Floor** (``step_floor``, default 1): the influence step itself (scale 1) is the model's
estimate of the removal; the search only enlarges it where it falls short of the target, so a
request whose items already rank low still has its influence removed (the model is not left
unchanged). **The guard wins over the floor**: where the floor itself would break the utility
guard, the common cap goes below it, and the report says so (``users_capped_below_floor``,
``floor_held``).

**Constraint**: no forgotten item may end inside the top ``view_k`` when it was outside it
before the request; the step is raised until none does (where the grid allows; what is left is
reported as ``new_entrants``).

**No reach** (per-user scales): a user for whom the search finds no step on the grid that meets
both the target and the constraint takes, of the steps the search measured for them (the
floor included), the one without a new entrant that came closest to the target (its progress:
the share of the user's forgotten items ranked at or below the median of their validation
items, or outside the top ``view_k``); the floor if none is clean (``users_not_reached``). Not
the grid's largest step by default: on a nonlinear model a larger step can bring forgotten
items back into the top ``view_k``.

**Move bound** (``step_max_move``, per-user steps): beyond the floor, the search may enlarge a
request user's step only while the user's block moves at most ``step_max_move`` x its own
norm (0: no bound; the floor wins over it; a user with no retained train row is not bounded:
their block goes where the search takes it, as retraining leaves them cold). Without it, on LightGCN the valid_rank target asks
for steps tens to hundreds of times the influence step, a request user's base embedding grows
to hundreds of times the typical norm, and propagation carries it into the items every other
user scores: one request barely moves the others' validation NDCG (the guard lets it pass), a
stream of them erodes everyone's (benchmarks/results/step_bound.md). ``users_move_bounded``
in ``info["calibration"]`` counts the steps it lowered.

**Guard** (``utility_guard``): the request users' own validation NDCG@10 (summed over them,
retained history masked) keeps at least ``utility_guard`` of its starting value, the model's
before the step (the original; for graph models the original serving the retained graph,
which the request imposes whatever the step; the ratio against the original itself is
reported beside it); when the step moves other users (graph models, full-parameter updates) a
seeded sample of ``guard_sample`` other validation users must keep it too. A common cap on
the scales, the largest on the grid that holds both, is found by bisection over measured
caps (cap 0 is the unchanged model), so what is applied was measured to hold, for any
request size, one user included. A request user whose every train interaction is forgotten
(the user task) keeps no retained data, and retraining leaves them a cold user, so their
validation NDCG is not guarded: the guard sums over the request users who keep train
interactions (none left: only the others' sample, where there is one, is guarded).
``info["guard"]`` reports both ratios as applied and how many request users it covers.
"""

from __future__ import annotations

import logging
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from recbole_unrank.influence.probe import RankProbe
from recbole_unrank.progress import progress

__all__ = ["StepCalibration", "row_median"]

logger = logging.getLogger("recbole_unrank")


def row_median(rows: Tensor, values: Tensor, n_rows: int) -> Tensor:
    """Lower median of ``values`` per row (``rows`` in ``0..n_rows-1``); NaN for empty rows."""
    out = torch.full((n_rows,), float("nan"), dtype=torch.float64, device=values.device)
    if rows.numel() == 0:
        return out
    v = values.to(torch.float64)
    order = torch.argsort(v, stable=True)
    order = order[torch.argsort(rows[order], stable=True)]
    r, v = rows[order], v[order]
    counts = torch.bincount(r, minlength=n_rows)
    starts = torch.cumsum(counts, 0) - counts
    has = counts > 0
    mid = starts + (counts - 1).clamp(min=0) // 2
    out[has] = v[mid[has]]
    return out


class _RowCache:
    """Scores of the request users under per-user scales, each user's row computed once per
    scale the search tries for that user.

    A user's scores depend on that user's own scale only where the adapter's step moves no one
    else (``moves_other_users`` False: factor models and NeuMF) and nothing else is watched
    (no other users' guard sample): then a row measured earlier at the same scale is taken
    from the cache (the bisection of the guard's cap and the final measures mostly repeat
    scales), and only the users whose scale is new are scored, through the same
    ``scores_with_delta`` on the sliced ``prepared`` (a tuple of per-user tensors). The cache
    holds at most ``budget`` floats of rows (older entries are dropped first). Elsewhere every
    measure scores every request user, as before. ``scored`` counts the user rows scored,
    ``calls`` the measures."""

    def __init__(self, adapter, users: Tensor, prepared, own_rows: bool, budget: int = 1 << 26):
        self.a, self.users, self.prepared = adapter, users, prepared
        U = users.numel()
        sliceable = isinstance(prepared, tuple) and all(torch.is_tensor(t) and t.dim() >= 1 and t.shape[0] == U
                                                          for t in prepared)
        self.on = bool(own_rows and sliceable and not getattr(adapter, "moves_other_users", False))
        self.entries: list[tuple[Tensor, Tensor]] = []  # (scales [U], scores [U, n]), newest last
        self.budget = int(budget)
        self.scored, self.calls = 0, 0

    def scores(self, scale: Tensor) -> Tensor:
        self.calls += 1
        U = self.users.numel()
        if not self.on:
            self.scored += U
            return self.a.scores_with_delta(self.users, self.prepared, scale)
        out, have = None, torch.zeros(U, dtype=torch.bool, device=scale.device)
        for old_scale, old_scores in reversed(self.entries):
            hit = ~have & (old_scale == scale)
            if bool(hit.any()):
                if out is None:
                    out = torch.empty_like(old_scores)
                out[hit] = old_scores[hit]
                have |= hit
        need = (~have).nonzero().squeeze(1)
        if need.numel():
            part = self.a.scores_with_delta(self.users[need], tuple(t[need] for t in self.prepared), scale[need])
            if out is None:
                out = part.new_empty(U, part.shape[1]) if need.numel() < U else part
            if need.numel() < U:
                out[need] = part
            self.scored += int(need.numel())
        self.entries.append((scale.clone(), out))
        per = out.numel()
        while len(self.entries) > 1 and per * len(self.entries) > self.budget:
            self.entries.pop(0)
        return out  # read only: the probe masks a copy


class StepCalibration:
    """Measures of a candidate step on the request users (and a sample of the others).

    Build it before the model changes (its starting values are the original's).

    Args:
        settings: ``calib_target``, ``step_floor``, ``view_k``, ``view_share``,
            ``utility_guard``, ``step_grid``, ``guard_sample``.
        adapter: the model's adapter (scores before any change are read here).
        users, items, keep: the train rows and the retained mask.
        req_users: the request users (sorted), row ``r`` of every [U, ...] tensor.
        t_users, t_items: the request's pairs.
        valid_users, valid_items: the validation split.
        watch_others: the step moves other users' scores too: guard a sample of them.
        seed: seed of the sample.
        show_progress: a progress bar over the search's measurements (on a terminal only).
        train_index, valid_index: the :class:`~recbole_unrank.influence.index.InteractionIndex`
            of (``users``, ``items``) and of (``valid_users``, ``valid_items``), when the caller
            holds them: the users' rows are then read from them (the rows returned) instead of
            masks over every train and validation row. Same result.
    """

    def __init__(self, settings: dict, adapter, users, items, keep, req_users, t_users, t_items,
                 valid_users, valid_items, watch_others: bool, seed: int, show_progress: bool = False,
                 train_index=None, valid_index=None):
        self.s = settings
        self.show_progress = show_progress
        self.adapter = adapter
        device = users.device
        self.req_users = req_users
        U = req_users.numel()
        self.U = U
        row_of = torch.full((adapter.n_users,), -1, dtype=torch.long, device=device)
        row_of[req_users] = torch.arange(U, device=device)
        if train_index is not None and (train_index.users is not users or train_index.items is not items):
            train_index = None
        if valid_index is not None and (valid_index.users is not valid_users or valid_index.items is not valid_items):
            valid_index = None

        def train_rows(who, row):  # retained train rows of the users ``who`` (sorted)
            if train_index is None:
                return (keep & (row[users] >= 0)).nonzero().squeeze(1)
            rows = train_index.rows_of_users(who)
            return rows[keep[rows]]

        def valid_rows(who, row):
            if valid_index is None:
                return (row[valid_users] >= 0).nonzero().squeeze(1)
            return valid_index.rows_of_users(who)

        hist = train_rows(req_users, row_of)
        v_mine = valid_rows(req_users, row_of)
        self.probe = RankProbe(U, row_of[users[hist]], items[hist], row_of[t_users], t_items,
                               row_of[valid_users[v_mine]], valid_items[v_mine])
        # the request users the guard covers: those who keep at least one train interaction
        self.guarded = torch.bincount(row_of[users[hist]], minlength=U) > 0
        self.others = None
        self.other_probe = None
        if watch_others:
            cand = torch.unique(valid_users) if valid_index is None else valid_index.present_users()
            cand = cand[~torch.isin(cand, req_users)]
            gen = torch.Generator(device="cpu").manual_seed(int(seed))
            n = int(settings["guard_sample"])
            pick = cand[torch.randperm(cand.numel(), generator=gen)[:n].to(device)].sort().values
            o_row = torch.full((adapter.n_users,), -1, dtype=torch.long, device=device)
            o_row[pick] = torch.arange(pick.numel(), device=device)
            o_hist = train_rows(pick, o_row)
            o_mine = valid_rows(pick, o_row)
            empty = torch.zeros(0, dtype=torch.long, device=device)
            self.others = pick
            self.other_probe = RankProbe(pick.numel(), o_row[users[o_hist]], items[o_hist], empty, empty,
                                         o_row[valid_users[o_mine]], valid_items[o_mine])
        k = int(settings["view_k"])
        with torch.no_grad():
            start = self.probe.mask(adapter.user_scores(req_users))
            self.start_ranks = self.probe.forget_ranks(start, masked=True)
            self.start_ndcg = self._req_sum(self.probe.valid_ndcg(start, 10, masked=True))
            self.start_other = None
            if self.other_probe is not None:
                self.start_other = float(self.other_probe.valid_ndcg(adapter.user_scores(pick), 10).sum())
        self.outside = self.start_ranks > k  # forget pairs outside the viewing threshold before

        lo, hi, n = settings["step_grid"]
        grid = np.concatenate(([0.0], np.logspace(np.log10(float(lo)), np.log10(float(hi)), int(n))))
        floor = float(settings["step_floor"])
        if floor > 0:
            grid = np.unique(np.concatenate((grid, [floor])))
        self.grid = torch.as_tensor(grid, device=device, dtype=torch.float64)
        self.floor_index = int(np.searchsorted(grid, floor)) if floor > 0 else 0

    # ---- measures --------------------------------------------------------------------------
    def _user_ok(self, scores: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Per request user: target met, no new entrant, NDCG@10 and progress [U] (masked scores).

        Progress towards the target, comparable across steps (it reads ranks, not scores): the
        share of the user's forgotten items that rank at or below the median of the user's
        validation items (the ``valid_rank`` target is met when it reaches one half, up to
        ties), or outside the top ``view_k`` (``view``, and users without validation items).

        No rank is computed: within a row, ``rank(a) >= rank(b)`` exactly when
        ``s_a <= s_b`` (ranks count strictly higher scores and both are entries of the row),
        so the median forgotten rank reaches the median validation rank exactly when the
        forgotten items' median score (ranks' lower median = scores' upper median) is at most
        the validation items'; ``rank <= k`` exactly when the score reaches the row's k-th
        largest (ties favour the pair, as the ranks do)."""
        s, p, U = self.s, self.probe, self.U
        k = int(s["view_k"])
        kth = scores.topk(min(k, scores.shape[1]), dim=1).values[:, -1]
        fs = scores[p.f_rows, p.f_items]
        in_top = fs >= kth[p.f_rows]

        def per_user(flags: Tensor) -> Tensor:  # count of the forget pairs' flags per request user
            return torch.zeros(U, dtype=torch.float64, device=scores.device).index_add_(
                0, p.f_rows, flags.to(torch.float64))

        share = per_user(in_top) / p.f_count.to(torch.float64)
        view_ok = share <= float(s["view_share"]) + 1e-9
        progress = 1.0 - share
        if s["calib_target"] == "valid_rank":
            med_f = row_median(p.f_rows, -fs, U)  # minus the upper median score
            med_v = row_median(p.v_rows, -scores[p.v_rows, p.v_items], U)
            target = torch.where(torch.isnan(med_v), view_ok, med_f >= med_v)
            has_v = ~torch.isnan(med_v)
            below = fs.to(torch.float64) <= -torch.nan_to_num(med_v)[p.f_rows]
            progress = torch.where(has_v, per_user(below) / p.f_count.to(torch.float64), progress)
        else:
            target = view_ok
        new = per_user(self.outside & in_top)
        return target, new == 0, p.valid_ndcg(scores, 10, masked=True), progress

    def _req_sum(self, ndcg: Tensor) -> float:
        """The request users' validation NDCG@10 the guard keeps: summed over the users who keep
        train interactions (a fully forgotten user has no retained utility to keep)."""
        return float(ndcg[self.guarded].sum())

    def _set_reference(self, ndcg: Tensor, other: float | None) -> None:
        """The guard's starting value: the model before the step (for graph models the original
        serving the retained graph, which the request imposes whatever the step)."""
        self.ref_ndcg, self.ref_other = self._req_sum(ndcg), other

    def _guard(self, ndcg_sum: float, other_sum: float | None) -> tuple[bool, float, float | None]:
        g = float(self.s["utility_guard"])
        r = ndcg_sum / self.ref_ndcg if self.ref_ndcg > 0 else 1.0
        o = None
        if other_sum is not None:
            o = other_sum / self.ref_other if self.ref_other and self.ref_other > 0 else 1.0
        ok = r >= g - 1e-12 and (o is None or o >= g - 1e-12)
        return ok, r, o

    # ---- per-user scales -------------------------------------------------------------------
    @torch.no_grad()
    def per_user(self, delta: Tensor, info: dict) -> Tensor:
        """Per-user scales [U] for a block step ``delta`` [U, d] (request users' blocks)."""
        a, U = self.adapter, self.U
        prepared = a.prepare_user_delta(self.req_users, delta, self.others)
        grid = self.grid.to(delta.dtype)
        bar = self._bar()

        best = {"progress": None, "scale": None}
        # A measurement is a function of the scales alone: the search asks some twice (the
        # chosen steps, again for the guard and for the report), scored once. The other users'
        # sample is scored only where the guard is read (the reference, the cap, the report):
        # the search for each user's step reads the request users alone.
        seen: dict[bytes, list] = {}

        rows = _RowCache(a, self.req_users, prepared, self.other_probe is None)

        asked = [0]  # measures the search asks for (some repeat a scale: scored once)

        def measure(scale, track=False, guard=True):
            asked[0] += 1
            key = scale.detach().to("cpu", torch.float64).numpy().tobytes()
            if key not in seen:
                bar.update()
                raw = rows.scores(scale)
                # the cache's rows are read only (masked as a copy); otherwise the adapter's
                # scores are a new tensor each call, masked in place (no copy)
                scores = self.probe.mask(raw) if rows.on else self.probe.mask_(raw)
                seen[key] = [*self._user_ok(scores), None, False]
            entry = seen[key]
            if guard and not entry[5] and self.other_probe is not None:
                others = self.other_probe.mask_(a.other_scores_with_delta(prepared, scale))
                entry[4], entry[5] = float(self.other_probe.valid_ndcg(others, 10, masked=True).sum()), True
            target, clean, ndcg, progress, other, _ = entry
            if track:  # the search's own steps: remember each user's best clean one
                bp, bs = best["progress"], best["scale"]
                better = clean & ((progress > bp) | ((progress == bp) & (scale < bs)))
                best["progress"] = torch.where(better, progress, bp)
                best["scale"] = torch.where(better, scale, bs)
            return target & clean, ndcg, other if guard else None, target, clean

        _, nd0, ot0, _, _ = measure(torch.zeros(U, dtype=delta.dtype, device=delta.device))
        self._set_reference(nd0, ot0)
        G = grid.numel()
        lo = torch.full((U,), self.floor_index, dtype=torch.long, device=delta.device)
        hi = torch.full((U,), G - 1, dtype=torch.long, device=delta.device)
        best["progress"] = torch.full((U,), -1.0, dtype=torch.float64, device=delta.device)
        best["scale"] = grid[lo].clone()  # the floor, where no measured step is clean
        measure(grid[lo], track=True, guard=False)
        while bool((lo < hi).any()):  # smallest grid index >= the floor meeting target and constraint
            mid = (lo + hi) // 2
            ok = measure(grid[mid], track=True, guard=False)[0]
            active = lo < hi
            hi = torch.where(active & ok, mid, hi)
            lo = torch.where(active & ~ok, mid + 1, lo)
        chosen = grid[hi]
        # A user whom no step brought to the target and the constraint takes, of the steps the
        # search measured (the floor included), the clean one that came closest to the target
        # (the floor where none is clean), not the grid's largest step by default: on a
        # nonlinear model a larger step can bring forgotten items back into the top view_k.
        reached = measure(chosen, guard=False)[0]
        searched = torch.where(reached, chosen, best["scale"])
        bound = self._move_bound(delta)
        bounded = 0
        if bound is not None:  # beyond the floor, a block moves at most step_max_move x its norm
            bounded = int((searched > bound).sum())
            searched = torch.minimum(searched, bound)
        chosen, cap = self._cap(lambda sc: measure(sc), searched, grid)
        ok, ndcg, other, target, clean = measure(chosen)
        bar.close()
        self._report(info, chosen, cap, ndcg, other, target, clean, reached, searched)
        info["calibration"]["users_move_bounded"] = bounded  # steps the move bound lowered
        info["calibration"]["user_scorings"] = rows.scored  # request-user rows scored
        info["calibration"]["measures"] = asked[0]  # measures asked for
        info["calibration"]["scored_measures"] = rows.calls  # distinct scale vectors scored
        return chosen

    def _move_bound(self, delta: Tensor) -> Tensor | None:
        """Per request user, the largest scale at which the block moves at most
        ``step_max_move`` x its own norm, never below the floor (the influence step itself), and
        no bound for a user whose every train row is forgotten; None without a bound
        (``step_max_move`` 0)."""
        move = float(self.s.get("step_max_move") or 0.0)
        if move <= 0:
            return None
        own = self.adapter.user_block(self.req_users).to(delta.dtype).norm(dim=1)
        step = delta.norm(dim=1)
        bound = torch.where(step > 0, move * own / step.clamp(min=torch.finfo(delta.dtype).tiny),
                            torch.full_like(step, float("inf")))
        floor = float(self.s["step_floor"])
        bound = bound.clamp(min=floor) if floor > 0 else bound
        # a user with no retained train row goes to the retained optimum unbounded: retraining
        # leaves them cold, and with no edge left their block reaches no other user's scores
        return torch.where(self.guarded, bound, torch.full_like(bound, float("inf")))

    def _bar(self):
        """A bar counting the search's measurements (each scores the request users once)."""
        return progress(desc="calibration", show_progress=self.show_progress)

    def _cap(self, measure, chosen: Tensor, grid: Tensor):
        """The largest common cap on the grid under which the guard holds (bisection over
        measured caps; cap 0 leaves the model as it stands, so the result always holds)."""
        _, ndcg, other, _, _ = measure(chosen)
        if self._guard(self._req_sum(ndcg), other)[0]:
            return chosen, None
        # Caps at or above the floor first (users at the floor keep the influence step); below
        # it only when the floor itself breaks the guard.
        c_lo, c_hi = 0, grid.numel() - 1
        if self.floor_index > 0:
            _, nd, ot, _, _ = measure(chosen.clamp(max=float(grid[self.floor_index])))
            if self._guard(self._req_sum(nd), ot)[0]:
                c_lo = self.floor_index
            else:
                c_hi = self.floor_index
        while c_lo < c_hi:
            c_mid = (c_lo + c_hi + 1) // 2
            _, nd, ot, _, _ = measure(chosen.clamp(max=float(grid[c_mid])))
            if self._guard(self._req_sum(nd), ot)[0]:
                c_lo = c_mid
            else:
                c_hi = c_mid - 1
        cap = float(grid[c_lo])
        return chosen.clamp(max=cap), cap

    def _report(self, info, chosen, cap, ndcg, other, target, clean, reached, searched):
        """``info["calibration"]`` and ``info["guard"]``. Every request user falls in exactly one
        of ``users_met`` (target and constraint hold at the applied step), ``users_not_reached``
        (no step the search tried met both), ``users_capped`` (the search's step met both, the
        guard's cap lowered it and they no longer hold) and ``users_lost_jointly`` (the search's
        step met both, applied unchanged, but the other request users' steps moved them: graph
        models); they sum to ``request_users``."""
        met, r, o = self._guard(self._req_sum(ndcg), other)
        ok = target & clean
        lowered = chosen < searched
        floor = float(self.s["step_floor"])
        below_floor = int((chosen < floor * (1 - 1e-12)).sum()) if floor > 0 else 0
        info["calibration"] = {
            "target": self.s["calib_target"],
            "step_floor": floor,
            "step_median": float(chosen.median()),
            "step_min": float(chosen.min()),
            "step_cap": cap,
            # share of request users for whom the target and the no-new-entrant constraint hold
            "users_meeting_target": float(ok.to(torch.float64).mean()),
            "request_users": int(ok.numel()),
            "users_met": int(ok.sum()),
            "users_not_reached": int((~ok & ~reached).sum()),
            "users_capped": int((~ok & reached & lowered).sum()),
            "users_lost_jointly": int((~ok & reached & ~lowered).sum()),
            "users_with_new_entrants": int((~clean).sum()),
            # the guard wins over the floor: users whose applied step is below it
            "users_capped_below_floor": below_floor,
            "floor_held": below_floor == 0,
        }
        info["guard"] = {
            "utility_guard": float(self.s["utility_guard"]),
            "request_users_valid_ndcg_ratio": r,
            "others_valid_ndcg_ratio": o,
            "met": bool(met),
            # against the original model itself (differs from the above for graph models only)
            "request_users_valid_ndcg_ratio_vs_original":
                self._req_sum(ndcg) / self.start_ndcg if self.start_ndcg > 0 else 1.0,
            "request_users_guarded": int(self.guarded.sum()),
            "request_users_fully_forgotten": int((~self.guarded).sum()),
        }
        logger.info("[calibration] %s: step median %.3g (cap %s), %.0f%% of users meet it; request users' "
                    "valid NDCG x%.3f, others x%s", self.s["calib_target"], info["calibration"]["step_median"],
                    cap, 100 * info["calibration"]["users_meeting_target"], r,
                    "-" if o is None else f"{o:.3f}")

    # ---- one scale -------------------------------------------------------------------------
    @torch.no_grad()
    def global_scale(self, apply: Callable[[float], None], info: dict) -> float:
        """One scale for the whole update. ``apply(s)`` sets the model to ``theta_0 + s Delta``."""
        a, U = self.adapter, self.U
        grid = self.grid
        bar = self._bar()

        def measure(scale):
            bar.update()
            value = float(scale.reshape(-1)[0]) if torch.is_tensor(scale) else float(scale)
            apply(value)
            scores = self.probe.mask(a.user_scores(self.req_users))
            target, clean, ndcg, _ = self._user_ok(scores)
            other = None
            if self.other_probe is not None:
                other = float(self.other_probe.valid_ndcg(a.user_scores(self.others), 10).sum())
            ok = float((target & clean).to(torch.float64).mean()) >= 0.5
            full = torch.full((U,), value, dtype=torch.float64, device=grid.device)
            return torch.full((U,), ok, dtype=torch.bool, device=grid.device), ndcg, other, target, clean, full

        _, nd0, ot0, _, _, _ = measure(0.0)
        self._set_reference(nd0, ot0)
        lo, hi = self.floor_index, grid.numel() - 1
        while lo < hi:  # smallest scale >= the floor at which half the users meet the target
            mid = (lo + hi) // 2
            if bool(measure(grid[mid])[0][0]):
                hi = mid
            else:
                lo = mid + 1
        searched = grid[hi:hi + 1].expand(U).clone()
        _, _, _, t0, c0, _ = measure(searched)
        chosen, cap = self._cap(lambda sc: measure(sc)[:5], searched, grid)
        _, ndcg, other, target, clean, _ = measure(chosen)
        bar.close()
        self._report(info, chosen, cap, ndcg, other, target, clean, t0 & c0, searched)
        apply(0.0)
        return float(chosen[0])
