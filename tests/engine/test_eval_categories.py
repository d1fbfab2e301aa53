"""tools/eval.py checks the dataset's category names against the checkpoint's (ids reused for
other classes are refused unless eval.allow_renamed_categories), and writes strict JSON that
records which images were scored."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytest
from hydra.utils import instantiate

from panfpn.data.metadata import DatasetMetadata
from panfpn.data.synthetic import synthetic_metadata
from panfpn.engine import eval_run
from panfpn.engine.config import ConfigError
from panfpn.engine.eval_run import evaluate_from_config
from panfpn.engine.model_spec import renamed_categories


def _renamed(names: dict[int, str]) -> DatasetMetadata:
    """The synthetic labels (same ids, thing/stuff split, mode) with some categories renamed."""
    m = synthetic_metadata()
    cats = [dict(c, name=names.get(c["id"], c["name"])) for c in m.to_coco_categories()]
    return DatasetMetadata.from_coco_categories(cats, sem_seg_mode=m.sem_seg_mode, name="renamed")


def _swapped() -> tuple[DatasetMetadata, dict[int, str]]:
    """Thing ids 1 and 3 swapped: each id names the other's class."""
    model = {c.id: c.name for c in synthetic_metadata().categories}
    return _renamed({1: model[3], 3: model[1]}), model


@pytest.fixture
def weights(tiny_weights) -> Path:
    return tiny_weights  # one tiny training of the session, read only


def _strict(path: Path):
    def refuse(literal):
        raise ValueError(f"{path}: non-standard JSON literal {literal}")
    return json.loads(path.read_text(), parse_constant=refuse)


def test_renamed_categories_compares_names_without_case_or_spaces():
    swapped, model = _swapped()
    assert renamed_categories(synthetic_metadata(), swapped) == [(1, model[1], model[3]), (3, model[3], model[1])]
    assert renamed_categories(synthetic_metadata(), _renamed({7: f"  {model[7].upper()} "})) == []


def test_swapped_category_names_are_refused_naming_ids_and_names(tiny_cfg, tmp_path, weights, monkeypatch):
    swapped, model = _swapped()
    monkeypatch.setattr(eval_run, "build_metadata", lambda cfg: swapped)
    cfg = tiny_cfg(f"weights={weights}", run_dir=tmp_path / "eval")
    with pytest.raises(ConfigError) as err:
        evaluate_from_config(cfg)
    message = str(err.value)
    assert f"id 1: model '{model[1]}', dataset '{model[3]}'" in message
    assert f"id 3: model '{model[3]}', dataset '{model[1]}'" in message
    assert "eval.allow_renamed_categories=true" in message and str(weights) in message
    assert not (tmp_path / "eval" / "eval_results.json").exists()


def test_allowed_renaming_reports_the_datasets_names(tiny_cfg, tmp_path, weights, monkeypatch, caplog):
    renamed = _renamed({1: "lorry", 101: "gravel"})
    model = {c.id: c.name for c in synthetic_metadata().categories}
    monkeypatch.setattr(eval_run, "build_metadata", lambda cfg: renamed)
    cfg = tiny_cfg(f"weights={weights}", "eval.allow_renamed_categories=true", "eval.max_images=null",
                   run_dir=tmp_path / "eval")
    with caplog.at_level(logging.WARNING, logger="panfpn"):
        evaluate_from_config(cfg)
    warning = next(r.getMessage() for r in caplog.records if "allow_renamed_categories" in r.getMessage())
    assert f"id 1: model '{model[1]}', dataset 'lorry'" in warning
    assert f"id 101: model '{model[101]}', dataset 'gravel'" in warning
    names = {c["id"]: c["name"] for c in json.loads((tmp_path / "eval" / "categories.json").read_text())}
    assert names[1] == "lorry" and names[101] == "gravel" and names[3] == model[3]
    page = (tmp_path / "eval" / "report.html").read_text(encoding="utf-8")
    assert "lorry" in page and f">{model[1]}<" not in page


def test_eval_results_are_strict_json_and_record_the_scored_images(tiny_cfg, tmp_path, weights):
    runs = {}
    for n in ("2", "null"):
        cfg = tiny_cfg(f"weights={weights}", f"eval.max_images={n}", "eval.compute_ap=false",
                       run_dir=tmp_path / f"eval_{n}")
        evaluate_from_config(cfg)
        runs[n] = _strict(tmp_path / f"eval_{n}" / "eval_results.json")  # NaN IoU of absent classes: null
    val = instantiate(cfg.data.val)
    ids = [val[i]["image_id"] for i in range(len(val))]
    for n, count in (("2", 2), ("null", 3)):
        record = runs[n]["image_set"]
        want = hashlib.sha256("\n".join(sorted(str(i) for i in ids[:count])).encode("utf-8")).hexdigest()
        assert record["count"] == runs[n]["num_images"] == count and record["sha256"] == want
    assert runs["2"]["image_set"]["sha256"] != runs["null"]["image_set"]["sha256"]
    assert all(v is None or 0 <= v <= 1 for v in runs["null"]["sem_seg"]["IoU"])


def test_a_nan_metric_is_written_as_null(tiny_cfg, tmp_path, weights, monkeypatch):
    """A class absent from prediction and ground truth has a NaN IoU: eval_results.json holds null
    (Python's json would write the NaN literal that strict parsers reject)."""
    from panfpn.evaluation.semantic import SemSegEvaluator

    compute = SemSegEvaluator.compute
    monkeypatch.setattr(SemSegEvaluator, "compute", lambda self: {**compute(self), "IoU": [0.5, float("nan")]})
    evaluate_from_config(tiny_cfg(f"weights={weights}", "eval.compute_ap=false", run_dir=tmp_path / "eval"))
    assert _strict(tmp_path / "eval" / "eval_results.json")["sem_seg"]["IoU"] == [0.5, None]


def test_scored_images_records_what_the_loop_gave_it():
    """The image-set record is an evaluator: it sees exactly the images the loop scored (the eval
    stops after max_images: a batch never processed is not recorded)."""
    from types import SimpleNamespace

    import torch

    from panfpn.evaluation.image_set import ScoredImages, image_set_digest

    batches = [[3, 1], ["b", 2], [9]]
    recorder = ScoredImages()

    def images(ids):
        return [SimpleNamespace(image_id=i, gt_map=torch.zeros(2, 3), gt_segments=[
            {"id": 5, "category_id": 7, "iscrowd": 0, "area": 4}, {"id": 6, "category_id": 1, "area": 2}])
            for i in ids]

    recorder.process({"image_ids": batches[0]}, images(batches[0]))
    recorder.process({"image_ids": batches[1]}, images(batches[1]))
    record = recorder.evaluate()["image_set"]
    assert record["count"] == 4 and record["sha256"] == image_set_digest(["1", "2", "3", "b"])
    # the ground truth digest: id, map size, segments (category_id:iscrowd:area) sorted
    assert record["gt_sha256"] == image_set_digest([f"{i}\t2x3\t1:0:2 7:0:4" for i in (1, 2, 3, "b")])
    assert image_set_digest([3, 1, "b", 2]) == hashlib.sha256(b"1\n2\n3\nb").hexdigest()
    recorder.reset()
    assert recorder.evaluate()["image_set"]["count"] == 0
