"""The one device helper (recbole_unrank.device): RecBole's rule for a config, a model's own device."""

import copy

import pytest
import torch
from conftest import prepared_run
from torch import nn

from recbole_unrank.adapters import get_adapter
from recbole_unrank.api import load_unlearned
from recbole_unrank.checkpoints import save_checkpoint
from recbole_unrank.device import config_device, model_device, move_tensor_attributes
from recbole_unrank.methods import METHODS

MODELS = ["WMF", "BPR", "NeuMF", "LightGCN"]


@pytest.mark.parametrize("gpu_id", ["", None, "  "])
def test_config_without_gpu_id_is_the_cpu(gpu_id):
    assert config_device({"gpu_id": gpu_id}) == torch.device("cpu")


def test_config_with_gpu_id_is_cuda_only_where_cuda_is(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert config_device({"gpu_id": "0"}) == torch.device("cpu")  # a GPU checkpoint on a CPU machine
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert config_device({"gpu_id": "0"}) == torch.device("cuda")
    assert config_device({"gpu_id": 0}) == torch.device("cuda")


def test_model_device_reads_parameters_then_buffers_then_the_default():
    assert model_device(nn.Linear(2, 2)) == torch.device("cpu")
    only_buffer = nn.Module()
    only_buffer.register_buffer("b", torch.zeros(1, device="meta"))
    assert model_device(only_buffer) == torch.device("meta")
    empty = nn.Module()
    assert model_device(empty) == torch.device("cpu")
    assert model_device(empty, "meta") == torch.device("meta")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_model_device_on_cuda():
    assert model_device(nn.Linear(2, 2).cuda()).type == "cuda"
    assert config_device({"gpu_id": "0"}).type == "cuda"


class _Holder(nn.Module):
    """A module with what ``nn.Module.to`` moves (a parameter) and what it leaves (plain tensor
    attributes, a sparse graph, a ``device`` attribute, a submodule's attribute)."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(2))
        self.device = torch.device("cpu")
        self.graph = torch.sparse_coo_tensor(torch.tensor([[0, 1], [1, 0]]), torch.ones(2), (2, 2))
        self.cache = torch.zeros(3)
        self.note = "not a tensor"
        self._private = torch.zeros(1)
        self.child = nn.Module()
        self.child.table = torch.arange(4)


def test_move_tensor_attributes_brings_what_to_leaves_behind():
    """'meta' stands in for another device on a machine without one."""
    model = _Holder().to("meta")
    assert model.graph.device.type == "cpu"  # nn.Module.to leaves it: the bug
    moved = move_tensor_attributes(model)
    assert sorted(moved) == ["cache", "child.table", "graph"]
    assert {model.graph.device.type, model.cache.device.type, model.child.table.device.type} == {"meta"}
    assert model.graph.is_sparse and model.device == torch.device("meta")
    assert model._private.device.type == "cpu" and model.note == "not a tensor"
    assert move_tensor_attributes(model) == []  # nothing left to move
    other = _Holder()  # an explicit device wins over the parameters'
    assert sorted(move_tensor_attributes(other, "meta")) == ["cache", "child.table", "graph"]
    assert other.device == torch.device("meta") and other.weight.device.type == "cpu"
    assert move_tensor_attributes(nn.Module()) == []  # no parameter: no device to follow


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The tiny originals of every model the adapters know, trained on the CPU (1 epoch)."""
    root = tmp_path_factory.mktemp("device")
    return {name: prepared_run(root / name, name) for name in MODELS}


@pytest.mark.parametrize("name", MODELS)
def test_adapter_of_a_moved_model_moves_its_tensors(trained, name):
    """A model moved to another device (here 'meta'), then given to its adapter, has every
    tensor attribute (LightGCN's norm_adj_matrix and caches) on its parameters' device."""
    model = copy.deepcopy(trained[name].original)
    model.to("meta")
    get_adapter(model)
    left = [k for m in model.modules() for k, v in vars(m).items()
            if not k.startswith("_") and isinstance(v, torch.Tensor) and v.device.type != "meta"]
    assert left == [] and model.device.type == "meta", left
    if name == "LightGCN":
        assert model.norm_adj_matrix.device.type == "meta"


def _to(model, device):
    moved = copy.deepcopy(model).to(device)  # nn.Module.to only: the adapter brings the rest
    return moved, get_adapter(moved)


@pytest.mark.cuda
@pytest.mark.parametrize("name", MODELS)
def test_a_model_trained_on_one_device_runs_on_the_other(trained, name, tmp_path):
    """CPU-trained original moved to CUDA: scores agree, LightGCN's graph edits and l2unrank
    run there; the unlearned model saved from CUDA loads and scores on the CPU."""
    run = trained[name]
    _, cpu = _to(run.original, "cpu")
    _, gpu = _to(run.original, "cuda")
    users = torch.arange(1, 6)
    torch.testing.assert_close(gpu.user_scores(users.cuda()).cpu(), cpu.user_scores(users), rtol=1e-4, atol=1e-5)
    if name == "LightGCN":
        ds = run.data.train_ds
        u = ds.inter_feat[ds.uid_field][:3].long()
        i = ds.inter_feat[ds.iid_field][:3].long()
        n_edges = cpu.local().live
        assert cpu.remove_edges(u, i, n_edges) and gpu.remove_edges(u.cuda(), i.cuda(), n_edges)
        torch.testing.assert_close(gpu.user_scores(users.cuda()).cpu(), cpu.user_scores(users), rtol=1e-4, atol=1e-5)
    result = METHODS["l2unrank"]()(run._task(model=copy.deepcopy(run.original).cuda()))
    assert model_device(result.model).type == "cuda"
    path = save_checkpoint(result.model, run.config, str(tmp_path / "unlearned.pth"))
    _, loaded, *_ = load_unlearned(path, gpu_id="")
    assert model_device(loaded).type == "cpu"
    torch.testing.assert_close(get_adapter(loaded).user_scores(users),
                               get_adapter(result.model).user_scores(users.cuda()).cpu(), rtol=1e-4, atol=1e-5)
