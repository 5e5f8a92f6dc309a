"""Scoring models on one request's split: the row every model of a run gets in results.json.

:meth:`Evaluator.evaluate` is the one entry: for ``split="test"`` a row holds RecBole's
metrics on the test split (with only the *retained* history masked), the forget measures on
the request's pairs (ranks against the original's), the request users' own test utility, the
fairness of the change (active against other users) and the audit's features, which
:meth:`Evaluator.audit_row` turns into ``audit`` measures once retrain's membership attack is
known (and, with ``unrank_audit_shadows`` >= 2, the LiRA audit's ``lira_auc`` from shadows
trained once per request: :mod:`recbole_unrank.evaluation.lira`); ``split="valid"`` (model
selection) holds validation utility and forget measures only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from recbole_unrank.data import Data, make_forget_loader, make_loaders, make_monitor_loader, request_seed
from recbole_unrank.device import model_device
from recbole_unrank.evaluation import lira, measures
from recbole_unrank.evaluation import metrics as unrank_metrics
from recbole_unrank.evaluation.audit import Auditor, fit_attack
from recbole_unrank.request import ForgetRequest

__all__ = ["Evaluator", "REFERENCE_METRICS", "score_users", "log_row"]

logger = logging.getLogger("recbole_unrank")
# Measures that compare a model with the original: need the original's ranks as reference.
REFERENCE_METRICS = {"rdr", "urr", "rank_decline_ratio"}


@dataclass
class Evaluator:
    """The split of one request and what every evaluation on it compares with.

    ``loaders`` (train / valid / test) and ``forget_loader`` mask the retained history only
    (:meth:`open` builds them); ``reference`` is the original's forget ranks (set from its
    row); ``rows`` the rows evaluated so far, in order (the first is the original's).
    """

    config: Any
    data: Data
    request: ForgetRequest
    retain_ds: Any
    forget_ds: Any
    loaders: tuple = ()
    forget_loader: Any = None
    original: Any = None
    reference: dict | None = None
    rows: list[dict] = field(default_factory=list)

    def open(self) -> None:
        """Build the retained-history loaders and the forget loader. The validation loader reads
        the validation split's *monitor* part only (:func:`~recbole_unrank.data.split_valid`):
        the valid row and :meth:`valid_score` (model selection, the tuner's floor) read rows
        that no method reads (DESIGN.md 10.3); the test loader masks the whole validation split
        as RecBole does."""
        train, _, test = make_loaders(self.config, self.data, self.retain_ds)
        self.loaders = (train, make_monitor_loader(self.config, self.data, self.retain_ds), test)
        self.forget_loader = make_forget_loader(self.config, self.retain_ds, self.forget_ds)

    # ----------------------------------------------------------------- the row
    def evaluate(self, model, name: str, time_s: float, extra: dict | None = None,
                 split: str = "test") -> tuple[dict, dict]:
        """One row of ``model`` (its ``method`` is ``name``) and its forget ranks ``{"keys",
        "ranks"}``. ``split="test"``: test utility, forget measures, ``request_users``,
        ``fairness`` and the audit's features (``_probe``); ``split="valid"``: validation
        utility and forget measures only (for model selection). ``extra`` is added to the row."""
        if split not in ("test", "valid"):
            raise ValueError(f"split={split!r}: evaluate on 'test' or 'valid'")
        cfg = self.config
        model.eval()
        _, valid_loader, test_loader = self.loaders
        loader = test_loader if split == "test" else valid_loader
        # test pairs rank below the items they tie with (utility is never credited to ties)
        ties = "against_pair" if split == "test" else "for_pair"
        utility, pairs = unrank_metrics.evaluate_loader(model, loader, cfg["metrics"], cfg["topk"], ties=ties)
        forget, ranks = unrank_metrics.evaluate_loader(
            model, self.forget_loader, self._forget_metric_names(), cfg["unrank_topk"],
            reference=None if self.reference is None else (self.reference["keys"], self.reference["ranks"]),
        )
        row = {"method": name, "time_s": float(time_s), split: utility, "forget": forget}
        if split == "test":
            row.update(self._user_measures(pairs))
        if extra:
            row.update(extra)
        if split == "test":
            row["_probe"] = self.auditor.probe(model, with_attack_data=(name == "retrain"))
            if name == "retrain":
                self.retrain_ranks = ranks
        return row, ranks

    def evaluate_forget_only(self, model, name: str, time_s: float, extra: dict | None = None):
        """:meth:`evaluate` on the validation split."""
        return self.evaluate(model, name, time_s, extra, split="valid")

    def _forget_metric_names(self) -> list[str]:
        names = [m.lower() for m in self.config["unrank_metrics"]]
        if self.reference is None:
            names = [m for m in names if m not in REFERENCE_METRICS]
        return names

    # ----------------------------------------------------------------- beyond rank
    @property
    def auditor(self) -> Auditor:
        if getattr(self, "_auditor", None) is None:
            self._auditor = Auditor(
                self.retain_ds, self.forget_ds, self.data.test_ds, score_users,
                seed=request_seed(self.config),
            )
        return self._auditor

    def _user_measures(self, test_pairs: dict) -> dict:
        """``request_users`` (test NDCG@10 / Recall@10 over the request's users) and
        ``fairness`` (test NDCG@10 change against the original, active vs other users)."""
        n_items = int(self.data.train_ds.item_num)
        users, ndcg, recall = measures.per_user_ndcg_recall(test_pairs["keys"], test_pairs["ranks"], n_items, 10)
        request_users = np.unique(self.request.users)
        out = {"request_users": {"ndcg@10": measures.group_mean(users, ndcg, request_users),
                                 "recall@10": measures.group_mean(users, recall, request_users),
                                 "users": int(np.isin(users, request_users).sum())}}
        if getattr(self, "_user_ndcg_original", None) is None:  # the first row is the original
            self._user_ndcg_original = (users, ndcg)
        o_users, o_ndcg = self._user_ndcg_original
        if not np.array_equal(o_users, users):
            raise RuntimeError("test users differ between evaluations of the same split")
        if getattr(self, "_active_users", None) is None:
            train_users = self.data.train_ds.inter_feat[self.data.train_ds.uid_field].numpy()
            self._active_users = measures.active_users(train_users)
        is_active = np.isin(users, self._active_users)
        delta = ndcg - o_ndcg
        out["fairness"] = {
            "active_ndcg@10_delta": float(delta[is_active].mean()) if is_active.any() else None,
            "inactive_ndcg@10_delta": float(delta[~is_active].mean()) if (~is_active).any() else None,
        }
        return out

    def audit_row(self, row: dict) -> dict:
        """Turn a row's audit features into its ``audit`` measures: ``score_auc`` always;
        ``mia_auc`` and retrain agreement once retrain's row is in :attr:`rows` (its model fits
        the attack). Returns the row."""
        if "_probe" not in row:
            return row
        if getattr(self, "_attack", None) is None:
            retrain = next((r for r in self.rows if r["method"] == "retrain"), None)
            p = retrain.get("_probe") if retrain is not None else None
            if p is not None and len(p.members) and len(p.non_members):
                self._attack = fit_attack(p.members, p.non_members, seed=request_seed(self.config))
        probe = row.pop("_probe")
        audit = Auditor.measures(probe, getattr(self, "_attack", None))
        shadows = self.shadow_audit
        if shadows is not None:
            audit["lira_auc"] = shadows.lira_auc(probe)
            if row.get("method") == "original":  # the shadows' cost, once per request
                audit.update({"shadows": shadows.k, "shadows_s": shadows.time_s})
        ref = getattr(self, "retrain_ranks", None)
        if ref is not None and "ranks" in row:
            aligned = measures.align_ranks(row["ranks"]["keys"], row["ranks"]["ranks"], ref["keys"])
            audit.update(measures.retrain_agreement(aligned, ref["ranks"]))
        row["audit"] = audit
        return row

    @property
    def shadow_audit(self) -> lira.ShadowAudit | None:
        """The LiRA audit's shadows (:mod:`recbole_unrank.evaluation.lira`), trained on first use
        (once per request: the suite audits retrain's row first, a run after all its methods);
        None when ``unrank_audit_shadows`` is 0."""
        k, epochs = lira.shadow_settings(self.config)
        if k < 2:
            return None
        if getattr(self, "_shadow_audit", None) is None:
            shadows = lira.ShadowAudit(self.auditor)
            seed = request_seed(self.config)
            logger.info("[lira] training %d shadow models on halves of the retained data (%s epochs at most)",
                        k, epochs if epochs is not None else self.config["epochs"])
            shadows.train(k, lambda rows, tseed, tag: lira.train_shadow(self.config, self.data, self.retain_ds, rows,
                                                                        tseed, epochs, tag), seed)
            logger.info("[lira] %d shadows trained in %.1fs", k, shadows.time_s)
            self._shadow_audit = shadows
        return self._shadow_audit

    def finish(self) -> None:
        """Audit every row (called once all methods have run); audit_row drops the features."""
        for row in self.rows:
            self.audit_row(row)

    # ----------------------------------------------------------------- for model selection
    def valid_score(self, model) -> float:
        """Validation NDCG@10 of ``model`` on the monitor part (retained history masked)."""
        _, valid_loader, _ = self.loaders
        res, _ = unrank_metrics.evaluate_loader(model, valid_loader, ["NDCG"], [10])
        return float(res["ndcg@10"])

    def forget_ranks(self, model) -> np.ndarray:
        """Ranks of the request's pairs under ``model`` (retained history masked)."""
        _, out = unrank_metrics.evaluate_loader(model, self.forget_loader, ["mean_rank"], [10])
        return out["ranks"]


def score_users(model, users) -> torch.Tensor:
    """All-item scores ``[len(users), n_items]`` of ``model`` for internal user ids ``users``:
    ``full_sort_predict``, or ``predict`` over every item for models without it."""
    from recbole.data.interaction import Interaction

    device = model_device(model)
    users = torch.as_tensor(np.asarray(users), dtype=torch.long, device=device)
    inter = Interaction({model.USER_ID: users})
    model.eval()
    with torch.no_grad():
        try:
            scores = model.full_sort_predict(inter)
        except NotImplementedError:
            items = torch.arange(model.n_items, device=device)
            scores = unrank_metrics.predict_all_items(
                model, Interaction({model.USER_ID: users}), Interaction({model.ITEM_ID: items}),
                model.n_items, 1 << 20)
    return scores.reshape(users.numel(), -1)


def log_row(row: dict) -> None:
    """One log line of a row: utility and forget measures."""
    split = "test" if "test" in row else "valid"
    util, forget = row[split], row["forget"]
    logger.info(
        "[%s] %.2fs | %s ndcg@10 %.4f recall@10 %.4f | forget_hit@10 %.4f mean_rank %.1f",
        row["method"], row["time_s"], split, util.get("ndcg@10", float("nan")),
        util.get("recall@10", float("nan")), forget.get("forget_hit@10", float("nan")),
        forget.get("mean_rank", float("nan")),
    )
