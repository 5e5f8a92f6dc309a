"""Single-user forget requests through L2UnRank's user-block path (issue 7), on tiny.

* CPU (fast): a request of one user works for WMF, NeuMF and LightGCN, moves only that user's
  parameter rows, and no operation of the whole stage materialises a dense users x items (or
  (users + items) squared, or params x params) matrix: every aten op's output shape is logged
  through a ``TorchDispatchMode`` while the method runs. The step calibration's
  ``[U, n_items]`` scores of the request users (U = 1) must show up in the log, so the probe is
  seen to work; a deliberate full score matrix is seen to be caught.
* CUDA (``-m cuda``; skipped without a GPU): the whole L2UnRank stage of the pipeline on the
  GPU for each model, and the same single-user request there.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import make_tiny_config
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from recbole_unrank import pipeline
from recbole_unrank.adapters import get_adapter
from recbole_unrank.methods import METHODS, UnlearnTask
from recbole_unrank.request import request_from_pairs

MODELS = ["WMF", "NeuMF", "LightGCN"]


class ShapeLog(TorchDispatchMode):
    """Records ``(op, shape)`` of every dense tensor any aten op returns while active."""

    def __init__(self):
        super().__init__()
        self.shapes: list[tuple[str, tuple[int, ...]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.layout == torch.strided:
                self.shapes.append((str(func), tuple(t.shape)))
        return out

    def forbidden(self, n_users: int, n_items: int, n_params: int) -> list:
        n = n_users + n_items
        bad = {(n_users, n_items), (n_items, n_users), (n, n), (n_params, n_params)}
        return [(op, s) for op, s in self.shapes if len(s) >= 2 and tuple(s[-2:]) in bad]


def _trained(workdir, model: str, **overrides):
    config = make_tiny_config(workdir, model, **overrides)
    data = pipeline.load_data(config)
    train, valid, _ = pipeline.make_loaders(config, data)
    trained, _ = pipeline.train_model(config, train, valid, None, tag="original")
    return config, data, trained


def _single_user_request(config, data, model):
    """A request of 3 train interactions of the first user with at least 6, run directly."""
    train_ds = data.train_ds
    u = train_ds.inter_feat[train_ds.uid_field].numpy()
    i = train_ds.inter_feat[train_ds.iid_field].numpy()
    user = int(np.flatnonzero(np.bincount(u) >= 6)[0])
    rows = np.flatnonzero(u == user)[:3]
    request = request_from_pairs(train_ds, u[rows], i[rows], "file")
    task = UnlearnTask(
        model=model, model_name=config["model"], train_ds=train_ds, retain_ds=None, forget_ds=None,
        request_index=request.index, seed=config["seed"], valid_ds=data.valid_ds,
    )
    cls = METHODS["l2unrank"]
    method = cls(**pipeline.method_settings(config, cls))
    return user, request, task, method


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    return {m: _trained(tmp_path_factory.mktemp(m), m, epochs=2, learning_rate=0.01) for m in MODELS}


@pytest.mark.parametrize("model_name", MODELS)
def test_single_user_request_on_user_blocks_without_dense_users_x_items(originals, model_name):
    config, data, original = originals[model_name]
    model = copy.deepcopy(original)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    user, request, task, method = _single_user_request(config, data, model)
    n_users, n_items = int(model.n_users), int(model.n_items)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)

    with ShapeLog() as log:
        result = method(task)

    assert result.info["calibration"]["users_meeting_target"] is not None  # the user-block path's calibration ran
    assert not log.forbidden(n_users, n_items, n_params), log.forbidden(n_users, n_items, n_params)[:5]
    # the calibration scores only the request user's row: [1, n_items]
    assert any(s[-2:] == (1, n_items) for _, s in log.shapes if len(s) >= 2)
    # only that user's rows of the user tables moved; nothing else did
    changed_users = set()
    for name, new in result.model.state_dict().items():
        old = before[name]
        if not new.dtype.is_floating_point or new.shape != old.shape:
            continue
        diff = (new - old).abs()
        if diff.dim() == 2 and diff.shape[0] == n_users:
            changed_users |= set(torch.nonzero(diff.sum(1) > 0).view(-1).tolist())
        else:
            assert float(diff.max()) == 0.0, f"{name} changed outside the user's block"
    assert changed_users <= {user}
    for p in result.model.parameters():
        assert torch.isfinite(p).all()
    if model_name == "LightGCN":  # the retained graph is in place: request edges gone
        from recbole_unrank.adapters.lightgcn_graph import live_edges

        assert live_edges(result.model.norm_adj_matrix) == 2 * (len(data.train_ds.inter_feat) - len(request))


def test_neighbour_share_by_hand():
    """LocalGraph.neighbour_share (the scale benchmark's measure) on a graph counted by hand:
    edges u0-i0, u0-i1, u1-i1, u2-i2 (8 directed entries; items are nodes 3..5). The request
    edge u0-i0 has endpoints {0, 3}, whose neighbours are {0, 3, 4}; their rows hold 2 + 1 + 2
    entries: 5 of 8."""
    from torch import nn

    from recbole_unrank.adapters.lightgcn_graph import LocalGraph, normalized_adjacency

    model = nn.Module()
    model.n_users, model.n_items = 3, 3
    model.user_embedding, model.item_embedding = nn.Embedding(3, 2), nn.Embedding(3, 2)
    model.norm_adj_matrix = normalized_adjacency(torch.tensor([0, 0, 1, 2]), torch.tensor([0, 1, 1, 2]), 3, 3)
    st = LocalGraph(model, n_layers=2)
    assert st.neighbour_share([0], [0]) == 5 / 8  # a ratio of small integers: exact in float64
    assert st.neighbour_share([2], [2]) == 2 / 8  # u2-i2 is a component of its own


def test_shape_log_catches_a_full_score_matrix(originals):
    """The probe itself: scoring every user over every item is flagged."""
    _, _, model = originals["WMF"]
    adapter = get_adapter(model)
    with ShapeLog() as log:
        adapter.user_scores(torch.arange(int(model.n_users)))
    assert log.forbidden(int(model.n_users), int(model.n_items), 1)


def test_lightgcn_edge_drop_equals_a_rebuild(originals):
    """The retained graph derived from the model's own graph (no sort) is the rebuilt one."""
    from recbole_unrank.adapters import normalized_adjacency
    from recbole_unrank.adapters.lightgcn_graph import drop_edges

    _, data, model = originals["LightGCN"]
    train = data.train_ds.inter_feat
    u, i = train[data.train_ds.uid_field], train[data.train_ds.iid_field]
    n_u, n_i = int(model.n_users), int(model.n_items)
    full = normalized_adjacency(u, i, n_u, n_i)
    drop = torch.tensor([0, 5, 17])
    keep = torch.ones(u.numel(), dtype=torch.bool)
    keep[drop] = False
    rebuilt = normalized_adjacency(u[keep], i[keep], n_u, n_i)
    dropped = drop_edges(full, u[drop], i[drop], n_u)
    assert torch.equal(dropped._indices(), rebuilt._indices())
    assert torch.allclose(dropped._values(), rebuilt._values(), rtol=0, atol=1e-7)
    assert drop_edges(dropped, u[drop], i[drop], n_u) is None  # edges already gone: caller rebuilds


# ------------------------------------------------------------- LightGCN local propagation
def _float64_lightgcn(originals):
    """A float64 copy of the tiny LightGCN with its train graph built in float64."""
    from recbole_unrank.adapters import normalized_adjacency

    config, data, original = originals["LightGCN"]
    model = copy.deepcopy(original).double()
    train = data.train_ds.inter_feat
    u, i = train[data.train_ds.uid_field], train[data.train_ds.iid_field]
    model.norm_adj_matrix = normalized_adjacency(u, i, int(model.n_users), int(model.n_items), torch.float64)
    return config, data, model, u, i


def _full(adapter, adj, x):
    return adapter._propagate(adj, x)


@pytest.mark.parametrize("low_rank,wide_share", [(None, 0.125), (False, 0.125), (None, 2.0)])
def test_lightgcn_local_propagation_equals_full_propagation(originals, low_rank, wide_share, monkeypatch):
    """Dropping edges and moving base rows updates the layers locally; every result equals a
    full propagation over the rebuilt graph (float64, 1e-10): graph values, final embeddings,
    the columns of M behind the Jacobians, RecBole's cached embeddings and its scores."""
    from recbole.data.interaction import Interaction

    from recbole_unrank.adapters import normalized_adjacency
    from recbole_unrank.adapters.lightgcn_graph import LocalGraph, live_edges

    monkeypatch.setattr(LocalGraph, "WIDE_SHARE", wide_share)  # gathered or one CSR product
    if low_rank is False:  # the direct path (taken when |T| >= d) must agree as well
        drop_fn = LocalGraph.drop
        monkeypatch.setattr(LocalGraph, "drop", lambda self, u, i: drop_fn(self, u, i, low_rank=False))
    _, _, model, u, i = _float64_lightgcn(originals)
    n_u, n_i = int(model.n_users), int(model.n_items)
    adapter = get_adapter(model)
    st = adapter.local()
    keep = torch.ones(u.numel(), dtype=torch.bool)
    for drop in (torch.tensor([0, 1, 2, 40, 41]), torch.tensor([7, 300, 301])):  # two requests in a row
        assert adapter.remove_edges(u[drop], i[drop], int(keep.sum()))
        keep[drop] = False
        assert model._unrank_local is st  # updated in place, not rebuilt
        rebuilt = normalized_adjacency(u[keep], i[keep], n_u, n_i, torch.float64)
        assert float((model.norm_adj_matrix.to_dense() - rebuilt.to_dense()).abs().max()) < 1e-12
        assert live_edges(model.norm_adj_matrix) == 2 * int(keep.sum())
        ego = adapter._ego().detach()
        assert float((st.final - _full(adapter, rebuilt, ego)).abs().max()) < 1e-10
        cur = ego
        for layer in st.layers[1:]:
            cur = torch.sparse.mm(rebuilt, cur)
            assert float((layer - cur).abs().max()) < 1e-10
        users = torch.unique(u[drop])
        onehot = torch.zeros(n_u + n_i, users.numel(), dtype=torch.float64)
        onehot[users, torch.arange(users.numel())] = 1.0
        assert float((st.columns(users) - _full(adapter, rebuilt, onehot)).abs().max()) < 1e-10
        gen = torch.Generator().manual_seed(int(drop[0]))
        adapter.apply_user_delta(users, torch.randn(users.numel(), adapter.user_dim(), generator=gen,
                                                    dtype=torch.float64))
        assert model._unrank_local is st
        full = _full(adapter, rebuilt, adapter._ego().detach())
        assert float((st.final - full).abs().max()) < 1e-10
        # RecBole's cache is the refreshed final embeddings; its own scores agree
        assert float((model.restore_item_e - full[n_u:]).abs().max()) < 1e-10
        scores = model.full_sort_predict(Interaction({"user_id": users})).view(users.numel(), -1)
        assert float((scores - full[users] @ full[n_u:].T).abs().max()) < 1e-10
    # an edge that is gone already: refused, nothing changed
    before = model.norm_adj_matrix._values().clone()
    assert not adapter.remove_edges(u[:1], i[:1], int(keep.sum()))
    assert torch.equal(model.norm_adj_matrix._values(), before)
    # a parameter change behind the adapter's back makes the local state stale: rebuilt
    with torch.no_grad():
        model.item_embedding.weight[3] += 1.0
    assert get_adapter(model)._fresh_local() is None
    fresh = get_adapter(model).final_embeddings()[1]
    assert float((fresh - _full(adapter, rebuilt, adapter._ego().detach())[n_u:]).abs().max()) < 1e-10


@pytest.mark.parametrize("wide_share", [0.125, 2.0])
def test_lightgcn_request_local_equals_rebuilt_graph_and_needs_no_full_propagation(originals, monkeypatch,
                                                                                    wide_share):
    """One L2UnRank request on a model whose local state is warm: the same parameters as the
    same request where the retained graph is rebuilt and propagated in full (float64), and the
    embeddings are never propagated over the whole graph: with neighbourhoods gathered
    (``wide_share`` 2: no sparse product at all), or with the wide one as a product of |T|
    columns (fewer than the embedding width d)."""
    from recbole_unrank.adapters.lightgcn import LightGCNAdapter, LocalGraph

    monkeypatch.setattr(LocalGraph, "WIDE_SHARE", wide_share)
    config, data, model, u, i = _float64_lightgcn(originals)
    reference = copy.deepcopy(model)
    get_adapter(model).local()  # warm: what a model that is serving requests holds
    _, _, task, method = _single_user_request(config, data, model)
    with ShapeLog() as log:
        local = method(task)
    d = int(model.user_embedding.weight.shape[1])
    sparse = [s for op, s in log.shapes if "sparse" in op]
    if wide_share > 1:
        assert not sparse, "a sparse product ran"
    assert all(s[-1] < d for s in sparse), f"a full propagation of the embeddings ran: {sparse}"
    with monkeypatch.context() as m:
        m.setattr(LightGCNAdapter, "remove_edges", lambda self, *a: False)  # caller rebuilds
        _, _, task_ref, method_ref = _single_user_request(config, data, reference)
        full = method_ref(task_ref)
    assert local.info["calibration"]["step_median"] == pytest.approx(full.info["calibration"]["step_median"], rel=1e-9)
    for (name, a), b in zip(local.model.state_dict().items(), full.model.state_dict().values()):
        assert float((a - b).abs().max()) < 1e-10, name
    fa, fb = get_adapter(local.model).final_embeddings(), get_adapter(full.model).final_embeddings()
    assert float((fa[0] - fb[0]).abs().max()) < 1e-10 and float((fa[1] - fb[1]).abs().max()) < 1e-10


def test_lightgcn_other_users_scores_under_a_step_equal_the_direct_product(originals):
    """The utility guard's other users: the rank-2U form of their scores under a tentative
    step equals scoring the moved final embeddings directly (uniform and per-user steps)."""
    _, _, model, _, _ = _float64_lightgcn(originals)
    adapter = get_adapter(model)
    users, others = torch.tensor([3, 9]), torch.tensor([1, 4, 20, 33])
    gen = torch.Generator().manual_seed(0)
    delta = torch.randn(2, adapter.user_dim(), generator=gen, dtype=torch.float64)
    prepared = adapter.prepare_user_delta(users, delta, others)
    final, cols = adapter._final(), adapter._columns(users)
    n_u = int(model.n_users)
    for scale in (torch.tensor([0.7, 0.7], dtype=torch.float64), torch.tensor([0.2, 3.0], dtype=torch.float64)):
        moved = final + cols @ (scale[:, None] * delta)
        direct = moved[others] @ moved[n_u:].T
        assert float((adapter.other_scores_with_delta(prepared, scale) - direct).abs().max()) < 1e-10
        mine = adapter.scores_with_delta(users, prepared, scale)
        assert float((mine - moved[users] @ moved[n_u:].T).abs().max()) < 1e-10


def test_lightgcn_local_state_survives_a_deep_copy_and_dies_with_a_new_graph(originals):
    _, data, model, u, i = _float64_lightgcn(originals)
    adapter = get_adapter(model)
    adapter.local()
    twin = copy.deepcopy(model)
    assert get_adapter(twin)._fresh_local() is not None
    assert twin._unrank_local.adj is twin.norm_adj_matrix
    keep = torch.ones(u.numel(), dtype=torch.bool)
    keep[:4] = False
    get_adapter(twin).set_graph(u[keep], i[keep])  # a rebuilt graph: the old state is gone
    assert getattr(twin, "_unrank_local", None) is None and twin.restore_user_e is None
    assert get_adapter(model)._fresh_local() is not None  # the original is untouched


# ----------------------------------------------------------------------------------- CUDA
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("model_name", MODELS)
def test_l2unrank_stage_on_cuda(tmp_path, model_name):
    config = make_tiny_config(tmp_path, model_name, gpu_id="0", epochs=2, learning_rate=0.01)
    assert config["device"].type == "cuda"
    run, _ = pipeline.prepare_run(config)
    run.prepare_original()
    row = run.run_method("l2unrank", save=False)
    model = row["_model"]
    assert all(p.device.type == "cuda" for p in model.parameters())
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert row["forget"]["mean_rank"] >= run.rows[0]["forget"]["mean_rank"]
    assert row["forget"]["forget_hit@10"] <= run.rows[0]["forget"]["forget_hit@10"]
    # and one single-user request on the GPU, without a dense users x items matrix
    user, request, task, method = _single_user_request(config, run.data, copy.deepcopy(run.original))
    with ShapeLog() as log:
        result = method(task)
    n_params = sum(p.numel() for p in result.model.parameters() if p.requires_grad)
    assert not log.forbidden(int(result.model.n_users), int(result.model.n_items), n_params)
    assert all(p.device.type == "cuda" for p in result.model.parameters())
