"""recbole_unrank.compat: each patch is shown necessary (the failure without it, in a fresh
interpreter or with the patch removed) and sufficient (RecBole works with it)."""

from __future__ import annotations

import os
import pickle
import textwrap

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from conftest import DATA_PATH

import recbole_unrank  # noqa: F401  (compat patches before RecBole)
from recbole_unrank import compat

CONFIG_SNIPPET = (
    "Config('BPR', 'tiny', config_dict={'data_path': %r, 'gpu_id': '', 'show_progress': False})"
    % str(DATA_PATH)
)


NO_PATCH_CONFIG = f"from recbole.config import Config\n{CONFIG_SNIPPET}\nprint('BUILT')"

# One fresh interpreter with the package imported first: Config builds (numpy patch), then
# LightGCN is built once with dok_matrix._update removed (as on plain scipy >= 1.13) and once
# with it restored. (Two interpreters, not three: each costs seconds of imports.)
WITH_PATCH = textwrap.dedent(
    f"""
    import sys
    import recbole_unrank
    import numpy as np
    import scipy.sparse as sp
    from recbole.config import Config
    config = {CONFIG_SNIPPET}
    assert np.float_ is np.float64
    print('BUILT', config['model'], flush=True)
    from recbole.model.general_recommender import LightGCN
    from recbole_unrank.pipeline import build_config, load_data
    config = build_config('LightGCN', 'tiny', config_dict={{'data_path': {str(DATA_PATH)!r},
        'gpu_id': '', 'checkpoint_dir': sys.argv[1]}})
    data = load_data(config)
    patched = sp.dok_matrix._update
    del sp.dok_matrix._update
    try:
        LightGCN(config, data.train_ds)
        print('LIGHTGCN_WITHOUT_PATCH built')
    except AttributeError as exc:
        print('LIGHTGCN_WITHOUT_PATCH AttributeError:', exc)
    sp.dok_matrix._update = patched
    LightGCN(config, data.train_ds)
    print('LIGHTGCN_WITH_PATCH built')
    """
)


@pytest.fixture(scope="module")
def fresh(py_async, tmp_path_factory):
    """The fresh-interpreter checks, started together at the start of the module (in parallel
    with the in-process tests); each test waits for its own."""
    work = tmp_path_factory.mktemp("fresh")
    runs = {
        "no_patch_config": py_async(NO_PATCH_CONFIG, work),
        "with_patch": py_async(WITH_PATCH, work, [str(work / "saved")]),
    }
    yield runs
    for pending in runs.values():
        pending.result()


@pytest.fixture(scope="module", autouse=True)
def _start_fresh_early(fresh):
    yield


# ------------------------------------------------------------------------------ numpy
def test_numpy_aliases_restored():
    for name in compat.NUMPY_ALIASES:
        assert hasattr(np, name), name
    assert np.float_ is np.float64
    assert np.bool8 is np.bool_
    # (RecBole's own Config.compatibility_settings later rebinds np.float to np.float_.)
    assert np.float in (float, np.float64)
    assert np.int in (int, np.int_)


@pytest.mark.skipif(int(np.__version__.split(".")[0]) < 2, reason="numpy < 2 still has the aliases")
def test_recbole_config_fails_without_numpy_patch(fresh):
    # RecBole alone (no recbole_unrank): Config.compatibility_settings reads np.float_.
    res = fresh["no_patch_config"].result()
    assert res.returncode != 0
    assert "BUILT" not in res.stdout
    assert "AttributeError" in res.stderr
    assert "np.float_" in res.stderr and "removed in the NumPy 2.0 release" in res.stderr


def test_recbole_config_builds_with_package_imported_first(fresh):
    res = fresh["with_patch"].result()
    assert res.returncode == 0, res.stderr[-2000:]
    assert "BUILT BPR" in res.stdout


# ------------------------------------------------------------------------------ torch.load
@pytest.fixture(scope="module")
def bpr_checkpoint(tmp_path_factory, config_maker):
    """A real RecBole checkpoint (keys of Trainer._save_checkpoint, pickled Config) of an
    untrained BPR on tiny."""
    from recbole.model.general_recommender import BPR

    from recbole_unrank.pipeline import load_data

    work = tmp_path_factory.mktemp("torchload")
    config = config_maker(work, "BPR")
    data = load_data(config)
    model = BPR(config, data.train_ds)
    path = work / "BPR-tiny.pth"
    torch.save(
        {
            "config": config,
            "epoch": 0,
            "cur_step": 0,
            "best_valid_score": 0.0,
            "state_dict": model.state_dict(),
            "other_parameter": model.other_parameter(),
            "optimizer": None,
        },
        str(path),
    )
    return path, {k: v.clone() for k, v in model.state_dict().items()}


def test_plain_torch_load_refuses_recbole_checkpoint(bpr_checkpoint):
    # This test module is outside RecBole and the package: torch's safe default holds.
    path, _ = bpr_checkpoint
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        torch.load(str(path))
    with pytest.raises(pickle.UnpicklingError):
        torch.load(str(path), weights_only=True)
    assert "config" in torch.load(str(path), weights_only=False)  # explicit opt-in still works


def test_load_data_and_model_reads_recbole_checkpoint(bpr_checkpoint, in_tmp):
    from recbole.quick_start import load_data_and_model

    path, state = bpr_checkpoint
    config, model, *_ = load_data_and_model(str(path))
    assert config["model"] == "BPR"
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state[name]), name


def test_load_data_and_model_fails_without_torch_patch(bpr_checkpoint, in_tmp, monkeypatch):
    from recbole.quick_start import load_data_and_model

    path, _ = bpr_checkpoint
    monkeypatch.setattr(torch, "load", compat._ORIGINAL_TORCH_LOAD)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_data_and_model(str(path))


def _load_from_module(module_name: str, path, **kwargs):
    """Call torch.load from code whose module ``__name__`` is ``module_name``."""
    namespace = {"__name__": module_name, "torch": torch}
    exec(compile("def load(p, **kw):\n    return torch.load(p, **kw)\n", f"<{module_name}>", "exec"), namespace)
    return namespace["load"](str(path), **kwargs)


@pytest.mark.parametrize("caller", ["thirdparty.loader", "__main__", "recbole_unrank_evil", "recbolex.io"])
def test_torch_load_outside_recbole_keeps_weights_only_default(bpr_checkpoint, caller):
    path, _ = bpr_checkpoint
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        _load_from_module(caller, path)


@pytest.mark.parametrize("caller", ["recbole.trainer.trainer", "recbole_unrank", "recbole_unrank.pipeline"])
def test_torch_load_from_recbole_defaults_weights_only_false(bpr_checkpoint, caller):
    path, _ = bpr_checkpoint
    assert "config" in _load_from_module(caller, path)
    # An explicit weights_only=True is respected even there.
    with pytest.raises(pickle.UnpicklingError):
        _load_from_module(caller, path, weights_only=True)


def test_torch_load_of_plain_tensors_unaffected(tmp_path):
    path = tmp_path / "t.pt"
    torch.save({"w": torch.arange(3.0)}, str(path))
    assert torch.equal(torch.load(str(path))["w"], torch.arange(3.0))


def test_apply_is_idempotent():
    load_before = torch.load
    compat.apply()
    compat.apply()
    assert torch.load is load_before
    assert torch.load.__name__ == "_recbole_torch_load"


# ------------------------------------------------------------------------------ scipy
def test_dok_update_semantics():
    m = sp.dok_matrix((3, 4), dtype=np.float32)
    m._update({(0, 1): 2.0, (2, 3): 5.0})
    m._update({(0, 1): 3.0})
    dense = m.toarray()
    expected = np.zeros((3, 4), dtype=np.float32)
    expected[0, 1], expected[2, 3] = 3.0, 5.0
    np.testing.assert_array_equal(dense, expected)
    assert m.nnz == 2


def test_lightgcn_builds_adjacency_on_tiny(config_maker, tmp_path):
    from recbole.model.general_recommender import LightGCN

    from recbole_unrank.pipeline import load_data

    config = config_maker(tmp_path, "LightGCN")
    data = load_data(config)
    model = LightGCN(config, data.train_ds)
    n_u, n_i = data.train_ds.user_num, data.train_ds.item_num
    # Dense reference: D^-1/2 A D^-1/2 of the bipartite train graph.
    feat = data.train_ds.inter_feat
    users = feat[data.train_ds.uid_field].numpy()
    items = feat[data.train_ds.iid_field].numpy()
    a = np.zeros((n_u + n_i, n_u + n_i))
    a[users, n_u + items] = 1.0
    a[n_u + items, users] = 1.0
    deg = a.sum(1) + 1e-7
    ref = a / np.sqrt(deg)[:, None] / np.sqrt(deg)[None, :]
    got = model.norm_adj_matrix.to_dense().double().numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-7)


@pytest.mark.skipif(
    sp.dok_matrix._update is not compat._dok_update, reason="this scipy has its own dok_matrix._update"
)
def test_lightgcn_fails_without_scipy_patch(fresh):
    res = fresh["with_patch"].result()
    assert res.returncode == 0, res.stderr[-2000:]
    assert (
        "LIGHTGCN_WITHOUT_PATCH AttributeError: 'dok_matrix' object has no attribute '_update'"
        in res.stdout
    )
    assert "LIGHTGCN_WITH_PATCH built" in res.stdout


def test_pop_counts_every_occurrence(config_maker, tmp_path, monkeypatch):
    """RecBole's Pop counts an item once per batch (``item_cnt[item] = item_cnt[item] + 1``);
    with the whole train split in one batch every item would tie. The patch counts them all."""
    from recbole.model.general_recommender.pop import Pop

    from recbole_unrank.pipeline import load_data, make_loaders

    config = config_maker(tmp_path, "Pop", train_batch_size=100000)
    data = load_data(config)
    train, _, _ = make_loaders(config, data)
    expected = torch.bincount(data.train_ds.inter_feat[data.train_ds.iid_field], minlength=data.train_ds.item_num)

    def counts(calculate_loss):
        model = Pop(config, data.train_ds)
        monkeypatch.setattr(Pop, "calculate_loss", calculate_loss)
        for batch in train:
            model.calculate_loss(batch)
        return model.item_cnt.view(-1)

    got = counts(compat._pop_calculate_loss)
    assert torch.equal(got, expected), (got[:10], expected[:10])
    assert not torch.equal(counts(Pop._recbole_calculate_loss), expected)  # RecBole's own: fails


# ------------------------------------------------------------------ CUDA machines, simulated
class _FakeProps:
    total_memory = 80 * 1024**3


def _pretend_cuda(monkeypatch) -> None:
    """This CPU machine as a CUDA one would answer RecBole: CUDA present, and memory queries
    that (like torch's on a CUDA build) refuse a device that is not CUDA."""

    def reserved(device=None):
        if torch.device(device).type != "cuda":
            raise ValueError(f"Expected a cuda device, but got: {device}")
        return 2 * 1024**3

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", reserved)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: _FakeProps())


def test_gpu_usage_of_a_cpu_run_on_a_cuda_machine(monkeypatch, config_maker, tmp_path):
    """RecBole's get_gpu_usage / get_environment fail for a CPU run where CUDA is present;
    patched, the CPU reports no GPU usage and a CUDA device is still measured by RecBole."""
    import recbole.utils as rb_utils
    from recbole.quick_start import quick_start
    from recbole.trainer import trainer

    _pretend_cuda(monkeypatch)
    with pytest.raises(ValueError, match="Expected a cuda device"):
        compat._RECBOLE_GET_GPU_USAGE(torch.device("cpu"))  # RecBole's own: fails
    for module in (rb_utils, trainer, rb_utils.utils):
        assert module.get_gpu_usage(torch.device("cpu")) == compat.NO_GPU_USAGE, module
        assert module.get_gpu_usage(torch.device("cuda")) == "2.00 G/80.00 G", module
    config = config_maker(tmp_path, "BPR")
    assert config["device"].type == "cpu" and config["use_gpu"]
    monkeypatch.setattr("psutil.cpu_percent", lambda interval=None: 0.0)  # skips its 1 s wait
    assert compat.NO_GPU_USAGE in quick_start.get_environment(config).draw()


def test_trainer_epoch_line_of_a_cpu_run_on_a_cuda_machine(monkeypatch, config_maker, tmp_path):
    """RecBole's trainer asks for the GPU's memory after each epoch when ``show_progress`` is
    on and CUDA is present (trainer.py:268): a CPU run trains through it."""
    from recbole.data import create_dataset, data_preparation
    from recbole.model.general_recommender import BPR
    from recbole.trainer import Trainer

    config = config_maker(tmp_path, "BPR", show_progress=True)
    train_loader, _, _ = data_preparation(config, create_dataset(config))
    _pretend_cuda(monkeypatch)
    trainer = Trainer(config, BPR(config, train_loader.dataset))
    assert trainer.gpu_available and trainer.device.type == "cpu"
    trainer._train_epoch(train_loader, 0, show_progress=True)
    monkeypatch.setattr("recbole.trainer.trainer.get_gpu_usage", compat._RECBOLE_GET_GPU_USAGE)
    with pytest.raises(ValueError, match="Expected a cuda device"):
        trainer._train_epoch(train_loader, 1, show_progress=True)  # RecBole's own: fails


@pytest.mark.parametrize("before", [None, "0", "1,2"])
def test_cpu_config_leaves_cuda_visible_devices_alone(monkeypatch, config_maker, tmp_path, before):
    """RecBole's Config sets CUDA_VISIBLE_DEVICES to ``gpu_id``: a CPU config ('') hid every GPU
    from the rest of the process. Patched, it leaves the variable as it was and runs on the CPU."""
    from recbole.config import Config

    def env_after(init_device) -> str | None:
        if before is None:
            monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        else:
            monkeypatch.setenv("CUDA_VISIBLE_DEVICES", before)
        monkeypatch.setattr(Config, "_init_device", init_device)
        config = config_maker(tmp_path, "BPR")
        assert config["device"] == torch.device("cpu")
        return os.environ.get("CUDA_VISIBLE_DEVICES")

    assert env_after(compat._RECBOLE_INIT_DEVICE) == ""  # RecBole's own: the GPUs are hidden
    assert env_after(compat._config_init_device) == before


def test_gpu_config_still_picks_its_gpu(monkeypatch, config_maker, tmp_path):
    """A config with ``gpu_id`` on a machine with CUDA runs on CUDA and makes its GPU visible,
    as RecBole does, also after a CPU config was built in the same process."""
    _pretend_cuda(monkeypatch)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert config_maker(tmp_path, "BPR")["device"].type == "cpu"
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
    config = config_maker(tmp_path, "BPR", gpu_id="1")
    assert config["device"].type == "cuda" and os.environ["CUDA_VISIBLE_DEVICES"] == "1"


@pytest.mark.cuda
def test_cuda_stays_visible_after_a_cpu_config(py, tmp_path):
    """On a CUDA machine: a CPU config built first leaves every GPU to what comes after it."""
    code = textwrap.dedent(
        f"""
        import os
        os.environ.pop('CUDA_VISIBLE_DEVICES', None)
        import recbole_unrank, torch
        from recbole.config import Config
        config = {CONFIG_SNIPPET}
        assert config['device'].type == 'cpu'
        print('COUNT', torch.cuda.device_count())
        """
    )
    res = py(code, tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "COUNT 0" not in res.stdout and "COUNT" in res.stdout
