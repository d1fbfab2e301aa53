"""Official Mask2Former Swin checkpoints load strictly by name and give the official backbone outputs.

The official checkpoint is written here from the official module structure
(facebookresearch/Mask2Former ``mask2former/modeling/backbone/swin.py``: ``D2SwinTransformer`` =
``patch_embed`` (4x4 conv + LayerNorm), ``layers.{i}`` (``blocks.{j}``: ``norm1``,
``attn.relative_position_bias_table`` [(2w-1)^2, heads], ``attn.relative_position_index`` [w^2, w^2],
``attn.qkv``, ``attn.proj``, ``norm2``, ``mlp.fc1`` / ``fc2``; ``downsample.reduction`` / ``norm``
for i < 3), ``norm0..norm3`` on the outputs; no absolute position embedding), in its state-dict
order, with seeded random values; no download. ``official_swin_forward`` below recomputes the
backbone from those tensors alone, written from the official forward (padding, cyclic shift with the
-100 region mask, window attention with the relative position bias, patch merging in the order
[0::2, 0::2], [1::2, 0::2], [0::2, 1::2], [1::2, 1::2], output LayerNorms), not through our modules.

torchvision's own window attention skips the cyclic shift along a side whose padded map is a single
window, the official code never does: the configs set ``arch.always_shift`` (panfpn/modeling/swin_windows.py),
and plain torchvision attention is checked to differ exactly there. Inputs whose sides are not
multiples of 4 are cropped by torchvision's patch embedding and padded by the official one; the
model always pads its input to a multiple of 32 (docs/mask2former.md).
"""

import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from modeling_helpers import compose_model_config, make_batch
from test_mask2former_weights import official_head_shapes

from panfpn.modeling.build import instantiate_model
from panfpn.modeling.mask2former.official_weights import official_name
from panfpn.modeling.weights import WeightsError, load_weights

TINY = dict(embed_dim=24, depths=[2, 2, 2, 2], num_heads=[1, 2, 3, 4], window_size=7)  # a shifted block per stage
# Official configs/coco/panoptic-segmentation/swin/*.yaml (MODEL.SWIN.*, NUM_OBJECT_QUERIES)
SWIN_T = dict(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7)
SWIN_L = dict(embed_dim=192, depths=[2, 2, 18, 2], num_heads=[6, 12, 24, 48], window_size=12)
IMAGENET_MEAN = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)


def official_position_index(w):
    """WindowAttention.relative_position_index of the official code: [w*w, w*w]."""
    ys, xs = torch.meshgrid(torch.arange(w), torch.arange(w), indexing="ij")
    coords = torch.stack([ys.flatten(), xs.flatten()])  # 2, N
    rel = coords[:, :, None] - coords[:, None, :]  # 2, N, N
    return (rel[0] + w - 1) * (2 * w - 1) + (rel[1] + w - 1)


def official_swin_shapes(embed_dim, depths, num_heads, window_size):
    """``backbone.*`` names and shapes of D2SwinTransformer, in its state-dict order."""
    c, w = embed_dim, window_size
    s = {"backbone.patch_embed.proj.weight": (c, 3, 4, 4), "backbone.patch_embed.proj.bias": (c,),
         "backbone.patch_embed.norm.weight": (c,), "backbone.patch_embed.norm.bias": (c,)}
    for i, (depth, heads) in enumerate(zip(depths, num_heads)):
        dim = c * 2 ** i
        for j in range(depth):
            p = f"backbone.layers.{i}.blocks.{j}"
            s |= {f"{p}.norm1.weight": (dim,), f"{p}.norm1.bias": (dim,),
                  f"{p}.attn.relative_position_bias_table": ((2 * w - 1) ** 2, heads),
                  f"{p}.attn.relative_position_index": (w * w, w * w),
                  f"{p}.attn.qkv.weight": (3 * dim, dim), f"{p}.attn.qkv.bias": (3 * dim,),
                  f"{p}.attn.proj.weight": (dim, dim), f"{p}.attn.proj.bias": (dim,),
                  f"{p}.norm2.weight": (dim,), f"{p}.norm2.bias": (dim,),
                  f"{p}.mlp.fc1.weight": (4 * dim, dim), f"{p}.mlp.fc1.bias": (4 * dim,),
                  f"{p}.mlp.fc2.weight": (dim, 4 * dim), f"{p}.mlp.fc2.bias": (dim,)}
        if i < len(depths) - 1:
            p = f"backbone.layers.{i}.downsample"
            s |= {f"{p}.reduction.weight": (2 * dim, 4 * dim), f"{p}.norm.weight": (4 * dim,),
                  f"{p}.norm.bias": (4 * dim,)}
    for i in range(len(depths)):
        s |= {f"backbone.norm{i}.weight": (c * 2 ** i,), f"backbone.norm{i}.bias": (c * 2 ** i,)}
    return s


def official_swin_model_shapes(arch, num_classes=133, queries=100, d=256):
    channels = [arch["embed_dim"] * 2 ** i for i in range(4)]
    return {**official_swin_shapes(**arch), **official_head_shapes(channels, num_classes, queries, d)}


def official_swin_state(arch, model, seed=0):
    """Seeded random tensors under the official names (fan-in scaled; norm scales ~1; the position
    indices as the official code computes them): the Swin backbone from ``official_swin_shapes``,
    the heads (``sem_seg_head.*``, whose names test_mask2former_weights.py checks) in ``model``'s
    small shapes, then the criterion's class weights."""
    g = np.random.default_rng(seed)
    index = official_position_index(arch["window_size"]).numpy()
    heads = {official_name(k): tuple(v.shape) for k, v in model.state_dict().items()
             if k.startswith(("pixel_decoder.", "predictor."))}
    shapes = {**official_swin_shapes(**arch), **heads,
              "criterion.empty_weight": (model.predictor.class_embed.weight.shape[0],)}
    state = {}
    for name, shape in shapes.items():
        if name.endswith("relative_position_index"):
            state[name] = index.copy()
            continue
        if len(shape) > 1 and not name.endswith("bias_table"):
            x = g.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))
        else:
            x = 0.2 * g.standard_normal(shape) + (1.0 if name.endswith("weight") else 0.0)
        state[name] = x.astype(np.float32)
    return state


def _learnable(shapes):
    """The official model's parameters: all but the position index buffers and the criterion's weights."""
    return sum(int(np.prod(v)) for k, v in shapes.items()
               if not k.endswith("relative_position_index") and k != "criterion.empty_weight")


def _tiny_model(arch=TINY, always_shift=True, data="coco_panoptic"):
    torch.manual_seed(0)
    dims = (f"embed_dim:{arch['embed_dim']},depths:{arch['depths']},num_heads:{arch['num_heads']},"
            f"window_size:{arch['window_size']},stochastic_depth_prob:0.3,always_shift:{always_shift}").replace(" ", "")
    overrides = ("model.backbone.name=swin", "model.backbone.depth=null", "model.backbone.norm=native",
                 "+model.backbone.out_norms=true", f"+model.backbone.arch={{{dims}}}")
    return instantiate_model(compose_model_config("mask2former_small", data, overrides)).eval()


def _write(state, path):
    with open(path, "wb") as f:
        pickle.dump({"model": state, "__author__": "FAIR", "matching_heuristics": True}, f)
    return str(path)


# --- the reference: the official Swin forward in plain torch ops --------------------------------------
def _t(state, name):
    return torch.from_numpy(state[name])


def _ln(state, x, prefix):
    return F.layer_norm(x, x.shape[-1:], _t(state, f"{prefix}.weight"), _t(state, f"{prefix}.bias"), 1e-5)


def _lin(state, x, prefix, bias=True):
    return F.linear(x, _t(state, f"{prefix}.weight"), _t(state, f"{prefix}.bias") if bias else None)


def _windows(x, w):
    """[B, H, W, C] (H, W multiples of w) -> [B * nW, w*w, C], windows in row-major order."""
    b, h, wd, c = x.shape
    return x.view(b, h // w, w, wd // w, w, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, w * w, c)


def _unwindows(x, w, b, h, wd):
    c = x.shape[-1]
    return x.view(b, h // w, wd // w, w, w, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h, wd, c)


def _shift_mask(hp, wp, w, shift):
    """BasicLayer's mask: 0 within a region of the shifted map, -100 across regions; [nW, N, N]."""
    regions = torch.zeros(1, hp, wp, 1)
    cuts = (slice(0, -w), slice(-w, -shift), slice(-shift, None))
    for n, (hs, ws) in enumerate((hs, ws) for hs in cuts for ws in cuts):
        regions[:, hs, ws, :] = n
    ids = _windows(regions, w).squeeze(-1)
    diff = ids[:, None, :] - ids[:, :, None]
    return torch.where(diff != 0, torch.tensor(-100.0), torch.tensor(0.0))


def _block(state, p, x, h, wd, heads, w, shift):
    """SwinTransformerBlock.forward on tokens [B, H*W, C]."""
    b, _, c = x.shape
    y = _ln(state, x, f"{p}.norm1").view(b, h, wd, c)
    y = F.pad(y, (0, 0, 0, (w - wd % w) % w, 0, (w - h % w) % w))
    hp, wp = y.shape[1:3]
    if shift:
        y = torch.roll(y, (-shift, -shift), (1, 2))
    win = _windows(y, w)
    n = w * w
    qkv = _lin(state, win, f"{p}.attn.qkv").reshape(-1, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0] * (c // heads) ** -0.5, qkv[1], qkv[2]
    table = _t(state, f"{p}.attn.relative_position_bias_table")
    bias = table[_t(state, f"{p}.attn.relative_position_index").reshape(-1)].view(n, n, heads).permute(2, 0, 1)
    attn = q @ k.transpose(-2, -1) + bias[None]
    if shift:
        mask = _shift_mask(hp, wp, w, shift)
        attn = (attn.view(-1, mask.shape[0], heads, n, n) + mask[None, :, None]).view(-1, heads, n, n)
    out = (attn.softmax(-1) @ v).transpose(1, 2).reshape(-1, n, c)
    y = _unwindows(_lin(state, out, f"{p}.attn.proj"), w, b, hp, wp)
    if shift:
        y = torch.roll(y, (shift, shift), (1, 2))
    x = x + y[:, :h, :wd].reshape(b, h * wd, c)
    hidden = F.gelu(_lin(state, _ln(state, x, f"{p}.norm2"), f"{p}.mlp.fc1"))
    return x + _lin(state, hidden, f"{p}.mlp.fc2")


def _merge(state, p, x, h, wd):
    """PatchMerging.forward: 2x2 neighbours concatenated, LayerNorm, linear 4C -> 2C."""
    b, _, c = x.shape
    y = F.pad(x.view(b, h, wd, c), (0, 0, 0, wd % 2, 0, h % 2))
    y = torch.cat([y[:, 0::2, 0::2], y[:, 1::2, 0::2], y[:, 0::2, 1::2], y[:, 1::2, 1::2]], -1)
    y = _ln(state, y.reshape(b, -1, 4 * c), f"{p}.norm")
    return _lin(state, y, f"{p}.reduction", bias=False)


def official_swin_forward(state, x, *, depths, num_heads, window_size, **_):
    """D2SwinTransformer.forward (eval): normalised [B, 3, H, W] -> res2..res5, [B, C_i, H_i, W_i]."""
    x = F.pad(x, (0, -x.shape[-1] % 4, 0, -x.shape[-2] % 4))
    x = F.conv2d(x, _t(state, "backbone.patch_embed.proj.weight"), _t(state, "backbone.patch_embed.proj.bias"),
                 stride=4)
    b, _, h, wd = x.shape
    x = _ln(state, x.flatten(2).transpose(1, 2), "backbone.patch_embed.norm")
    outs = []
    for i, (depth, heads) in enumerate(zip(depths, num_heads)):
        for j in range(depth):
            x = _block(state, f"backbone.layers.{i}.blocks.{j}", x, h, wd, heads, window_size,
                       0 if j % 2 == 0 else window_size // 2)
        out = _ln(state, x, f"backbone.norm{i}")
        outs.append(out.view(b, h, wd, -1).permute(0, 3, 1, 2))
        if i < len(depths) - 1:
            x = _merge(state, f"backbone.layers.{i}.downsample", x, h, wd)
            h, wd = (h + 1) // 2, (wd + 1) // 2
    return outs


# --- tests --------------------------------------------------------------------------------------------
def _images(h, w, seed=1):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (2, 3, h, w), generator=g, dtype=torch.uint8)
    return (images.float() - IMAGENET_MEAN) / IMAGENET_STD


def _max_rel_err(ours, ref):
    return max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(ours, ref))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny Swin model with an official checkpoint loaded strictly, and that checkpoint."""
    model = _tiny_model()
    state = official_swin_state(TINY, model)
    report = load_weights(model, _write(state, tmp_path_factory.mktemp("swin") / "model_final.pkl"))
    assert report.complete and report.format == "official Mask2Former"
    return model, state


@pytest.mark.parametrize("hw", [(64, 64), (96, 128), (224, 320), (260, 292)])
def test_backbone_outputs_match_the_official_forward(tiny, hw):
    """Four outputs (strides 4..32) of our backbone = the official forward of the same tensors.
    64x64 / 96x128: the stride 16 / 32 maps are one 7x7 window (shifted and masked as officially);
    224x320: the stride-32 map 7x10 is one window high; 260x292: maps 65x73 -> 33x37 -> 17x19 -> 9x10,
    odd sides (patch-merging padding) and no side a multiple of the window (window padding)."""
    model, state = tiny
    x = _images(*hw)
    with torch.no_grad():
        ours = model.backbone(x)
    ref = official_swin_forward(state, x, **TINY)
    assert [tuple(o.shape) for o in ours] == [tuple(r.shape) for r in ref]
    assert [o.shape[1] for o in ours] == [24, 48, 96, 192]
    assert _max_rel_err(ours, ref) < 1e-4


def test_model_forward_feeds_the_official_outputs_to_the_pixel_decoder(tiny):
    """Inside model(batch) (uint8 input, normalised with the ImageNet mean / std the load sets) the
    pixel decoder receives the official backbone outputs, output norms included."""
    model, state = tiny
    images = torch.randint(0, 256, (1, 3, 96, 128), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)
    seen = {}
    hook = model.pixel_decoder.register_forward_pre_hook(lambda m, a: seen.__setitem__("features", a[0]))
    try:
        with torch.no_grad():
            model({"images": images, "image_sizes": [(96, 128)], "orig_sizes": [(96, 128)]})
    finally:
        hook.remove()
    ref = official_swin_forward(state, (images.float() - IMAGENET_MEAN) / IMAGENET_STD, **TINY)
    assert _max_rel_err(seen["features"], ref) < 1e-4


def test_the_reference_sees_a_wrong_merge_order_and_missing_output_norms(tiny, tmp_path):
    """Negative controls: the comparison fails for x1/x2 swapped in a patch merging, and for a
    backbone whose output norms are not applied."""
    model, state = tiny
    x = _images(96, 128)
    ref = official_swin_forward(state, x, **TINY)
    swapped = dict(state)
    red = state["backbone.layers.1.downsample.reduction.weight"].reshape(96, 4, 48)
    swapped["backbone.layers.1.downsample.reduction.weight"] = red[:, [0, 2, 1, 3]].reshape(96, 192).copy()
    nrm = state["backbone.layers.1.downsample.norm.weight"].reshape(4, 48)
    swapped["backbone.layers.1.downsample.norm.weight"] = nrm[[0, 2, 1, 3]].reshape(-1).copy()
    nrm = state["backbone.layers.1.downsample.norm.bias"].reshape(4, 48)
    swapped["backbone.layers.1.downsample.norm.bias"] = nrm[[0, 2, 1, 3]].reshape(-1).copy()
    other = _tiny_model()
    load_weights(other, _write(swapped, tmp_path / "swapped.pkl"))
    with torch.no_grad():
        assert _max_rel_err(other.backbone(x)[2:], ref[2:]) > 1e-2
        norms, model.backbone.out_norms = model.backbone.out_norms, None
        try:
            assert _max_rel_err(model.backbone(x), ref) > 1e-2
        finally:
            model.backbone.out_norms = norms


def test_torchvision_window_attention_differs_only_on_one_window_maps(tiny, tmp_path):
    """Without ``always_shift`` (torchvision's attention, the Panoptic FPN swin_t backbone) the same
    weights give the official outputs where every padded map spans several windows (256x320) and
    differ where a map is one window on a side (224x320: stride 32; 96x128: strides 16 and 32)."""
    _, state = tiny
    model = _tiny_model(always_shift=False)
    load_weights(model, _write(state, tmp_path / "model_final.pkl"))
    for hw, agree in (((256, 320), 4), ((224, 320), 3), ((96, 128), 2)):
        x = _images(*hw)
        with torch.no_grad():
            ours = model.backbone(x)
        ref = official_swin_forward(state, x, **TINY)
        assert _max_rel_err(ours[:agree], ref[:agree]) < 1e-4
        if agree < 4:
            assert _max_rel_err(ours[agree:], ref[agree:]) > 1e-3


def test_missing_extra_and_misfit_keys_are_refused_by_name(tmp_path):
    model = _tiny_model()
    state = official_swin_state(TINY, model)
    before = model.state_dict()["backbone.out_norms.2.weight"].clone()
    cases = [
        ({k: v for k, v in state.items() if k != "backbone.norm2.weight"}, r"out_norms\.2\.weight"),
        ({**state, "backbone.absolute_pos_embed": np.zeros((1, 24, 56, 56), np.float32)}, "absolute_pos_embed"),
        ({**state, "backbone.layers.0.blocks.0.attn.relative_position_bias_table": np.zeros((529, 1), np.float32)},
         "relative_position_bias_table"),  # a 12x12-window file into a 7x7-window model
        ({**state, "backbone.layers.0.blocks.0.attn.relative_position_index":
            official_position_index(7).T.numpy().copy()}, "relative_position_index"),
    ]
    for bad, key in cases:
        with pytest.raises(WeightsError, match=key):
            load_weights(model, _write(bad, tmp_path / "bad.pkl"))
        assert torch.equal(model.state_dict()["backbone.out_norms.2.weight"], before)


def test_attn_mask_buffers_are_skipped_and_missing_position_indices_kept(tmp_path):
    """Classification-Swin files carry size-dependent attn_mask buffers (recomputed here); a file
    without the position index buffers still loads (they are constants of the window size)."""
    model = _tiny_model()
    state = official_swin_state(TINY, model)
    extra = {**state, "backbone.layers.0.blocks.1.attn_mask": np.zeros((100, 49, 49), np.float32)}
    report = load_weights(model, _write(extra, tmp_path / "a.pkl"))
    assert report.complete and any("attn_mask" in n for n in report.notes)
    without = {k: v for k, v in state.items() if not k.endswith("relative_position_index")}
    report = load_weights(model, _write(without, tmp_path / "b.pkl"))
    assert report.complete and any("relative_position_index" in n for n in report.notes)


def test_torchvision_swin_state_dict_loads_into_the_body(tmp_path):
    """ImageNet initialisation: a torchvision SwinTransformer state dict of the same arch fills the
    body (the classifier norm / head dropped); the output norms are not in it (new, as officially)."""
    from torchvision.models.swin_transformer import SwinTransformer

    model = _tiny_model()
    tv = SwinTransformer([4, 4], TINY["embed_dim"], TINY["depths"], TINY["num_heads"], [7, 7])
    path = tmp_path / "swin_tiny.pth"
    torch.save(tv.state_dict(), path)
    report = load_weights(model, str(path))
    assert report.complete and report.format == "torchvision imagenet"
    assert torch.equal(model.state_dict()["backbone.body.features.7.0.mlp.3.weight"], tv.features[7][0].mlp[3].weight)


@pytest.mark.parametrize("name,arch,queries,published", [("mask2former_swin_t", SWIN_T, 100, 47e6),
                                                         ("mask2former_swin_l", SWIN_L, 200, 216e6)])
def test_parameter_count_and_names_equal_the_official_model(name, arch, queries, published):
    """The COCO panoptic model from the config has the official model's parameters (MODEL_ZOO.md:
    Swin-T 47M, Swin-L 216M with 200 queries), and every official name maps to one of our tensors
    of that size (the strict load of a full-size file is the tiny model's, above)."""
    torch.manual_seed(0)
    model = instantiate_model(compose_model_config(name, "coco_panoptic"))
    shapes = official_swin_model_shapes(arch, queries=queries)
    official = _learnable(shapes)
    assert abs(official - published) / published < 0.01
    assert sum(p.numel() for p in model.parameters()) == official
    ours = {official_name(k): v.numel() for k, v in model.state_dict().items() if k not in ("pixel_mean", "pixel_std")}
    assert ours == {k: int(np.prod(v)) for k, v in shapes.items() if k != "criterion.empty_weight"}


@pytest.mark.parametrize("name,arch", [("mask2former_swin_t", SWIN_T),
                                       ("mask2former_swin_s", dict(SWIN_T, depths=[2, 2, 18, 2])),
                                       ("mask2former_swin_b_384", dict(embed_dim=128, depths=[2, 2, 18, 2],
                                                                       num_heads=[4, 8, 16, 32], window_size=12)),
                                       ("mask2former_swin_l", SWIN_L)])
def test_swin_configs_are_the_official_ones(name, arch):
    """Each config composes (hydra, and the zoo's defaults merge alike) to the official MODEL.SWIN
    values, drop path 0.3, the official shift, output norms, nothing frozen, ImageNet RGB normalisation,
    COCO's class order."""
    from omegaconf import OmegaConf

    from panfpn.modeling.zoo import model_config

    composed = compose_model_config(name, "coco_panoptic")
    assert OmegaConf.to_container(model_config(name).model, resolve=True) == OmegaConf.to_container(
        composed.model, resolve=True)
    m = composed.model
    assert dict(m.backbone.arch) == {**arch, "stochastic_depth_prob": 0.3, "always_shift": True}
    assert (m.backbone.name, m.backbone.out_norms, m.backbone.freeze_at) == ("swin", True, 0)
    assert m.class_order == "things_first"
    assert list(m.pixel_mean) == [123.675, 116.28, 103.53] and list(m.pixel_std) == [58.395, 57.12, 57.375]
    assert m.predictor.num_queries == (200 if name == "mask2former_swin_l" else 100)


def test_swin_network_exports_at_a_fixed_size(tiny, tmp_path):
    """The network half with the official-shift Swin body exports like the ResNet one (torch.export,
    ONNX) at 96x128, where the stride 16 / 32 maps are one shifted window."""
    import warnings

    from panfpn.modeling.panoptic_fpn.export import export_onnx, export_program

    model, _ = tiny
    x = _images(96, 128)[:1]
    with torch.no_grad():
        eager = model.network(x)
        exported = export_program(model.network, height=96, width=128, dynamic=False).module()(x)
    for a, b in zip(eager, exported):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-5)
    ort = pytest.importorskip("onnxruntime")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation notice
        export_onnx(model.network, tmp_path / "swin.onnx", height=96, width=128, dynamic=False)
    session = ort.InferenceSession(str(tmp_path / "swin.onnx"), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    for a, b in zip(eager, outputs):
        torch.testing.assert_close(torch.from_numpy(b), a, rtol=0, atol=1e-4 * float(a.abs().max()))


def test_training_steps_reach_the_swin_tensors_and_lower_the_loss():
    """The official-shift attention trains: gradients reach the patch embedding, the relative
    position tables of shifted blocks and the output norms, and a few steps lower the loss."""
    model = _tiny_model(data="synthetic").train()
    batch = make_batch([(64, 64), (48, 64)], [(64, 64), (48, 64)], num_things=4, num_sem=5)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    totals = []
    for step in range(4):
        torch.manual_seed(1)  # the same sampled points each step: the loss itself is compared
        total = sum(model(batch).values())
        opt.zero_grad()
        total.backward()
        if step == 0:
            params = dict(model.named_parameters())
            for name in ("backbone.body.features.0.0.weight", "backbone.out_norms.3.weight",
                         "backbone.body.features.7.1.attn.relative_position_bias_table"):
                assert params[name].grad is not None and params[name].grad.abs().sum() > 0, name
        opt.step()
        totals.append(float(total.detach()))
    assert totals[-1] < totals[0], totals
