"""`model.quantize`'s checks, made before anything loads (rewardbooth.models.quantization.check_quantize)."""

import importlib.util

import pytest

from rewardbooth.core.errors import UserError
from rewardbooth.models.quantization import check_quantize


def test_no_quantization_asks_nothing():
    check_quantize("none", "dreambooth", adapters_only=False, cuda=False)


def test_a_missing_backend_names_the_extra(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match=r"needs the torchao package, which is not installed: pip install "
                                        r"'rewardbooth\[quantize\]'"):
        check_quantize("int8", "lora", adapters_only=True, cuda=False)
    with pytest.raises(UserError, match="needs the bitsandbytes package"):
        check_quantize("nf4", "lora", adapters_only=True, cuda=True)


def test_nf4_needs_cuda_and_a_trained_base_is_refused_first():
    with pytest.raises(UserError, match="nf4 .* needs a CUDA GPU"):
        check_quantize("nf4", "lora", adapters_only=True, cuda=False)
    with pytest.raises(UserError, match="freezes the denoiser in 4 bits, but method.name=dreambooth"):
        check_quantize("nf4", "dreambooth", adapters_only=False, cuda=False)
