"""Official Mask2Former model-zoo checkpoints load strictly by name.

The official state dict is written here from the official architecture (facebookresearch/Mask2Former:
Detectron2 ResNet-50, MSDeformAttnPixelDecoder, MultiScaleMaskedTransformerDecoder with the COCO
panoptic R50 settings), names and shapes only, no download. Its learnable parameters are the
published model's (~44M); the model built from configs/model/mask2former_r50.yaml must have exactly
as many, and the file must load strictly with nothing left over.
"""

import pickle

import numpy as np
import pytest
import torch
from modeling_helpers import compose_model_config

from panfpn.data.builtin_meta import cityscapes_panoptic_metadata, coco_panoptic_metadata
from panfpn.modeling.build import instantiate_model
from panfpn.modeling.mask2former.classes import build_class_space
from panfpn.modeling.weights import WeightsError, load_weights


def _norm(prefix, n, frozen=True):
    keys = ("weight", "bias", "running_mean", "running_var") if frozen else ("weight", "bias")
    return {f"{prefix}.{k}": (n,) for k in keys}


def official_r50_shapes(num_classes=133, queries=100, d=256):
    """Names and shapes of the official R50 panoptic checkpoint."""
    return {**official_r50_backbone_shapes(), **official_head_shapes((256, 512, 1024, 2048), num_classes, queries, d)}


def official_r50_backbone_shapes():
    """``backbone.*`` of the official R50 checkpoint (Detectron2 ResNet, FrozenBN)."""
    s = {"backbone.stem.conv1.weight": (64, 3, 7, 7), **_norm("backbone.stem.conv1.norm", 64)}
    cin = 64
    for stage, (blocks, width) in enumerate([(3, 64), (4, 128), (6, 256), (3, 512)], start=2):
        out = width * 4
        for b in range(blocks):
            p = f"backbone.res{stage}.{b}"
            s |= {f"{p}.conv1.weight": (width, cin if b == 0 else out, 1, 1), **_norm(f"{p}.conv1.norm", width),
                  f"{p}.conv2.weight": (width, width, 3, 3), **_norm(f"{p}.conv2.norm", width),
                  f"{p}.conv3.weight": (out, width, 1, 1), **_norm(f"{p}.conv3.norm", out)}
            if b == 0:
                s |= {f"{p}.shortcut.weight": (out, cin, 1, 1), **_norm(f"{p}.shortcut.norm", out)}
        cin = out
    return s


def official_head_shapes(channels, num_classes=133, queries=100, d=256):
    """``sem_seg_head.*`` and ``criterion.*`` of an official panoptic checkpoint whose backbone gives
    ``channels`` (res2..res5): MSDeformAttnPixelDecoder (6 layers) + the 9-layer decoder."""
    s = {}
    pd = "sem_seg_head.pixel_decoder"
    for i, c in enumerate(channels[:0:-1]):  # res5, res4, res3
        s |= {f"{pd}.input_proj.{i}.0.weight": (d, c, 1, 1), f"{pd}.input_proj.{i}.0.bias": (d,),
              f"{pd}.input_proj.{i}.1.weight": (d,), f"{pd}.input_proj.{i}.1.bias": (d,)}
    s[f"{pd}.transformer.level_embed"] = (3, d)
    for i in range(6):
        p = f"{pd}.transformer.encoder.layers.{i}"
        s |= {f"{p}.self_attn.sampling_offsets.weight": (8 * 3 * 4 * 2, d), f"{p}.self_attn.sampling_offsets.bias": (192,),
              f"{p}.self_attn.attention_weights.weight": (8 * 3 * 4, d), f"{p}.self_attn.attention_weights.bias": (96,),
              f"{p}.self_attn.value_proj.weight": (d, d), f"{p}.self_attn.value_proj.bias": (d,),
              f"{p}.self_attn.output_proj.weight": (d, d), f"{p}.self_attn.output_proj.bias": (d,),
              **_norm(f"{p}.norm1", d, False), f"{p}.linear1.weight": (1024, d), f"{p}.linear1.bias": (1024,),
              f"{p}.linear2.weight": (d, 1024), f"{p}.linear2.bias": (d,), **_norm(f"{p}.norm2", d, False)}
    s |= {f"{pd}.mask_features.weight": (d, d, 1, 1), f"{pd}.mask_features.bias": (d,),
          f"{pd}.adapter_1.weight": (d, channels[0], 1, 1), **_norm(f"{pd}.adapter_1.norm", d, False),
          f"{pd}.layer_1.weight": (d, d, 3, 3), **_norm(f"{pd}.layer_1.norm", d, False)}
    pr = "sem_seg_head.predictor"
    for i in range(9):
        for kind, attn in (("self", "self_attn"), ("cross", "multihead_attn")):
            p = f"{pr}.transformer_{kind}_attention_layers.{i}"
            s |= {f"{p}.{attn}.in_proj_weight": (3 * d, d), f"{p}.{attn}.in_proj_bias": (3 * d,),
                  f"{p}.{attn}.out_proj.weight": (d, d), f"{p}.{attn}.out_proj.bias": (d,), **_norm(f"{p}.norm", d, False)}
        p = f"{pr}.transformer_ffn_layers.{i}"
        s |= {f"{p}.linear1.weight": (2048, d), f"{p}.linear1.bias": (2048,), f"{p}.linear2.weight": (d, 2048),
              f"{p}.linear2.bias": (d,), **_norm(f"{p}.norm", d, False)}
    s |= {**_norm(f"{pr}.decoder_norm", d, False), f"{pr}.query_feat.weight": (queries, d),
          f"{pr}.query_embed.weight": (queries, d), f"{pr}.level_embed.weight": (3, d),
          f"{pr}.class_embed.weight": (num_classes + 1, d), f"{pr}.class_embed.bias": (num_classes + 1,),
          "criterion.empty_weight": (num_classes + 1,)}
    for i in range(3):
        s |= {f"{pr}.mask_embed.layers.{i}.weight": (d, d), f"{pr}.mask_embed.layers.{i}.bias": (d,)}
    return s


def _learnable(shapes):
    """The official model's parameters: FrozenBN statistics/affine and the criterion's buffer are not."""
    return sum(int(np.prod(v)) for k, v in shapes.items()
               if not (k.startswith("backbone.") and ".norm." in k) and k != "criterion.empty_weight")


@pytest.fixture(scope="module")
def r50():
    torch.manual_seed(0)
    return instantiate_model(compose_model_config("mask2former_r50", data="coco_panoptic"))


def test_parameter_count_equals_the_official_r50_panoptic_model(r50):
    official = _learnable(official_r50_shapes())
    assert 43.5e6 < official < 44.5e6  # published: 44M
    assert sum(p.numel() for p in r50.parameters()) == official


def test_official_checkpoint_loads_strictly_by_name(r50, tmp_path):
    shapes = official_r50_shapes()
    g = np.random.default_rng(0)
    state = {k: g.standard_normal(v).astype(np.float16) for k, v in shapes.items()}
    path = tmp_path / "model_final_94dc52.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": state, "__author__": "FAIR", "matching_heuristics": True}, f)
    report = load_weights(r50, str(path))
    assert report.complete and report.format == "official Mask2Former"
    ours = r50.state_dict()
    assert torch.equal(ours["predictor.class_embed.weight"],
                       torch.from_numpy(state["sem_seg_head.predictor.class_embed.weight"]).float())
    assert torch.equal(ours["backbone.body.layer4.2.bn3.running_var"],
                       torch.from_numpy(state["backbone.res5.2.conv3.norm.running_var"]).float())
    assert torch.equal(ours["pixel_decoder.transformer.encoder.layers.5.self_attn.sampling_offsets.bias"],
                       torch.from_numpy(state[
                           "sem_seg_head.pixel_decoder.transformer.encoder.layers.5.self_attn.sampling_offsets.bias"]).float())
    # another class count (Cityscapes' 19 + 1 rows) is refused, naming the head, model unchanged
    before = r50.state_dict()["predictor.query_feat.weight"].clone()
    small = {k: v for k, v in state.items()}
    small["sem_seg_head.predictor.class_embed.weight"] = np.zeros((20, 256), np.float16)
    with open(path, "wb") as f:
        pickle.dump({"model": small}, f)
    with pytest.raises(WeightsError, match="class_embed"):
        load_weights(r50, str(path))
    assert torch.equal(r50.state_dict()["predictor.query_feat.weight"], before)


def test_model_zoo_static_query_name_loads_as_query_feat(r50, tmp_path):
    """The released model-zoo .pkl files hold the learnable query features as
    ``sem_seg_head.predictor.static_query.weight`` (no ``query_feat``); the official decoder renames it
    on load. Such a file loads completely, the tensor in ``predictor.query_feat``; a file with both
    names is refused naming the older one."""
    shapes = official_r50_shapes()
    g = np.random.default_rng(1)
    state = {k: g.standard_normal(v).astype(np.float32) for k, v in shapes.items()}
    legacy = {("sem_seg_head.predictor.static_query.weight" if k == "sem_seg_head.predictor.query_feat.weight"
               else k): v for k, v in state.items()}
    assert "sem_seg_head.predictor.query_feat.weight" not in legacy
    path = tmp_path / "model_final_94dc52.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": legacy, "__author__": "FAIR", "matching_heuristics": True}, f)
    report = load_weights(r50, str(path))
    assert report.complete and report.format == "official Mask2Former"
    assert any("static_query" in n for n in report.notes)
    assert torch.equal(r50.state_dict()["predictor.query_feat.weight"],
                       torch.from_numpy(legacy["sem_seg_head.predictor.static_query.weight"]))
    both = {**state, "sem_seg_head.predictor.static_query.weight": np.zeros((100, 256), np.float32)}
    with open(path, "wb") as f:
        pickle.dump({"model": both}, f)
    with pytest.raises(WeightsError, match="static_query"):
        load_weights(r50, str(path))


def test_class_orders_are_detectron2s_contiguous_orders():
    """things_first on COCO = the 133 categories by id (Detectron2's contiguous ids); semantic on
    Cityscapes = the 19 train ids' order (category ids 7 .. 33)."""
    coco = coco_panoptic_metadata()
    space = build_class_space(coco.num_thing_classes, coco.num_sem_classes, coco.thing_sem_labels)
    ids = [coco.segment_category_id(t, lab) for t, lab in zip(space.isthing, space.label)]
    assert len(ids) == 133 and ids == sorted(ids)
    city = cityscapes_panoptic_metadata()
    space = build_class_space(city.num_thing_classes, city.num_sem_classes, city.thing_sem_labels, "semantic")
    ids = [city.segment_category_id(t, lab) for t, lab in zip(space.isthing, space.label)]
    assert ids == [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]


@pytest.mark.parametrize("data,counts", [("coco_panoptic", dict(num_thing_classes=80, num_stuff_classes=53)),
                                         ("cityscapes_panoptic", dict(num_thing_classes=8, num_stuff_classes=11,
                                                                      sem_seg_mode="all",
                                                                      thing_sem_labels=range(11, 19)))])
def test_zoo_model_config_equals_the_composed_one(data, counts):
    """panfpn.modeling.zoo builds mask2former_r50 from Python with the model node hydra composes."""
    from omegaconf import OmegaConf

    from panfpn.modeling.zoo import model_config

    ours = model_config("mask2former_r50", **counts)
    composed = compose_model_config("mask2former_r50", data)
    assert OmegaConf.to_container(ours.model, resolve=True) == OmegaConf.to_container(composed.model, resolve=True)


def test_a_file_recording_other_normalisation_is_refused_naming_it(tmp_path):
    """The official code does not save pixel_mean / pixel_std; a file that holds them states the input
    its model was trained with. The ImageNet RGB values load (and are set, as always); others (here
    Detectron2's BGR Caffe mean) are refused naming them. Before, they were skipped without a word and
    the model normalised with the ImageNet values."""
    from panfpn.modeling.mask2former.official_weights import official_name

    torch.manual_seed(0)
    model = instantiate_model(compose_model_config("mask2former_small", overrides=(
        "model.predictor.num_queries=4", "model.predictor.dec_layers=1", "model.pixel_decoder.num_layers=1")))
    state = {official_name(k): v.numpy() for k, v in model.state_dict().items() if official_name(k)}
    path = tmp_path / "model_final.pkl"
    imagenet = {"pixel_mean": np.array([123.675, 116.28, 103.53]).reshape(3, 1, 1),
                "pixel_std": np.array([58.395, 57.12, 57.375]).reshape(3, 1, 1)}
    for extra, refused in ((imagenet, None), ({**imagenet, "pixel_mean": np.array([103.53, 116.28, 123.675])}, "pixel_mean"),
                           ({**imagenet, "pixel_std": np.ones(3)}, "pixel_std")):
        with open(path, "wb") as f:
            pickle.dump({"model": {**state, **extra}, "__author__": "FAIR"}, f)
        if refused is None:
            assert load_weights(model, str(path)).complete
        else:
            with pytest.raises(WeightsError, match=rf"{path}.* record {refused} \["):
                load_weights(model, str(path))
    assert torch.equal(model.pixel_mean.flatten(), torch.tensor([123.675, 116.28, 103.53]))


def test_an_official_file_with_its_normalisation_into_panoptic_fpn_names_the_model_to_build(tmp_path):
    """An official Mask2Former file that records its (ImageNet RGB) pixel_mean, given to the default
    Panoptic FPN model (model=mask2former_r50 forgotten): the error says which model to build. Before, it
    said the file's pixel_mean was not Detectron2's BGR Caffe mean, as if it were a Detectron2 file."""
    from panfpn.modeling.mask2former.official_weights import official_name

    small = ("model.predictor.num_queries=4", "model.predictor.dec_layers=1", "model.pixel_decoder.num_layers=1")
    m2f = instantiate_model(compose_model_config("mask2former_small", overrides=small))
    state = {official_name(k): v.numpy() for k, v in m2f.state_dict().items() if official_name(k)}
    state["pixel_mean"] = np.array([123.675, 116.28, 103.53]).reshape(3, 1, 1)
    path = tmp_path / "model_final.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": state, "__author__": "FAIR"}, f)
    fpn = instantiate_model(compose_model_config("panoptic_fpn_small"))
    with pytest.raises(WeightsError, match="official Mask2Former checkpoint: build its model with model=mask2former_r50"):
        load_weights(fpn, str(path))


def test_an_official_r101_file_names_the_depth_to_set_and_loads_with_it(tmp_path):
    """The official R101 panoptic model (maskformer2_R101_bs16_50ep) into model=mask2former_r50: the error
    names model.backbone.depth=101 (before: 255 'file tensors the model does not have'); with it set, the
    file loads strictly."""
    from panfpn.modeling.mask2former.official_weights import official_name

    heads = ("model.predictor.num_queries=4", "model.predictor.dec_layers=1", "model.pixel_decoder.num_layers=1",
             "model.predictor.hidden_dim=32", "model.pixel_decoder.conv_dim=32", "model.pixel_decoder.mask_dim=32",
             "model.predictor.mask_dim=32")
    torch.manual_seed(0)
    r101 = instantiate_model(compose_model_config("mask2former_r50", overrides=(*heads, "model.backbone.depth=101")))
    state = {official_name(k): v.numpy() for k, v in r101.state_dict().items() if official_name(k)}
    assert "backbone.res4.22.conv3.norm.running_var" in state
    path = tmp_path / "model_final_b807bd.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": state, "__author__": "FAIR"}, f)
    r50 = instantiate_model(compose_model_config("mask2former_r50", overrides=heads))
    with pytest.raises(WeightsError, match=r"ResNet-101 backbone \(23 res4 blocks\) but the model's is a ResNet-50: "
                                           r"set model.backbone.depth=101"):
        load_weights(r50, str(path))
    assert load_weights(r101, str(path)).complete
