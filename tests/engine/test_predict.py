"""tools/predict.py's job: bad inputs are reported and skipped, outputs are complete and consistent,
existing outputs are kept unless predict.overwrite=true. Random weights: the I/O is what is tested."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from config_helpers import compose_config
from PIL import Image

from panfpn.data.image_files import ImageFileDataset, list_image_files, output_stems, read_image
from panfpn.data.panoptic_io import read_id_png
from panfpn.data.synthetic import synthetic_metadata
from panfpn.engine.config import ConfigError
from panfpn.engine.predict_run import predict_from_config
from panfpn.modeling.build import build_model

# test transform: shorter side 48, so the model runs at another size than the inputs
RESIZE = ("++data.val.transforms={_target_:panfpn.data.transforms.ResizeShortestEdge,"
          "short_edge_lengths:[48],max_size:96}")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    cfg = compose_config(output_dir=tmp_path_factory.mktemp("w"))
    torch.manual_seed(0)
    model = build_model(cfg)
    path = tmp_path_factory.mktemp("ckpt") / "model.pth"
    torch.save({"model": model.state_dict()}, path)
    return path


def _images(folder, sizes=((40, 56), (64, 48))):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = []
    for k, (h, w) in enumerate(sizes):
        name = f"img{k}.png" if k % 2 == 0 else f"img{k}.jpg"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / name)
        names.append(name)
    return names


def _cfg(tiny_cfg, weights, folder, out, *extra):
    return tiny_cfg(f"weights={weights}", f"++predict.input={folder}", f"++predict.output_dir={out}",
                    "++predict.batch_size=2", "++predict.overlay_format=png", RESIZE, *extra)


def test_folder_with_corrupt_and_non_image_files(tiny_cfg, weights, tmp_path):
    folder = tmp_path / "in"
    names = _images(folder)
    good = (folder / names[1]).read_bytes()
    (folder / "broken.jpg").write_bytes(good[: len(good) // 3])  # truncated JPEG
    (folder / "garbage.png").write_bytes(b"\x89PNG not really")
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    result = predict_from_config(_cfg(tiny_cfg, weights, folder, out))

    assert sorted(result["predicted"]) == ["img0", "img1"]
    failed = {f["path"].split("/")[-1]: f["error"] for f in result["failed"]}
    assert set(failed) == {"broken.jpg", "garbage.png", "notes.txt"}
    assert "not an image file" in failed["notes.txt"] and "cannot read" in failed["broken.jpg"]
    listed = (out / "failed.txt").read_text().splitlines()
    assert sorted(line.split("\t")[0].split("/")[-1] for line in listed) == sorted(failed)
    assert len(json.loads((out / "failed.json").read_text())["failed"]) == 3

    data = json.loads((out / "panoptic.json").read_text())
    meta = synthetic_metadata()
    assert {c["id"] for c in data["categories"]} == {c.id for c in meta.categories}
    assert sorted(a["image_id"] for a in data["annotations"]) == ["img0", "img1"]
    for ann, name, (h, w) in zip(sorted(data["annotations"], key=lambda a: a["image_id"]), names,
                                 ((40, 56), (64, 48))):
        ids = read_id_png(out / "panoptic" / ann["file_name"])
        assert ids.shape == (h, w)  # at the input's size, though the model ran at 48 px
        present = set(np.unique(ids).tolist()) - {0}
        assert present == {s["id"] for s in ann["segments_info"]}
        for seg in ann["segments_info"]:
            assert seg["category_id"] in meta and seg["area"] == int((ids == seg["id"]).sum())
            assert ("score" in seg) == meta.category(seg["category_id"]).isthing
        overlay = np.asarray(Image.open(out / "overlays" / f"{ann['image_id']}.png"))
        assert overlay.shape == (h, w, 3)
        image = read_image(folder / name)
        void = ids == 0
        # pixels that are void, away from any outline, are the image itself
        inner = void.copy()
        inner[1:] &= void[:-1]
        inner[:, 1:] &= void[:, :-1]
        if inner.any() and name.endswith(".png"):
            assert (overlay[inner] == image[inner]).mean() > 0.9  # labels may cover a few
    images = {i["id"]: i for i in data["images"]}
    assert images["img0"]["height"] == 40 and images["img0"]["width"] == 56


def test_existing_outputs_are_kept_without_overwrite(tiny_cfg, weights, tmp_path):
    folder = tmp_path / "in"
    _images(folder)
    out = tmp_path / "out"
    predict_from_config(_cfg(tiny_cfg, weights, folder, out))
    marker = out / "overlays" / "img0.png"
    marker.write_bytes(b"user's file")
    png_before = (out / "panoptic" / "img1.png").read_bytes()

    _images(folder, sizes=((40, 56), (64, 48), (32, 32)))  # a new image appears
    result = predict_from_config(_cfg(tiny_cfg, weights, folder, out))
    assert result["predicted"] == ["img2"] and sorted(result["skipped"]) == ["img0", "img1"]
    assert marker.read_bytes() == b"user's file"
    assert (out / "panoptic" / "img1.png").read_bytes() == png_before
    data = json.loads((out / "panoptic.json").read_text())
    assert sorted(a["image_id"] for a in data["annotations"]) == ["img0", "img1", "img2"]
    assert sorted(i["id"] for i in data["images"]) == ["img0", "img1", "img2"]

    result = predict_from_config(_cfg(tiny_cfg, weights, folder, out, "++predict.overwrite=true",
                                      "++predict.overlay=false"))
    assert sorted(result["predicted"]) == ["img0", "img1", "img2"] and result["skipped"] == []
    assert marker.read_bytes() == b"user's file"  # overlays off: not touched
    assert len(json.loads((out / "panoptic.json").read_text())["annotations"]) == 3


def test_config_errors_name_the_key(tiny_cfg, weights, tmp_path):
    folder = tmp_path / "in"
    _images(folder)
    with pytest.raises(ConfigError, match="predict.input"):
        predict_from_config(tiny_cfg(f"weights={weights}"))
    with pytest.raises(ConfigError, match="did you mean 'overwrite'"):
        predict_from_config(_cfg(tiny_cfg, weights, folder, tmp_path / "o", "++predict.overwirte=true"))
    with pytest.raises(ConfigError, match="weights"):
        predict_from_config(tiny_cfg(f"++predict.input={folder}"))
    with pytest.raises(FileNotFoundError, match="nothing_here"):
        predict_from_config(_cfg(tiny_cfg, weights, tmp_path / "nothing_here", tmp_path / "o"))


def test_list_image_files_file_folder_glob(tmp_path):
    _images(tmp_path / "a")
    _images(tmp_path / "b" / "c")
    (tmp_path / "a" / ".hidden.png").write_bytes(b"x")
    assert [p.name for p in list_image_files(tmp_path / "a")] == ["img0.png", "img1.jpg"]
    assert [p.name for p in list_image_files(str(tmp_path / "*" / "*.png"))] == ["img0.png"]
    assert len(list_image_files(str(tmp_path / "**" / "*.jpg"), recursive=True)) == 2
    assert len(list_image_files(tmp_path, recursive=True)) == 4
    both = list_image_files([tmp_path / "a" / "img0.png", tmp_path / "a"])  # de-duplicated
    assert [p.name for p in both] == ["img0.png", "img1.jpg"]
    with pytest.raises(FileNotFoundError, match="missing"):
        list_image_files(tmp_path / "missing")


def test_output_stems_are_unique():
    paths = [Path("/d/x/a.jpg"), Path("/d/y/a.jpg"), Path("/d/x/a.png"), Path("/d/x/b.jpg")]
    stems = output_stems(paths)
    assert len(set(stems)) == 4 and stems[3] == "b"
    assert stems[0] == "x__a_jpg" and stems[1] == "y__a_jpg"


def test_exif_orientation_and_greyscale_are_handled(tmp_path):
    rgb = np.zeros((20, 30, 3), dtype=np.uint8)
    rgb[:, :10] = 255
    img = Image.fromarray(rgb)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    img.save(tmp_path / "rot.jpg", exif=exif)
    assert read_image(tmp_path / "rot.jpg").shape == (30, 20, 3)
    Image.fromarray(rgb[..., 0]).save(tmp_path / "grey.png")
    sample = ImageFileDataset([tmp_path / "grey.png"])[0]
    assert sample["image"].shape == (3, 20, 30) and sample["orig_size"] == (20, 30)
    assert sample["sem_seg"].shape == (20, 30) and (sample["sem_seg"] == 255).all()
    assert sample["instances"]["boxes"].shape == (0, 4)


class _FakeModel(torch.nn.Module):
    """Eval output of docs/interfaces.md section 3 with a known layout: stuff label 1 on the left
    third, thing label 2 (score 0.875) in a box, void elsewhere; records the input sizes it saw."""

    BOX = (8, 32, 40, 80)  # y0, y1, x0, x1 at the original size

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, batch):
        self.seen.append((tuple(batch["images"].shape), list(batch["image_sizes"])))
        outputs = []
        for h, w in batch["orig_sizes"]:
            id_map = torch.zeros((h, w), dtype=torch.int32)
            id_map[:, : w // 3] = 2
            y0, y1, x0, x1 = self.BOX
            id_map[y0:y1, x0:x1] = 1
            segments = [{"id": 1, "isthing": True, "category": 2, "score": 0.875, "area": 0},
                        {"id": 2, "isthing": False, "category": 1, "score": None, "area": 0}]
            outputs.append({"panoptic": (id_map, segments)})
        return outputs


def test_predict_images_maps_categories_scores_and_colours(tmp_path):
    from panfpn.data.transforms import ResizeShortestEdge
    from panfpn.engine.predict_run import predict_images
    from panfpn.evaluation.visualize import segment_colors

    folder = tmp_path / "in"
    _images(folder, sizes=((64, 96), (48, 100), (64, 96)))
    meta = synthetic_metadata()
    model = _FakeModel()
    result = predict_images(model, list_image_files(folder), meta, tmp_path / "out", batch_size=2,
                            transforms=ResizeShortestEdge(32, max_size=200), overlay_alpha=0.5,
                            overlay_format="png", write_threads=2, progress=False)
    assert result["predicted"] == ["img0", "img1", "img2"]
    # batched 2 + 1, resized to a shorter side of 32 and padded to a multiple of 32
    assert model.seen[0] == ((2, 3, 32, 96), [(32, 48), (32, 67)]) and model.seen[1][0][0] == 1

    data = json.loads((tmp_path / "out" / "panoptic.json").read_text())
    thing_id, stuff_id = meta.thing_ids[2], meta.stuff_ids[1]
    for ann in data["annotations"]:
        by_id = {s["id"]: s for s in ann["segments_info"]}
        assert by_id[1]["category_id"] == thing_id and by_id[1]["score"] == 0.875
        assert by_id[1]["bbox"] == [40, 8, 40, 24] and by_id[1]["area"] == 24 * 40
        assert by_id[2]["category_id"] == stuff_id and "score" not in by_id[2]

    image = read_image(folder / "img0.png").astype(np.float64)
    overlay = np.asarray(Image.open(tmp_path / "out" / "overlays" / "img0.png")).astype(np.float64)
    colors = segment_colors([{"id": 1, "category_id": thing_id}, {"id": 2, "category_id": stuff_id}], meta)
    # rows just inside the thing's top edge (the label sits at its centre), and the stuff's interior
    y0, _, x0, x1 = _FakeModel.BOX
    inside = (slice(y0 + 1, y0 + 4), slice(x0 + 1, x1 - 1))
    np.testing.assert_allclose(overlay[inside], 0.5 * image[inside] + 0.5 * np.array(colors[1]), atol=1)
    stuff = (slice(50, 64), slice(0, 20))
    np.testing.assert_allclose(overlay[stuff], 0.5 * image[stuff] + 0.5 * np.array(colors[2]), atol=1)
    void = (slice(40, 64), slice(40, 96))  # below the thing, right of the stuff
    np.testing.assert_array_equal(overlay[void], image[void])
    assert (overlay[y0, x0 + 1:x1 - 1] == 255).all()  # the thing's outline


def test_json_keeps_other_images_and_input_order_with_threads(tmp_path):
    from panfpn.engine.predict_run import predict_images

    meta = synthetic_metadata()
    first, second = tmp_path / "first", tmp_path / "second"
    _images(first, sizes=((20, 24),))
    (first / "img0.png").rename(first / "old.png")
    _images(second, sizes=((20, 24), (24, 20), (20, 30), (30, 20), (22, 22)))
    out = tmp_path / "out"
    predict_images(_FakeModel(), list_image_files(first), meta, out, progress=False)
    result = predict_images(_FakeModel(), list_image_files(second), meta, out, batch_size=2,
                            write_threads=3, progress=False)
    assert result["predicted"] == [f"img{k}" for k in range(5)]
    data = json.loads((out / "panoptic.json").read_text())
    # the earlier run's image stays listed, first; this run's follow in input order
    assert [a["image_id"] for a in data["annotations"]] == ["old"] + [f"img{k}" for k in range(5)]
    assert [i["id"] for i in data["images"]] == ["old"] + [f"img{k}" for k in range(5)]
    assert data["images"][1]["path"].endswith("img0.png")
    for k, (h, w) in enumerate(((20, 24), (24, 20), (20, 30), (30, 20), (22, 22))):
        with Image.open(out / "overlays" / f"img{k}.jpg") as im:  # JPEG overlays by default
            assert im.format == "JPEG" and im.size == (w, h)


def test_unreadable_previous_json_needs_overwrite(tmp_path):
    from panfpn.engine.predict_run import predict_images

    folder = tmp_path / "in"
    _images(folder, sizes=((20, 24),))
    out = tmp_path / "out"
    out.mkdir()
    (out / "panoptic.json").write_text("{not json")
    with pytest.raises(ValueError, match="panoptic.json.*overwrite"):
        predict_images(_FakeModel(), list_image_files(folder), synthetic_metadata(), out, progress=False)
    result = predict_images(_FakeModel(), list_image_files(folder), synthetic_metadata(), out,
                            overwrite=True, progress=False)
    assert result["predicted"] == ["img0"]
    assert len(json.loads((out / "panoptic.json").read_text())["annotations"]) == 1


def test_error_mid_run_still_lists_what_was_written(tmp_path):
    from panfpn.engine.predict_run import predict_images

    class FailsOnSecondBatch(_FakeModel):
        def forward(self, batch):
            if self.seen:
                raise RuntimeError("CUDA out of memory (simulated)")
            return super().forward(batch)

    folder = tmp_path / "in"
    _images(folder, sizes=((20, 24), (24, 20), (20, 30)))
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="simulated"):
        predict_images(FailsOnSecondBatch(), list_image_files(folder), synthetic_metadata(), out,
                       batch_size=2, progress=False)
    data = json.loads((out / "panoptic.json").read_text())
    assert [a["image_id"] for a in data["annotations"]] == ["img0", "img1"]
    assert not list(out.rglob(".*tmp*"))  # no temporary files left behind


def test_by_default_each_image_is_predicted_alone(tmp_path):
    """An image's result must not depend on the images beside it: batches pad every image to the
    largest one (docs/predict.md, Batches), so tools/predict.py and predict_images default to
    batches of 1, as tools/eval.py and Detectron2's DefaultPredictor (it was 2)."""
    from panfpn.engine.predict_run import predict_images

    assert compose_config(["experiment=synthetic_cpu"]).predict.batch_size == 1
    folder = tmp_path / "in"
    _images(folder, sizes=((64, 96), (48, 100), (40, 56)))
    model = _FakeModel()
    predict_images(model, list_image_files(folder), synthetic_metadata(), tmp_path / "out", overlay=False,
                   progress=False)
    assert [shape[0] for shape, _ in model.seen] == [1, 1, 1], model.seen
