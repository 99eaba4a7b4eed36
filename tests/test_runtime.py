"""Device and precision selection, as the config asks for them."""

import os

import pytest
import torch

from mtcli.distributed import World
from mtcli.errors import ConfigError
from mtcli.runtime import (
    ONEDNN_CACHE_VARIABLES,
    Precision,
    cpu_has_bf16,
    limit_onednn_cache,
    resolve_device,
    resolve_precision,
)


def test_cpu_and_auto_devices():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto", World(rank=1, local_rank=1, size=2)).type == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
@pytest.mark.parametrize("name", ["cuda", "cuda:1"])
def test_cuda_without_a_gpu_is_a_one_line_error(name):
    with pytest.raises(ConfigError, match=f"train.device: '{name}' asked for, but no CUDA device is available"):
        resolve_device(name)


def test_precision_choices_on_cpu():
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) == "fp32" and resolve_precision("bf16", cpu) == "bf16"
    assert resolve_precision("auto", cpu) == ("bf16" if cpu_has_bf16() else "fp32")
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        resolve_precision("fp16", cpu)


def test_bf16_autocast_computes_in_bf16_and_keeps_fp32_weights():
    precision = Precision("bf16", torch.device("cpu"))
    layer = torch.nn.Linear(4, 3)
    with precision.autocast():
        out = layer(torch.randn(2, 4))
    assert out.dtype == torch.bfloat16 and layer.weight.dtype == torch.float32
    assert not precision.scaler.is_enabled()  # bf16 needs no loss scaling
    with Precision("fp32", torch.device("cpu")).autocast():
        assert layer(torch.randn(2, 4)).dtype == torch.float32


@pytest.mark.parametrize("user", [None, "ONEDNN_PRIMITIVE_CACHE_CAPACITY", "DNNL_PRIMITIVE_CACHE_CAPACITY"])
def test_the_training_onednn_cache_limit_leaves_a_size_the_user_chose(monkeypatch, user):
    for name in ONEDNN_CACHE_VARIABLES:
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    if user:
        monkeypatch.setenv(user, "500")
    limit_onednn_cache(16)
    expected = {None: "16", "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "500", "DNNL_PRIMITIVE_CACHE_CAPACITY": None}
    assert os.environ.get("ONEDNN_PRIMITIVE_CACHE_CAPACITY") == expected[user]
