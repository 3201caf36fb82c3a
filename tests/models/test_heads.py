import pytest
import torch

from simclr.config import build_config
from simclr.errors import UserError
from simclr.models.heads import head_for_version


def test_v1_bn_is_the_official_v1_code_head():
    # google-research/simclr model_util.projection_head: every layer Linear (no bias) + batch
    # norm; ReLU between; the output norm has no shift (center=False).
    head = head_for_version("v1-bn", 64, 32, 16)
    names = [type(m).__name__ for m in head.layers]
    assert names == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d"]
    assert all(m.bias is None for m in head.layers if type(m).__name__ == "Linear")
    assert not head.layers[-1].bias.requires_grad and head.layers[1].bias.requires_grad
    out = head.train()(torch.rand(8, 64))
    # batch norm in train mode: each output dimension has mean 0 over the batch (no shift)
    torch.testing.assert_close(out.mean(0), torch.zeros(16), atol=1e-5, rtol=0)


def test_unknown_head_is_refused():
    with pytest.raises(ValueError, match="v1-bn"):
        head_for_version("v3", 8, None, 4)
    with pytest.raises(UserError, match="model.head must be"):
        build_config({"model": {"head": "v3"}})
