"""The one device helper (recbole_unrank.device): RecBole's rule for a config, a model's own device."""

import pytest
import torch
from torch import nn

from recbole_unrank.device import config_device, model_device


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
