"""Models: WMF's whole-data loss against a dense reference, the model lookup, and checkpoints of
WMF / NeuMF / LightGCN that RecBole's own ``load_data_and_model`` reloads in a fresh process
with the same scores."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch

import recbole_unrank  # noqa: F401  (compat patches before RecBole)
from recbole_unrank.errors import UnrankError
from recbole_unrank.models import WMF, UnknownModelError, get_model
from recbole_unrank.pipeline import build_config, load_data, make_loaders, save_checkpoint, train_model
from recbole_unrank.request import sample_request, split_train

MODELS = ["WMF", "NeuMF", "LightGCN"]
USERS = [1, 2, 3, 10, 57, 119]

# Scores of ``users`` against every item; the same source runs here and in the fresh process.
SCORE_SOURCE = textwrap.dedent(
    """
    def scores(model, users, uid, iid, n_items):
        import torch
        from recbole.data.interaction import Interaction
        model.eval()
        u = torch.as_tensor(users, dtype=torch.long)
        with torch.no_grad():
            try:
                out = model.full_sort_predict(Interaction({uid: u}))
            except NotImplementedError:  # NeuMF: predict on every (user, item) pair
                out = model.predict(Interaction({
                    uid: u.repeat_interleave(n_items),
                    iid: torch.arange(n_items).repeat(len(users)),
                }))
        return out.view(len(users), n_items).double().tolist()
    """
)
_ns: dict = {}
exec(SCORE_SOURCE, _ns)
scores = _ns["scores"]


def _scores(model, ds):
    return np.asarray(scores(model, USERS, ds.uid_field, ds.iid_field, ds.item_num))


# ------------------------------------------------------------------------------ WMF loss
@pytest.fixture
def wmf_setup(tiny_config):
    config = tiny_config("WMF", embedding_size=8, alpha=3.0, negative_weight=0.2, reg_weight=0.0,
                         train_batch_size=256)
    data = load_data(config)
    torch.manual_seed(0)
    model = WMF(config, data.train_ds).double()
    with torch.no_grad():  # larger than xavier's, so every term of the loss matters
        model.user_embedding.weight.normal_(0, 0.5)
        model.item_embedding.weight.normal_(0, 0.5)
    return config, data, model


def _dense_wmf_loss(model, train_ds, alpha, w0):
    """sum over users with train data and all items of c_ui (r_ui - y_ui)^2, c = 1+alpha
    observed, w0 unobserved (float64)."""
    u = train_ds.inter_feat[train_ds.uid_field].long()
    i = train_ds.inter_feat[train_ds.iid_field].long()
    r = torch.zeros(train_ds.user_num, train_ds.item_num, dtype=torch.float64)
    r[u, i] = 1.0
    c = torch.where(r > 0, torch.full_like(r, 1.0 + alpha), torch.full_like(r, w0))
    y = model.user_embedding.weight @ model.item_embedding.weight.T
    active = torch.zeros(train_ds.user_num, dtype=torch.bool)
    active[u] = True  # a user without train rows never appears in a batch
    return (c * (r - y) ** 2)[active].sum()


def _no_negative_sampling(config) -> bool:
    args = config["train_neg_sample_args"]
    return args is None or args.get("distribution") == "none"


def test_wmf_loss_equals_dense_reference(wmf_setup):
    config, data, model = wmf_setup
    train, _, _ = make_loaders(config, data)
    assert _no_negative_sampling(config)

    total, seen = torch.zeros((), dtype=torch.float64), []
    for batch in train:  # one epoch of all observed pairs, in several batches
        u, i = batch[model.USER_ID], batch[model.ITEM_ID]
        total = total + model.whole_data_loss(u, i)
        seen.append(u * data.train_ds.item_num + i)
    seen = torch.cat(seen)
    assert len(seen) == len(data.train_ds) and seen.unique().numel() == len(seen)  # each pair once
    assert len(data.train_ds) > config["train_batch_size"]  # really split over batches

    dense = _dense_wmf_loss(model, data.train_ds, alpha=3.0, w0=0.2)
    assert total.dtype == torch.float64
    assert total.item() == pytest.approx(dense.item(), rel=1e-10)

    # Same gradients too (what training follows).
    g_batched = torch.autograd.grad(total, [model.user_embedding.weight, model.item_embedding.weight])
    g_dense = torch.autograd.grad(
        _dense_wmf_loss(model, data.train_ds, alpha=3.0, w0=0.2),
        [model.user_embedding.weight, model.item_embedding.weight],
    )
    for a, b in zip(g_batched, g_dense):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_wmf_calculate_loss_is_batch_mean_plus_reg(wmf_setup):
    config, data, model = wmf_setup
    feat = data.train_ds.inter_feat[:50]
    u, i = feat[model.USER_ID], feat[model.ITEM_ID]
    base = model.whole_data_loss(u, i) / 50
    assert model.calculate_loss(feat).item() == pytest.approx(base.item(), rel=1e-12)
    model.reg_weight = 0.1
    reg = model.user_embedding(u).pow(2).sum() + model.item_embedding(i).pow(2).sum()
    assert model.calculate_loss(feat).item() == pytest.approx((base + 0.1 * reg / 50).item(), rel=1e-12)


def test_wmf_config_defaults(tiny_config):
    import yaml

    from recbole_unrank.config import PROPERTIES_DIR

    with open(f"{PROPERTIES_DIR}/model/WMF.yaml", encoding="utf-8") as f:
        defaults = yaml.safe_load(f)
    config = tiny_config("WMF")
    for key in ("embedding_size", "alpha", "negative_weight", "reg_weight"):
        assert float(config[key]) == float(defaults[key]), key
    assert _no_negative_sampling(config)  # WMF sums over all unobserved entries itself


# ------------------------------------------------------------------------------ lookup
def test_lookup_ours_first_then_recbole():
    from recbole.model.general_recommender import LightGCN, NeuMF
    from recbole.utils import get_model as recbole_get_model

    assert get_model("WMF") is WMF
    assert get_model("NeuMF") is NeuMF
    assert get_model("LightGCN") is LightGCN
    # RecBole's own lookup (used by load_data_and_model) also finds WMF.
    assert recbole_get_model("WMF") is WMF


def test_unknown_model_error():
    with pytest.raises(UnknownModelError) as info:
        get_model("NoSuchModel")
    assert isinstance(info.value, ValueError)
    msg = str(info.value)
    assert "NoSuchModel" in msg and "WMF" in msg


def test_build_config_rejects_unknown_and_non_general_models(in_tmp, data_path):
    cfg = {"data_path": str(data_path), "gpu_id": ""}
    with pytest.raises(UnrankError, match="NoSuchModel"):
        build_config("NoSuchModel", "tiny", config_dict=cfg)
    with pytest.raises(UnrankError, match="general"):
        build_config("SASRec", "tiny", config_dict=cfg)


# ------------------------------------------------------------------------------ checkpoints
@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, config_maker):
    """For each model: a checkpoint RecBole's trainer wrote (via pipeline.train_model) and one
    pipeline.save_checkpoint wrote for a changed model built on the retained data (an
    "unlearned" model: for LightGCN, on the retained graph). Scores computed in this process."""
    work = tmp_path_factory.mktemp("models")
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        for name in MODELS:
            config = config_maker(work, name, epochs=1)
            data = load_data(config)
            train, valid, _ = make_loaders(config, data)
            trained_path = str(work / f"{name}-trained.pth")
            model, info = train_model(config, train, valid, path=trained_path, tag=name)
            assert info["epochs"] == 1
            ds = data.train_ds
            entry = {"trained": (trained_path, _scores(model, ds))}

            request = sample_request(ds, "user", user_ratio=0.3, seed=7)
            retain_ds, _ = split_train(ds, request)
            changed = get_model(name)(config, retain_ds)
            changed.load_state_dict(model.state_dict())
            gen = torch.Generator().manual_seed(1)
            with torch.no_grad():
                for p in changed.parameters():
                    p.add_(0.05 * torch.randn(p.shape, generator=gen))
            changed.eval()
            saved_path = str(work / f"{name}-changed.pth")
            save_checkpoint(changed, config, saved_path, {"method": "test"})
            entry["changed"] = (saved_path, _scores(changed, ds))
            if name == "LightGCN":  # the retained graph matters: the full one scores otherwise
                full_graph = get_model(name)(config, ds)
                full_graph.load_state_dict(changed.state_dict())
                entry["changed_full_graph"] = _scores(full_graph, ds)
            entry["ids"] = (ds.uid_field, ds.iid_field, ds.item_num)
            out[name] = entry
    return work, out


@pytest.fixture(scope="module")
def reloaded(checkpoints, py):
    """Every checkpoint reloaded in ONE fresh interpreter with RecBole's load_data_and_model."""
    work, out = checkpoints
    jobs = {f"{name}/{kind}": out[name][kind][0] for name in out for kind in ("trained", "changed")}
    uid, iid, _ = next(iter(out.values()))["ids"]
    code = SCORE_SOURCE + textwrap.dedent(
        f"""
        import json, sys
        import recbole_unrank
        from recbole.quick_start import load_data_and_model
        result = {{}}
        for key, path in json.loads(sys.argv[1]).items():
            config, model, dataset, train_data, *_ = load_data_and_model(path)
            ds = train_data._dataset
            result[key] = {{"model": type(model).__name__,
                           "scores": scores(model, {USERS!r}, ds.uid_field, ds.iid_field, ds.item_num)}}
        print("SCORES " + json.dumps(result))
        """
    )
    res = py(code, work, args=[json.dumps(jobs)])
    assert res.returncode == 0, res.stderr[-3000:]
    line = [ln for ln in res.stdout.splitlines() if ln.startswith("SCORES ")]
    assert line, res.stdout[-2000:]
    return json.loads(line[-1][len("SCORES "):])


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("kind", ["trained", "changed"])
def test_checkpoint_reloads_in_fresh_process(name, kind, checkpoints, reloaded):
    _, out = checkpoints
    got = reloaded[f"{name}/{kind}"]
    assert got["model"] == name
    np.testing.assert_allclose(np.asarray(got["scores"]), out[name][kind][1], rtol=0, atol=1e-5)


def test_lightgcn_checkpoint_carries_retained_graph(checkpoints):
    _, out = checkpoints
    entry = out["LightGCN"]
    assert np.abs(entry["changed_full_graph"] - entry["changed"][1]).max() > 1e-4
    ckpt = torch.load(entry["changed"][0], weights_only=False)
    assert "norm_adj_matrix" in ckpt["other_parameter"]
    assert "restore_user_e" not in ckpt["other_parameter"]
    assert ckpt["unrank"]["method"] == "test" and ckpt["unrank"]["fingerprint"]["dataset"] == "tiny"


# ------------------------------------------------------------------------------ NeuMF all-item scorer
def test_neumf_full_sort_predict_equals_predict_on_every_pair(tiny_config):
    """The all-item scorer this package gives RecBole's NeuMF (split first MLP layer, GMF as
    one product) returns ``predict``'s scores for every (user, item) pair, in eval mode with
    dropout configured, through several user chunks."""
    from recbole.data.interaction import Interaction
    from recbole.model.general_recommender.neumf import NeuMF

    from recbole_unrank.models.neumf_scoring import neumf_full_sort_predict, neumf_logits_all_items

    assert NeuMF.full_sort_predict is neumf_full_sort_predict
    config = tiny_config("NeuMF", mf_embedding_size=8, mlp_embedding_size=8,
                         mlp_hidden_size=[16, 8, 4], dropout_prob=0.3)
    data = load_data(config)
    torch.manual_seed(0)
    model = NeuMF(config, data.train_ds).double().eval()
    with torch.no_grad():  # non-trivial biases, so the split of the first layer is exercised
        for p in model.parameters():
            p.normal_(0, 0.5)
    n_items = data.train_ds.item_num
    users = torch.arange(1, data.train_ds.user_num)
    uid, iid = data.train_ds.uid_field, data.train_ds.iid_field
    fast = model.full_sort_predict(Interaction({uid: users})).view(len(users), n_items)
    slow = model.predict(Interaction({
        uid: users.repeat_interleave(n_items), iid: torch.arange(n_items).repeat(len(users)),
    })).view(len(users), n_items)
    torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-12)
    assert fast.std() > 0.05  # scores really differ across pairs

    # Several user chunks (a budget of one user's hidden units per chunk) give the same logits.
    u_mf, u_mlp = model.user_mf_embedding(users), model.user_mlp_embedding(users)
    whole = neumf_logits_all_items(model, u_mf, u_mlp)
    chunked = neumf_logits_all_items(model, u_mf, u_mlp, budget=n_items * 16)
    torch.testing.assert_close(whole, chunked, rtol=1e-12, atol=1e-12)

    # One head only: no all-item scorer, so RecBole's trainer falls back to predict.
    model.mlp_train = False
    with pytest.raises(NotImplementedError):
        model.full_sort_predict(Interaction({uid: users}))
