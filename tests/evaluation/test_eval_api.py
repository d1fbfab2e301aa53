"""The evaluation API as a Python user calls it (docs/evaluation.md "Evaluators"): the model gets its
mode back when the loop fails, and a batch without ground truth (a training dataset) says so."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from noisy_model import NoisyGroundTruthModel
from panfpn.data.build import synthetic_dataset
from panfpn.data.collate import collate_panoptic
from panfpn.engine.eval_loop import evaluate
from panfpn.evaluation.evaluator import Evaluator
from panfpn.evaluation.evaluators import PanopticQuality


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synthetic"))
    kw = dict(num_images=2, seed=5, height=48, width=64, cache_dir=root)
    return synthetic_dataset("val", is_train=False, **kw), synthetic_dataset("val", is_train=True, **kw)


class Failing(Evaluator):
    def reset(self):
        pass

    def process(self, batch, outputs):
        raise RuntimeError("evaluator failed")

    def evaluate(self):
        return {}


class EmptyPrediction(torch.nn.Module):
    """Predicts void everywhere, reading only the images (as a real model does)."""

    def forward(self, batch):
        return [{"panoptic": (torch.zeros(tuple(size), dtype=torch.int32), []), "instances": {},
                 "sem_seg": torch.zeros(tuple(size), dtype=torch.int64)} for size in batch["orig_sizes"]]


def _loader(ds):
    return DataLoader(ds, batch_size=2, collate_fn=collate_panoptic)


def test_model_gets_its_training_mode_back_when_an_evaluator_fails(datasets):
    val, _ = datasets
    model = NoisyGroundTruthModel(val.metadata).train()
    with pytest.raises(RuntimeError, match="evaluator failed"):
        evaluate(model, _loader(val), val.metadata, [Failing()], device=torch.device("cpu"), progress=False)
    assert model.training  # before: left in eval mode


def test_a_training_dataset_is_refused_naming_the_missing_ground_truth(datasets):
    _, train = datasets
    model = EmptyPrediction()
    with pytest.raises(ValueError, match=r"no 'gt_panoptic', 'segments_info'.*is_train=False"):
        evaluate(model, _loader(train), train.metadata, [PanopticQuality(train.metadata)],
                 device=torch.device("cpu"), progress=False)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int32, torch.int64])
def test_accumulator_takes_id_maps_of_any_integer_type(dtype):
    """interfaces.md: id maps are int tensors; uint8 / int16 ones overflowed in the pair counting."""
    from panfpn.evaluation import PQAccumulator
    gt = torch.zeros(6, 6, dtype=torch.int32)
    gt[:, :3], gt[:, 3:] = 1, 200
    pred = gt.clone()
    pred[0, :] = 0  # void in the prediction
    acc = PQAccumulator({1: {"isthing": 1}, 7: {"isthing": 0}})
    acc.update(pred.to(dtype), [{"id": 1, "category_id": 1}, {"id": 200, "category_id": 7}], gt.to(dtype),
               [{"id": 1, "category_id": 1, "iscrowd": 0, "area": 18},
                {"id": 200, "category_id": 7, "iscrowd": 0, "area": 18}],
               image_id=3)
    result = acc.compute()
    assert result["All"]["rq"] == 1.0 and abs(result["All"]["sq"] - 15 / 18) < 1e-12


@pytest.mark.parametrize("name", ["panoptic_fpn_small", "mask2former_small"])
@pytest.mark.parametrize("mode, things, stuff, thing_sem", [("stuff_plus_thing", 4, 4, None), ("all", 2, 3, [1, 3])])
def test_model_labels_fit_their_own_metadata(name, mode, things, stuff, thing_sem):
    import warnings

    from panfpn.modeling.build import check_labels_fit, model_labels
    from panfpn.modeling.zoo import build_named_model, counts_metadata
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_named_model(name, things, stuff, sem_seg_mode=mode, thing_sem_labels=thing_sem)
    labels = model_labels(model)
    assert labels
    check_labels_fit(labels, counts_metadata(things, stuff, mode, thing_sem), "of the test")


@pytest.mark.parametrize("name", ["panoptic_fpn_small", "mask2former_small"])
def test_a_model_of_other_classes_is_refused_before_it_runs(datasets, name):
    """A zoo model built with other class counts than the dataset's scored silently (3 thing classes
    against the synthetic data's 4: labels mapped to the wrong categories) or failed with a bare
    IndexError (COCO's 80 / 53)."""
    import warnings

    from panfpn.modeling.zoo import build_named_model
    from panfpn.utils.errors import ConfigError
    val, _ = datasets
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_named_model(name, 3, 4)
    with pytest.raises(ConfigError, match="num_(classes|thing_classes) is 3 but the label metadata given to evaluate"):
        evaluate(model, _loader(val), val.metadata, [PanopticQuality(val.metadata)],
                 device=torch.device("cpu"), progress=False)


def test_model_output_segments_given_to_the_accumulator_point_at_the_label_mapping():
    """The model's segments ('category', contiguous labels) are not the PQ's ('category_id',
    dataset ids); the error said only that the key is missing."""
    from panfpn.evaluation import PQAccumulator
    gt = torch.ones(4, 4, dtype=torch.int32)
    acc = PQAccumulator({1: {"isthing": 1}})
    with pytest.raises(ValueError, match="model_segments_to_dataset"):
        acc.update(gt, [{"id": 1, "isthing": True, "category": 0, "score": 0.9, "area": 16}], gt,
                   [{"id": 1, "category_id": 1, "iscrowd": 0, "area": 16}], image_id=5)
