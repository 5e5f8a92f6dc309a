"""Checkpoint files: what is trusted, what is checked, and the round trip into RecBole.

Fixtures train on ``tiny`` for one epoch: RecBole's own ``run_recbole`` (BPR, LightGCN,
NeuMF, with a non-default seed) and this package's ``train_model`` / ``save_checkpoint``.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, base_config_dict

from recbole_unrank import api
from recbole_unrank import atomic as A
from recbole_unrank import checkpoints as C
from recbole_unrank import provenance as P
from recbole_unrank import unpickle as U
from recbole_unrank.errors import UnrankError

RECBOLE_MODELS = ["BPR", "LightGCN", "NeuMF"]
OUR_MODELS = ["WMF", "NeuMF", "LightGCN"]


def _recbole_config(work: Path, **overrides) -> dict:
    cfg = {
        "data_path": str(REPO_ROOT / "dataset"), "gpu_id": "", "epochs": 1, "seed": 7,
        "show_progress": False, "eval_batch_size": 409600, "checkpoint_dir": str(work / "saved"),
    }
    cfg.update(overrides)
    return cfg


@pytest.fixture(scope="module")
def recbole_ckpts(tmp_path_factory):
    """Checkpoints RecBole's own run_recbole wrote (seed 7, 1 epoch): {model: path}."""
    from recbole.quick_start import run_recbole

    work = tmp_path_factory.mktemp("recbole_ckpts")
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        for model in RECBOLE_MODELS:
            folder = work / model
            run_recbole(model=model, dataset="tiny", config_dict=_recbole_config(work, checkpoint_dir=str(folder)))
            (path,) = folder.glob(f"{model}-*.pth")
            out[model] = str(path)
    return out


@pytest.fixture(scope="module")
def our_ckpts(tmp_path_factory, config_maker):
    """{model: (trained_path, saved_path)}: train_model's checkpoint and save_checkpoint's."""
    from recbole_unrank.pipeline import load_data, make_loaders, save_checkpoint, train_model

    work = tmp_path_factory.mktemp("our_ckpts")
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        for model in OUR_MODELS:
            config = config_maker(work, model)
            data = load_data(config)
            train, valid, _ = make_loaders(config, data)
            trained = str(work / f"{model}-trained.pth")
            m, _ = train_model(config, train, valid, path=trained)
            saved = save_checkpoint(m, config, str(work / f"{model}-saved.pth"), {"method": "test"})
            out[model] = (trained, saved)
    return out


# ------------------------------------------------------------------------------ restricted reader
@pytest.mark.parametrize("model", RECBOLE_MODELS)
def test_run_recbole_checkpoints_load_restricted(recbole_ckpts, model):
    ckpt = C.read_checkpoint(recbole_ckpts[model])
    assert ckpt["config"]["model"] == model and ckpt["config"]["seed"] == 7
    assert set(ckpt) >= {"config", "state_dict", "optimizer", "epoch", "other_parameter"}


@pytest.mark.parametrize("model", OUR_MODELS)
def test_package_checkpoints_load_restricted_with_fingerprint(our_ckpts, model):
    for path in our_ckpts[model]:
        ckpt = C.read_checkpoint(path)
        fp = ckpt["unrank"]["fingerprint"]
        assert fp["dataset"] == "tiny" and fp["inter_file"] == "tiny.inter"
        assert fp["inter_sha256"] == P._sha256(str(REPO_ROOT / "dataset" / "tiny" / "tiny.inter"))
        assert fp["split"]["seed"] == 2020 and fp["split"]["eval_args"]["order"] == "RO"


class _OpenFile:
    """A pickle payload: unpickling it creates ``path`` (``open(path, 'w')``)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


class _EnsureDir:
    """A payload through a function inside RecBole (``recbole.utils.utils.ensure_dir``)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        from recbole.utils.utils import ensure_dir

        return (ensure_dir, (self.path,))


def _crafted(tmp_path: Path, kind: str) -> tuple[Path, Path]:
    marker = tmp_path / f"pwned-{kind}"
    path = tmp_path / f"evil-{kind}.pth"
    if kind == "raw_pickle":  # not even a torch file: the payload sits in a plain pickle
        with open(path, "wb") as f:
            pickle.dump({"config": _OpenFile(marker), "state_dict": {}}, f, protocol=4)
    elif kind == "torch_zip":  # a torch zip file whose data.pkl holds the payload
        torch.save({"config": _OpenFile(marker), "state_dict": {"w": torch.zeros(2)}}, str(path), pickle_protocol=4)
    elif kind == "recbole_function":
        torch.save({"config": _EnsureDir(marker), "state_dict": {}}, str(path))
    return path, marker


@pytest.mark.parametrize("kind", ["raw_pickle", "torch_zip", "recbole_function"])
def test_crafted_pickle_is_refused_and_never_runs(tmp_path, kind):
    path, marker = _crafted(tmp_path, kind)
    with pytest.raises(UnrankError, match="is refused: loading it needs") as info:
        C.read_checkpoint(str(path))
    assert "\n" not in str(info.value) and "unrank_trust_checkpoint" in str(info.value)
    assert not marker.exists()


def test_trust_loads_the_old_way(tmp_path):
    """The flag acts: with trust the payload runs (the reason it is off by default)."""
    path, marker = _crafted(tmp_path, "torch_zip")
    assert not marker.exists()
    C.read_checkpoint(str(path), trust=True)
    assert marker.exists()


def test_model_class_cannot_be_called_nor_patched(tmp_path):
    """Model classes may only be named: a REDUCE calling one, or a BUILD setting attributes
    of one, is refused."""
    import io

    from recbole.model.general_recommender.bpr import BPR

    class CallModel:
        def __reduce__(self):
            return (BPR, (None, None))

    path = tmp_path / "call.pth"
    torch.save({"config": CallModel(), "state_dict": {}}, str(path))
    with pytest.raises(UnrankError, match="BPR \\(called\\)"):
        C.read_checkpoint(str(path))
    # GLOBAL BPR; state (None, {"predict": 1}); BUILD -> setattr(BPR, "predict", 1) unless refused
    data = b"\x80\x02crecbole.model.general_recommender.bpr\nBPR\nN}U\x07predictK\x01s\x86b."
    with pytest.raises(pickle.UnpicklingError, match="setting attributes"):
        U.RestrictedUnpickler(io.BytesIO(data)).load()
    assert callable(BPR.predict)


def test_cli_refuses_crafted_and_nan_checkpoints_in_one_line(tmp_path, py_async, our_ckpts):
    """Through the command line: exit 2, one stderr line, no payload run, nothing written."""
    evil, marker = _crafted(tmp_path, "torch_zip")
    ckpt = C.read_checkpoint(our_ckpts["WMF"][1])
    ckpt["state_dict"]["item_embedding.weight"][0, 0] = float("nan")
    nan = tmp_path / "nan.pth"
    torch.save(ckpt, str(nan))
    started = {}
    for name, path in (("evil", evil), ("nan", nan)):
        cwd = tmp_path / name
        cwd.mkdir()
        started[name] = (cwd, py_async.argv(
            [sys.executable, str(REPO_ROOT / "run_unrank.py"), "-m", "WMF", "-d", "tiny", "--checkpoint", str(path),
             f"--data_path={REPO_ROOT / 'dataset'}", "--gpu_id=", f"--unrank_output_dir={cwd / 'runs'}"], cwd))
    for name, expected in (("evil", "is refused: loading it needs io.open"),
                           ("nan", "NaN/Inf in state_dict 'item_embedding.weight'")):
        cwd, pending = started[name]
        res = pending.result()
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert res.returncode == 2 and len(lines) == 1 and expected in lines[0], res.stderr[-2000:]
        assert list(cwd.iterdir()) == []  # nothing written in the working directory
    assert not marker.exists()


# ------------------------------------------------------------------------------ NaN / Inf
def test_nan_checkpoint_refused_naming_the_tensor(tmp_path, our_ckpts):
    ckpt = C.read_checkpoint(our_ckpts["WMF"][1])
    ckpt["state_dict"]["item_embedding.weight"][3, 1] = float("nan")
    path = tmp_path / "nan.pth"
    torch.save(ckpt, str(path))
    with pytest.raises(UnrankError, match="NaN/Inf in state_dict 'item_embedding.weight'"):
        C.read_checkpoint(str(path))
    ckpt["state_dict"]["item_embedding.weight"][3, 1] = 0.0
    ckpt["other_parameter"] = {"norm_adj_matrix": torch.tensor([[0.0, math.inf]]).to_sparse()}
    torch.save(ckpt, str(path))
    with pytest.raises(UnrankError, match="other_parameter 'norm_adj_matrix'"):
        C.read_checkpoint(str(path))


def test_nan_checkpoint_refused_before_anything_is_written(tmp_path, our_ckpts, tiny_config):
    from recbole_unrank.pipeline import run_pipeline

    ckpt = C.read_checkpoint(our_ckpts["WMF"][1])
    ckpt["state_dict"]["user_embedding.weight"].fill_(float("inf"))
    path = tmp_path / "inf.pth"
    torch.save(ckpt, str(path))
    config = tiny_config("WMF")
    with pytest.raises(UnrankError, match="user_embedding.weight"):
        run_pipeline(config, checkpoint=str(path))
    assert not os.path.exists(config["unrank_output_dir"])


# ------------------------------------------------------------------------------ provenance
def _shuffled_copy(tmp_path: Path, name: str = "tiny") -> Path:
    """``tiny`` with its item column shuffled: same users, items and shapes, other data."""
    src = REPO_ROOT / "dataset" / "tiny" / "tiny.inter"
    lines = src.read_text(encoding="utf-8").splitlines()
    header, rows = lines[0], [ln.split("\t") for ln in lines[1:]]
    items = [r[1] for r in rows]
    np.random.default_rng(0).shuffle(items)
    folder = tmp_path / "shuffled" / name
    folder.mkdir(parents=True)
    body = "\n".join([header] + ["\t".join([r[0], it, r[2]]) for r, it in zip(rows, items)]) + "\n"
    (folder / f"{name}.inter").write_text(body, encoding="utf-8")
    return folder.parent


def test_shuffled_dataset_refused_by_fingerprint(tmp_path, our_ckpts, tiny_config):
    from recbole_unrank.pipeline import prepare_run

    root = _shuffled_copy(tmp_path)
    config = tiny_config("WMF", data_path=str(root))
    with pytest.raises(UnrankError, match="different tiny.inter") as info:
        prepare_run(config, our_ckpts["WMF"][1])
    assert "\n" not in str(info.value)
    # the same checkpoint on its own data passes
    run, _ = prepare_run(tiny_config("WMF"), our_ckpts["WMF"][1])
    assert run.original is not None


def test_recbole_checkpoint_without_fingerprint_warns_what_is_unchecked(recbole_ckpts, in_tmp, caplog):
    from recbole_unrank.pipeline import build_config

    cfg = base_config_dict(in_tmp)
    cfg.pop("seed")
    config = build_config("BPR", "tiny", config_dict=cfg)
    ckpt = C.read_checkpoint(recbole_ckpts["BPR"])
    P.adopt_checkpoint_config(config, ckpt, "x.pth")
    with caplog.at_level("WARNING", logger="recbole_unrank"):
        P.check_provenance(config, ckpt, "x.pth")
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and "no fingerprint" in warned[0] and "tiny.inter could not be" in warned[0]
    ckpt["config"]["dataset"] = "ml-100k"
    with pytest.raises(UnrankError, match="trained on dataset 'ml-100k'"):
        P.check_provenance(config, ckpt, "x.pth")


# ------------------------------------------------------------------------------ settings
def test_split_and_training_settings_adopted_from_checkpoint(recbole_ckpts, in_tmp, caplog):
    from recbole_unrank.pipeline import build_config

    cfg = base_config_dict(in_tmp)
    for key in ("seed", "epochs"):
        cfg.pop(key)
    cfg["learning_rate"] = 0.01  # set by the user: stays
    config = build_config("BPR", "tiny", config_dict=cfg)
    assert config["seed"] == 2020 and config["epochs"] != 1
    ckpt = C.read_checkpoint(recbole_ckpts["BPR"])
    with caplog.at_level("INFO", logger="recbole_unrank"):
        P.adopt_checkpoint_config(config, ckpt, "x.pth")
    assert config["seed"] == 7 and config["epochs"] == 1 and config["learning_rate"] == 0.01
    assert config["topk"] == [10] and config["valid_metric"] == "MRR@10"  # RecBole's defaults
    assert config["valid_metric_bigger"] is True
    lines = [r.getMessage() for r in caplog.records if "adopted" in r.getMessage()]
    assert len(lines) == 1 and "seed=7" in lines[0] and "epochs=1" in lines[0]
    assert "learning_rate" not in lines[0]


@pytest.mark.parametrize("key,value", [("seed", 2020), ("eval_args", {"split": {"RS": [0.7, 0.2, 0.1]}}),
                                       ("user_inter_num_interval", "[3,inf)")])
def test_explicit_split_mismatch_refused(recbole_ckpts, in_tmp, key, value):
    from recbole_unrank.pipeline import build_config

    cfg = base_config_dict(in_tmp)
    cfg.pop("seed")
    cfg[key] = value
    config = build_config("BPR", "tiny", config_dict=cfg)
    ckpt = C.read_checkpoint(recbole_ckpts["BPR"])
    with pytest.raises(UnrankError, match=f"another split: you set {key}=[^;]*; drop") as info:
        P.adopt_checkpoint_config(config, ckpt, "x.pth")
    assert "\n" not in str(info.value)


def test_split_from_checkpoint_is_recboles_split(recbole_ckpts, in_tmp):
    """After adoption, the test split is the one RecBole's load_data_and_model rebuilds."""
    from recbole.quick_start import load_data_and_model

    from recbole_unrank.pipeline import build_config, load_data

    def pairs(ds) -> set:
        feat = ds.inter_feat
        return set(zip(feat[ds.uid_field].tolist(), feat[ds.iid_field].tolist()))

    cfg = base_config_dict(in_tmp)
    cfg.pop("seed")
    config = build_config("BPR", "tiny", config_dict=cfg)
    before = pairs(load_data(config).test_ds)  # the run's own seed (2020)
    P.adopt_checkpoint_config(config, C.read_checkpoint(recbole_ckpts["BPR"]), "x.pth")
    ours = pairs(load_data(config).test_ds)
    *_, theirs_test = load_data_and_model(recbole_ckpts["BPR"])
    assert ours == pairs(theirs_test._dataset) and ours != before


# ------------------------------------------------------------------------------ graph models
@pytest.mark.parametrize("model", ["NGCF", "SGL", "DMF", "ItemKNN"])
def test_models_keeping_train_data_are_refused(model, tiny_config):
    from recbole_unrank.pipeline import prepare_run

    config = tiny_config(model, unrank_method="l2unrank")
    with pytest.raises(UnrankError, match="keeps the training interactions.*use LightGCN") as info:
        prepare_run(config)
    assert "\n" not in str(info.value)


def test_models_keeping_train_data_pass_with_retraining_methods(tiny_config):
    from recbole_unrank.pipeline import _check_train_data_model

    _check_train_data_model(tiny_config("NGCF"), ["retrain", "sisa", "receraser"])
    with pytest.raises(UnrankError):
        _check_train_data_model(tiny_config("NGCF"), ["retrain", "finetune"])


# ------------------------------------------------------------------------------ atomic writer
def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    A.atomic_text(str(target), "old")

    def broken(tmp):
        Path(tmp).write_text("half", encoding="utf-8")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        A.atomic_write(str(target), broken)
    assert target.read_text(encoding="utf-8") == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


# ------------------------------------------------------------------------------ round trip
@pytest.fixture(scope="module", params=["BPR", "LightGCN"])
def unlearned_run(request, recbole_ckpts, tmp_path_factory):
    """run_unrank from RecBole's own checkpoint (seed 7; the run does not set seed or epochs,
    so both come from the checkpoint), methods l2unrank and sisa (2 shards)."""
    from recbole_unrank.pipeline import build_config, run_pipeline

    model = request.param
    work = tmp_path_factory.mktemp(f"roundtrip_{model}")
    cfg = base_config_dict(work, unrank_methods="[l2unrank,sisa]", unrank_shards=2)
    for key in ("seed", "epochs"):
        cfg.pop(key)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        config = build_config(model, "tiny", config_dict=cfg)
        run = run_pipeline(config, checkpoint=recbole_ckpts[model])
        record = json.loads((Path(run.run_dir) / "results.json").read_text(encoding="utf-8"))
    rows = {r["method"]: r for r in record["rows"]}
    models = {r["method"]: r["_model"] for r in run.rows if "_model" in r}
    return work, model, rows, models


def _recbole_evaluate(config, model, test_data) -> dict:
    from recbole.trainer import Trainer

    return dict(Trainer(config, model).evaluate(test_data, load_best_model=False, show_progress=False))


@pytest.mark.parametrize("method", ["l2unrank", "sisa"])
def test_load_unlearned_reproduces_results_json(unlearned_run, method):
    work, model, rows, _ = unlearned_run
    row = rows[method]
    assert rows["original"]["test"].keys() == row["test"].keys()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        config, unlearned, dataset, train_data, valid_data, test_data = api.load_unlearned(row["checkpoint"])
        got = _recbole_evaluate(config, unlearned, test_data)
    assert config["seed"] == 7  # the split of RecBole's checkpoint, not the package default
    assert set(got) == set(row["test"])
    for key, value in row["test"].items():
        assert got[key] == pytest.approx(round(value, 4), abs=1e-12), key


def test_recbole_own_loader_keeps_the_full_train_split(unlearned_run):
    """Why load_unlearned exists: load_data_and_model's train split (the history it masks)
    still holds the forgotten pairs; load_unlearned's does not."""
    from recbole.quick_start import load_data_and_model

    work, _, rows, _ = unlearned_run
    path = rows["l2unrank"]["checkpoint"]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        *_, full_train, _, _ = load_data_and_model(path)
        *_, retained, _, _ = api.load_unlearned(path)
    pairs = C.read_checkpoint(path)["unrank"]["request"]["pairs"]
    assert len(full_train._dataset) - len(retained._dataset) == pairs > 0


def test_unlearned_checkpoint_carries_request_and_retained_split(unlearned_run):
    work, _, rows, _ = unlearned_run
    ckpt = C.read_checkpoint(rows["l2unrank"]["checkpoint"])
    req = ckpt["unrank"]["request"]
    assert req["pairs"] == len(req["user_tokens"]) == len(req["item_tokens"]) == len(req["train_rows"]) > 0
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        *_, train_data, _, _ = api.load_unlearned(rows["l2unrank"]["checkpoint"])
    ds = train_data._dataset
    kept = set(zip(ds.id2token(ds.uid_field, ds.inter_feat[ds.uid_field]).tolist(),
                   ds.id2token(ds.iid_field, ds.inter_feat[ds.iid_field]).tolist()))
    assert not kept & set(zip(req["user_tokens"], req["item_tokens"]))


def test_recbole_resumes_training_from_unlearned_checkpoint(unlearned_run):
    from recbole.trainer import Trainer

    work, _, rows, _ = unlearned_run
    path = rows["l2unrank"]["checkpoint"]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        config, model, _, train_data, valid_data, _ = api.load_unlearned(path)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        config["epochs"] = 1
        trainer = Trainer(config, model)
        trainer.resume_checkpoint(path)
        assert trainer.start_epoch == 0 and trainer.cur_step == 0
        trainer.fit(train_data, valid_data, saved=False, show_progress=False)
    after = model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point() and not v.is_sparse)


def test_ensemble_is_one_recbole_checkpoint(unlearned_run):
    """SISA's ensemble loads with RecBole's own load_data_and_model and Trainer.evaluate
    scores it; its scores are the in-memory ensemble's."""
    from recbole.data.interaction import Interaction
    from recbole.quick_start import load_data_and_model

    from recbole_unrank.models import ShardEnsemble

    work, model_name, rows, models = unlearned_run
    path = rows["sisa"]["checkpoint"]
    assert sorted(p.name for p in Path(path).parent.glob("*sisa*")) == [Path(path).name]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        config, model, dataset, train_data, valid_data, test_data = load_data_and_model(path)
        got = _recbole_evaluate(config, model, test_data)
    assert isinstance(model, ShardEnsemble) and config["ensemble_model"] == model_name
    assert len(model.models) == 2 and set(got) == set(rows["sisa"]["test"])
    assert all(0.0 <= v <= 1.0 for v in got.values())
    users = torch.arange(1, 9)
    inter = Interaction({model.USER_ID: users})
    np.testing.assert_allclose(model.full_sort_predict(inter).numpy(),
                               models["sisa"].full_sort_predict(inter).numpy(), rtol=0, atol=1e-5)
    if model_name == "LightGCN":  # each sub-model keeps its own shard's graph
        a, b = (m.norm_adj_matrix.coalesce() for m in model.models)
        assert a.values().numel() != b.values().numel() or not torch.equal(a.indices(), b.indices())


# ------------------------------------------------------------------------------ devices
def _cuda_tagged_copy(src: str, dst: Path) -> None:
    """Re-save ``src`` as a GPU machine writes it: every storage tagged ``cuda:0`` and the
    config's device CUDA (a CPU machine cannot make real CUDA tensors)."""
    ckpt = C.read_checkpoint(src)
    ckpt["config"]["device"] = torch.device("cuda")
    ckpt["config"]["gpu_id"] = "0"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        torch.save(ckpt, str(dst), pickle_protocol=4)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CPU machine's view of a CUDA checkpoint")
def test_cuda_checkpoint_loads_on_cpu_machine(unlearned_run, tmp_path):
    work, model_name, rows, _ = unlearned_run
    dst = tmp_path / "cuda.pth"
    _cuda_tagged_copy(rows["l2unrank"]["checkpoint"], dst)
    with pytest.raises(RuntimeError, match="CUDA"):  # what a plain torch.load does here
        torch.load(str(dst), weights_only=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        config, model, *_, test_data = api.load_unlearned(str(dst))
        got = _recbole_evaluate(config, model, test_data)
    assert config["device"].type == "cpu"
    for key, value in rows["l2unrank"]["test"].items():
        assert got[key] == pytest.approx(round(value, 4), abs=1e-12), key


def test_other_parameter_moves_to_model_device(unlearned_run):
    """The adjacency follows the model (a CPU-saved graph on a CUDA model, and back)."""
    import copy

    from recbole_unrank.adapters import get_adapter

    work, model_name, rows, models = unlearned_run
    if model_name != "LightGCN":
        pytest.skip("LightGCN only")
    ckpt = C.read_checkpoint(rows["l2unrank"]["checkpoint"])
    model = copy.deepcopy(models["l2unrank"]).to("meta")  # any device other than the tensors'
    get_adapter(model).load_extras({"norm_adj_matrix": ckpt["other_parameter"]["norm_adj_matrix"].to_dense()})
    assert model.norm_adj_matrix.device.type == "meta"


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_lightgcn_cpu_checkpoint_runs_on_cuda(unlearned_run):
    work, model_name, rows, _ = unlearned_run
    if model_name != "LightGCN":
        pytest.skip("LightGCN only")
    path = rows["l2unrank"]["checkpoint"]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        config, model, *_, test_data = api.load_unlearned(path, gpu_id="0")
        assert model.norm_adj_matrix.device.type == "cuda"
        got = _recbole_evaluate(config, model, test_data)
    for key, value in rows["l2unrank"]["test"].items():
        assert got[key] == pytest.approx(value, abs=2e-3), key


def test_second_request_on_unlearned_checkpoint_keeps_the_first_forgotten(unlearned_run, tmp_path):
    """An unlearned checkpoint as --checkpoint: the pairs it forgot stay out of the train split
    (not retrained on, not counted as history), and the new checkpoint carries both requests."""
    from recbole_unrank.pipeline import build_config, run_pipeline

    work, model, rows, _ = unlearned_run
    first = rows["l2unrank"]["checkpoint"]
    cfg = base_config_dict(tmp_path, unrank_method="l2unrank", unrank_request="user", unrank_user_ratio=0.2)
    for key in ("seed", "epochs"):
        cfg.pop(key)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        run = run_pipeline(build_config(model, "tiny", config_dict=cfg), checkpoint=first)
        second = json.loads((Path(run.run_dir) / "results.json").read_text(encoding="utf-8"))["rows"][-1]
        done1 = C.read_checkpoint(first)["unrank"]["request"]
        done2 = C.read_checkpoint(second["checkpoint"])["unrank"]["request"]
        assert done2["forgotten_before"] == done1["pairs"]
        assert set(done1["train_rows"]) < set(done2["train_rows"])
        assert len(done2["train_rows"]) == done1["pairs"] + done2["pairs"]
        assert len(run.data.train_ds) == len(run.data.full_train_ds) - done1["pairs"]
        config, unlearned, *_, train_data, _, test_data = api.load_unlearned(second["checkpoint"])
        got = _recbole_evaluate(config, unlearned, test_data)
    assert len(train_data._dataset) == len(run.data.full_train_ds) - len(done2["train_rows"])
    for key, value in second["test"].items():
        assert got[key] == pytest.approx(round(value, 4), abs=1e-12), key


def test_ensemble_checkpoint_refused_as_original(unlearned_run, tmp_path):
    from recbole_unrank.pipeline import build_config, prepare_run

    work, model, rows, _ = unlearned_run
    cfg = base_config_dict(tmp_path)
    cfg.pop("seed")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        with pytest.raises(UnrankError, match="shard ensemble"):
            prepare_run(build_config(model, "tiny", config_dict=cfg), rows["sisa"]["checkpoint"])
        with pytest.raises(UnrankError, match="ShardEnsemble is how sisa/receraser save"):
            build_config("ShardEnsemble", "tiny", config_dict=cfg)


def test_trust_key_acts_through_the_pipeline(tmp_path, tiny_config):
    from recbole_unrank.pipeline import prepare_run

    path, marker = _crafted(tmp_path, "torch_zip")
    with pytest.raises(UnrankError, match="is refused"):
        prepare_run(tiny_config("WMF"), str(path))
    assert not marker.exists()
    with pytest.raises(UnrankError, match="not a RecBole checkpoint"):  # its "config" is a file object
        prepare_run(tiny_config("WMF", unrank_trust_checkpoint=True), str(path))
    assert marker.exists()


def test_ml100k_with_shuffled_items_refused(tmp_path, in_tmp):
    """ml-100k's item column shuffled (same users, items, shapes) in a copy of the dataset:
    refused in one line, for a package checkpoint and for one without a fingerprint."""
    import recbole

    from recbole_unrank.models import WMF
    from recbole_unrank.pipeline import build_config, load_data, prepare_run

    cfg = base_config_dict(in_tmp)
    config = build_config("WMF", "ml-100k", config_dict=cfg)
    data = load_data(config)
    path = C.save_checkpoint(WMF(config, data.train_ds), config, str(tmp_path / "WMF-ml-100k.pth"))
    src = Path(recbole.__file__).parent / "dataset_example" / "ml-100k" / "ml-100k.inter"
    lines = src.read_text(encoding="utf-8").splitlines()
    rows = [ln.split("\t") for ln in lines[1:]]
    items = [r[1] for r in rows]
    np.random.default_rng(0).shuffle(items)
    copy = tmp_path / "data" / "ml-100k-shuffled"
    copy.mkdir(parents=True)
    (copy / "ml-100k-shuffled.inter").write_text(
        "\n".join([lines[0]] + ["\t".join([r[0], it, *r[2:]]) for r, it in zip(rows, items)]) + "\n", encoding="utf-8")
    shuffled = build_config("WMF", "ml-100k-shuffled", config_dict={**cfg, "data_path": str(tmp_path / "data")})
    with pytest.raises(UnrankError, match="trained on dataset 'ml-100k', not 'ml-100k-shuffled'") as info:
        prepare_run(shuffled, path)
    assert "\n" not in str(info.value)
    ckpt = C.read_checkpoint(path)
    del ckpt["unrank"]  # as RecBole writes it: no fingerprint
    bare = tmp_path / "bare.pth"
    torch.save(ckpt, str(bare))
    with pytest.raises(UnrankError, match="trained on dataset 'ml-100k'"):
        prepare_run(shuffled, str(bare))


# ------------------------------------------------------------------------------ RecBole's own loads
def test_recbole_load_data_and_model_refuses_crafted_pickle(tmp_path, in_tmp, monkeypatch):
    """After ``import recbole_unrank``, RecBole's own torch.load calls go through the same
    allow-list; ``RECBOLE_UNRANK_TRUST_CHECKPOINTS=1`` restores RecBole's full unpickling."""
    from recbole.quick_start import load_data_and_model

    from recbole_unrank import compat

    path, marker = _crafted(tmp_path, "torch_zip")
    monkeypatch.delenv(compat.TRUST_ENV, raising=False)
    with pytest.raises(U.UntrustedGlobal, match=f"is refused: loading it needs io.open.*{compat.TRUST_ENV}=1"):
        load_data_and_model(str(path))
    assert not marker.exists()
    monkeypatch.setenv(compat.TRUST_ENV, "1")
    with pytest.raises(Exception):  # noqa: B017 - the payload ran; what it returned is no checkpoint
        load_data_and_model(str(path))
    assert marker.exists()


class CustomBPR(__import__("recbole.model.general_recommender.bpr", fromlist=["BPR"]).BPR):
    """A model class of the running program (not inside RecBole or this package)."""


def test_model_class_of_running_program_loads_but_nothing_is_imported(tmp_path, our_ckpts):
    ckpt = C.read_checkpoint(our_ckpts["WMF"][1])
    ckpt["config"].model_class = CustomBPR
    path = tmp_path / "custom.pth"
    torch.save(ckpt, str(path))
    assert C.read_checkpoint(str(path))["config"].model_class is CustomBPR
    # a global of a module that is not imported yet is refused without importing it
    # ("this" prints the Zen of Python when imported)
    assert "this" not in sys.modules
    path.write_bytes(b"\x80\x02cthis\nCustomBPR\n.")
    with pytest.raises(UnrankError, match="needs this.CustomBPR"):
        C.read_checkpoint(str(path))
    assert "this" not in sys.modules


def test_container_opcodes_fill_builtin_containers_only():
    """APPENDS / SETITEMS on an allowed non-container object would call its attributes."""
    import io

    # NEWOBJ an empty Config, then SETITEMS on it (Config.__setitem__) / APPENDS (its .extend)
    head = b"\x80\x02crecbole.config.configurator\nConfig\n)\x81"
    for body, opcode in ((b"(U\x01kK\x01u.", "SETITEMS"), (b"(K\x01e.", "APPENDS")):
        with pytest.raises(pickle.UnpicklingError, match=f"{opcode} on a Config"):
            U.RestrictedUnpickler(io.BytesIO(head + body)).load()
    # the same opcodes on builtin containers load
    assert U.RestrictedUnpickler(io.BytesIO(b"\x80\x02}(U\x01kK\x01u.")).load() == {"k": 1}
    assert U.RestrictedUnpickler(io.BytesIO(b"\x80\x02](K\x01K\x02e.")).load() == [1, 2]
