"""Saving a ``.pt2`` program whose convolution weights are channels_last (as panfpn's models run)."""

from __future__ import annotations

import warnings

import torch

from panfpn.deploy.torch_export import save_program


def test_channels_last_weights_save_without_torch_s_warning_and_load_back(tmp_path):
    # tools/export.py printed torch's "UserWarning: No complete tensor found in the group! Returning
    # the first one. This may cause issues when your weights are not on CPU." for every export: torch
    # takes an NHWC weight (not contiguous) for a slice. The weight fills its storage: it loads back equal.
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 8, 3).to(memory_format=torch.channels_last).eval()
    assert not conv.weight.is_contiguous()
    x = torch.rand(1, 3, 10, 12)
    program = torch.export.export(conv, (x,))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        save_program(program, tmp_path / "conv.pt2")
    assert [str(w.message) for w in caught] == []
    loaded = torch.export.load(str(tmp_path / "conv.pt2"))
    with torch.no_grad():
        assert torch.equal(loaded.module()(x), conv(x))
