"""Mask2Former as a panfpn model: a training step lowers the loss, eval output follows the
contract of docs/interfaces.md section 3, and the engine's evaluation (tools/eval.py's
function) runs on it and yields the PQ / mIoU / AP keys."""

import torch
from modeling_helpers import check_panoptic, compose_model_config, make_batch

from panfpn.modeling.build import build_model

FAST = ("model.matcher.num_points=256", "model.predictor.num_queries=8", "model.predictor.dec_layers=3",
        "model.pixel_decoder.num_layers=1")


def _model(*overrides):
    torch.manual_seed(0)
    return build_model(compose_model_config("mask2former_small", overrides=(*FAST, *overrides)))


def test_training_steps_lower_the_loss():
    model = _model().train()
    batch = make_batch([(48, 48), (32, 48)], [(48, 48), (32, 48)], num_things=4, num_sem=5)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    totals = []
    for _ in range(5):
        torch.manual_seed(1)  # the same sampled points each step: the loss itself is compared
        losses = model(batch)
        total = sum(losses.values())
        opt.zero_grad()
        total.backward()
        opt.step()
        totals.append(float(total.detach()))
    assert {"loss_ce", "loss_mask", "loss_dice", "loss_ce_0", "loss_dice_2"} <= set(losses)
    assert len(losses) == 3 * 4  # final + 3 auxiliary (query init + 2 of the 3 layers)
    assert totals[-1] < 0.8 * totals[0], totals


def test_eval_output_contract():
    model = _model().eval()
    batch = make_batch([(64, 64), (40, 56)], [(100, 90), (40, 56)], num_things=4, num_sem=5)
    model.inference_config = type(model.inference_config)(object_mask_threshold=0.0, overlap_threshold=0.0)
    with torch.no_grad():
        outputs = model(batch)
    assert len(outputs) == 2
    for out, size in zip(outputs, batch["orig_sizes"]):
        check_panoptic(out, size, num_things=4, num_sem=5, thing_sem_labels=[4])
        assert out["panoptic"][1], "thresholds 0: some segment must exist"
        inst = out["instances"]
        k = inst["scores"].shape[0]
        assert inst["boxes"].shape == (k, 4) and inst["labels"].dtype == torch.int64
        assert inst["masks"].shape == (k, *size) and inst["masks"].dtype == torch.bool
        assert out["sem_seg"].shape == tuple(size) and out["sem_seg"].dtype == torch.int64


def test_trained_checkpoint_evaluates_through_the_engine(tmp_path):
    """train_from_config writes a checkpoint that records its model; evaluate_from_config (as
    tools/eval.py runs it, the config's own model left at the default Panoptic FPN) rebuilds
    Mask2Former from that record and yields the evaluator's PQ / mIoU / AP keys; predict_from_config
    (tools/predict.py) writes its panoptic PNG + JSON."""
    import json

    import numpy as np
    from PIL import Image

    from panfpn.engine.predict_run import predict_from_config

    from config_helpers import compose_config

    from panfpn.engine.eval_run import evaluate_from_config
    from panfpn.engine.train_run import train_from_config

    tiny = ["data.train.num_images=4", "data.train.height=64", "data.train.width=64",
            "data.train.transforms.transforms.0.short_edge_lengths=[64]", "data.val.num_images=2",
            "data.val.height=64", "data.val.width=64", "data.batch_size=2", "data.num_workers=0",
            "train.progress_bar=false", "train.log_period=1", "train.checkpoint_period=2"]
    train_from_config(compose_config(["experiment=synthetic_mask2former", *FAST, *tiny, "solver.max_iter=2",
                                      "train.eval_period=-1"], output_dir=tmp_path / "train"))
    weights = tmp_path / "train" / "model_final.pth"
    cfg = compose_config([f"weights={weights}", *tiny, "eval.save_predictions=true", "eval.report=false"],
                         output_dir=tmp_path / "eval")
    assert cfg.model._target_.endswith("PanopticFPN")  # the record, not the config, gives the model
    metrics = evaluate_from_config(cfg, overrides=[])
    assert {"All", "Things", "Stuff"} <= set(metrics["panoptic"]) and "pq" in metrics["panoptic"]["All"]
    assert "mIoU" in metrics["sem_seg"] and "AP" in metrics["segm"] and metrics["num_images"] == 2
    saved = json.loads((tmp_path / "eval" / "eval_results.json").read_text())
    assert saved["panoptic"]["All"]["pq"] == metrics["panoptic"]["All"]["pq"]
    assert (tmp_path / "eval" / "predictions" / "panoptic_pred.json").is_file()

    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(folder / "a.png")
    thresholds = ["model.inference.object_mask_threshold=0.0", "model.inference.overlap_threshold=0.0"]
    cfg = compose_config(["experiment=synthetic_mask2former", f"weights={weights}", *tiny, f"++predict.input={folder}",
                          f"++predict.output_dir={tmp_path / 'pred'}", *thresholds], output_dir=tmp_path / "pred")
    result = predict_from_config(cfg, overrides=thresholds)
    assert result["predicted"] == ["a"]
    data = json.loads((tmp_path / "pred" / "panoptic.json").read_text())
    assert data["annotations"][0]["segments_info"], "thresholds 0: the image has segments"
    assert (tmp_path / "pred" / "panoptic" / "a.png").is_file()
