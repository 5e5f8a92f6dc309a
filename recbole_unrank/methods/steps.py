"""The steps of the influence pipeline and what each may be: an influence method is a
:class:`Steps` declaration (run by :class:`~recbole_unrank.methods.pipeline.InfluencePipeline`).

    rows -> scope -> weights -> curvature -> solve -> step size

=============  ==============================================================================
step           choices
=============  ==============================================================================
``rows``       the gradient ``g``: ``request`` (``grad L(D_t)``), ``request+context`` (the
               paper: ``grad [L(D_t) + sum_{D_inf \\ D_t} w_ui l]``), ``retained`` (``-grad
               L_r``: a Newton step on the retained loss of the request users, ``user_refit``)
``scope``      the rows the curvature is taken over: ``hops`` (the paper's p-hop ``D_inf``),
               ``all`` (``D``), ``retained`` (``D \\ D_t``), ``collaborative`` (SCIF: retained
               rows of the request users and their co-interacting neighbours)
``weights``    the paper's entity influence (structural, semantic, both, none) per scope row,
               entering the gradient's context rows (``at = gradient``, the paper) or the
               curvature (``at = curvature``)
``params``     what moves: ``all`` parameters, ``blocks`` (each request user's own block
               ``theta_u``), ``user_rows`` (the request users' rows of every user table,
               SCIF), ``khop_rows`` (IFRU's importance-pruned rows within k hops)
``loss``       ``training`` (the model's own training loss with its L2 term) or
               ``surrogate`` (the paper's log-sigmoid / BPR, no L2)
``curvature``  ``gauss_newton`` (PSD), ``hessian`` (exact), ``identity`` (a gradient step)
``solve``      ``block`` (exact ``d x d`` solves per user), ``cg`` (conjugate gradient to
               convergence, PD operator, residual reported), ``cg_fixed`` (the paper's T plain
               CG steps, through negative curvature)
``step``       ``one`` (``theta += Delta``), ``calibrated`` (:mod:`.calibration`),
               ``newton`` (repeat the step with a line search until the gradient vanishes)
``graph``      graph models during the update: ``retained`` graph, ``original`` train graph,
               or the ``scope`` subgraph (the paper)
=============  ==============================================================================

:meth:`Steps.check` refuses a declaration whose steps do not go together (one line); the
``unrank_*`` settings that select steps and the checks of the others are in :mod:`.settings`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from recbole_unrank.errors import UnrankError

__all__ = ["Steps", "ROWS", "SCOPES", "WEIGHTS", "PARAMS", "LOSSES", "CURVATURES", "SOLVES", "STEP_SIZES",
           "GRAPHS"]

ROWS = ("request", "request+context", "retained")
SCOPES = ("hops", "all", "retained", "collaborative")
WEIGHTS = ("structural", "semantic")
PARAMS = ("all", "blocks", "user_rows", "khop_rows")
LOSSES = ("training", "surrogate")
CURVATURES = ("gauss_newton", "hessian", "identity")
SOLVES = ("block", "cg", "cg_fixed")
STEP_SIZES = ("one", "calibrated", "newton")
GRAPHS = ("retained", "original", "scope")


@dataclass(frozen=True)
class Steps:
    """The declared steps of one influence method (see the module docstring)."""

    rows: str = "request"
    scope: str = "retained"
    weights: tuple = ()
    weights_at: str = "gradient"
    params: str = "all"
    loss: str = "training"
    curvature: str = "gauss_newton"
    solve: str = "cg"
    step: str = "one"
    graph: str = "original"
    spillover: bool = False  # IFRU: add the gradient of the graph change (graph models)

    def check(self) -> "Steps":
        for name, allowed in (("rows", ROWS), ("scope", SCOPES), ("params", PARAMS), ("loss", LOSSES),
                              ("curvature", CURVATURES), ("solve", SOLVES), ("step", STEP_SIZES),
                              ("graph", GRAPHS), ("weights_at", ("gradient", "curvature"))):
            if getattr(self, name) not in allowed:
                raise UnrankError(f"{name}={getattr(self, name)!r}: choose one of {', '.join(allowed)}")
        if (self.solve == "block") != (self.params == "blocks"):
            raise UnrankError("exact block solves go with the request users' blocks (unrank_update: users), "
                              "conjugate gradient with the other parameter sets")
        if self.solve == "block" and self.curvature == "hessian":
            raise UnrankError("unrank_curvature=hessian with exact user blocks: use gauss_newton (exact for "
                              "dot-product blocks) or unrank_update: all")
        if self.weights and self.weights_at == "gradient" and self.rows != "request+context":
            raise UnrankError("the influence weights enter the gradient through its context rows: with the "
                              "context term off (unrank_use_context: False) they would change nothing; turn "
                              "the weights off (unrank_use_weights: False) or set unrank_weights_at: curvature")
        if self.weights and self.scope not in ("hops", "all"):
            raise UnrankError("the influence weights are defined over the scope D_inf: they need scope hops or all")
        if self.step == "newton" and (self.rows != "retained" or self.params != "blocks"):
            raise UnrankError("Newton refits work on the request users' blocks and their retained loss")
        return self

    def describe(self) -> dict:
        d = dataclasses.asdict(self)
        d["weights"] = "+".join(self.weights) or "none"
        return d
