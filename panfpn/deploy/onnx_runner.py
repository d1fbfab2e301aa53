"""Run an exported panfpn pipeline (one ONNX file) on images: COCO-panoptic PNGs + JSON out.

Standalone on purpose: it imports only the standard library, numpy, Pillow and onnxruntime (no
panfpn, no torch), so it can be copied next to the ``.onnx`` file and run anywhere::

    pip install onnxruntime numpy pillow
    python onnx_runner.py model.onnx photo1.jpg photo2.png photos/ --out results/

writes ``results/panoptic/<stem>.png`` (id = R + 256 G + 256^2 B) and ``results/panoptic.json``
(``images``, ``annotations`` with ``segments_info``: id, category_id, area, bbox, iscrowd and the
things' score, ``categories``), the layout of ``tools/predict.py`` that panopticapi and
``panfpn.evaluation.pq`` read. The graph does the resizing, the network, the detection and the
merge; this file decodes, runs and writes. docs/deployment.md describes the graph.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image, ImageOps

METADATA_KEY = "panfpn"
FORMAT, VERSION = "panfpn-panoptic-pipeline", 1  # what panfpn.deploy.export writes (it imports these)
PANOPTIC_NAME = "panoptic"


def open_session(model_path: str | os.PathLike, *, threads: int = 0, providers: Sequence[str] | None = None) -> Any:
    """An onnxruntime session of the exported file (``threads`` 0: onnxruntime's default);
    ValueError naming the file when it is missing or not an ONNX model onnxruntime can load."""
    import onnxruntime as ort
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

    if not Path(model_path).is_file():
        raise ValueError(f"{model_path}: no such file (the .onnx file tools/export.py wrote)")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    load_errors = tuple(getattr(ort_state, name) for name in ("InvalidProtobuf", "InvalidGraph", "Fail", "NoSuchFile")
                        if hasattr(ort_state, name))
    try:
        return ort.InferenceSession(str(model_path), options,
                                    providers=list(providers or ["CPUExecutionProvider"]))
    except load_errors as e:  # truncated, not ONNX, an opset this onnxruntime lacks
        raise ValueError(f"{model_path}: onnxruntime cannot load it as an ONNX model "
                         f"({type(e).__name__}: {str(e).strip()})") from None


def model_metadata(session: Any) -> dict[str, Any]:
    """The export's metadata (categories, resize, limits); ValueError for a file that is not ours."""
    props = session.get_modelmeta().custom_metadata_map
    if METADATA_KEY not in props:
        raise ValueError(f"the ONNX model has no '{METADATA_KEY}' metadata: export it with tools/export.py "
                         "(export.scope=pipeline)")
    meta = json.loads(props[METADATA_KEY])
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ValueError(f"the ONNX model's '{METADATA_KEY}' metadata has format {found!r}: not a panfpn pipeline "
                         f"export ({FORMAT!r}; export it with tools/export.py, export.scope=pipeline)")
    if meta.get("version") != VERSION:
        raise ValueError(f"the ONNX model is a {FORMAT} of version {meta.get('version')}; this runner reads "
                         f"version {VERSION}: use the runner of the panfpn that exported it")
    return meta


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """uint8 ``[H, W, 3]`` RGB, upright (EXIF orientation applied), alpha dropped; 16-bit greyscale
    scaled to 8 bits (``>> 8``, as panfpn reads it: Pillow's own conversion clips it to black and
    white). ValueError naming the reason for a file that is not a decodable image."""
    try:
        with Image.open(path) as img:
            img.load()
            upright = ImageOps.exif_transpose(img)
            if upright.mode.startswith("I;16") or (upright.mode == "I" and img.format == "PNG"):
                grey = (np.clip(np.asarray(upright, dtype=np.int64), 0, 65535) >> 8).astype(np.uint8)
                return np.repeat(grey[..., None], 3, axis=2)
            return np.array(upright.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as e:  # missing, truncated, not an image, too large
        raise ValueError(f"cannot read as an image ({type(e).__name__}: {e})") from None


def run_image(session: Any, image: np.ndarray) -> dict[str, np.ndarray]:
    """The graph's outputs by name for one uint8 ``[H, W, 3]`` RGB image."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 [H, W, 3] RGB image, got {image.dtype} {image.shape}")
    names = [o.name for o in session.get_outputs()]
    values = session.run(None, {session.get_inputs()[0].name: np.ascontiguousarray(image)})
    return dict(zip(names, values))


def segments(outputs: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """The valid rows of the padded segment arrays: ``{"id", "category_id", "isthing", "score"?}``."""
    out = []
    for k in range(int(outputs["num_segments"])):
        seg = {"id": int(outputs["segments_id"][k]), "category_id": int(outputs["segments_category_id"][k]),
               "isthing": int(bool(outputs["segments_isthing"][k]))}
        if seg["isthing"]:
            seg["score"] = float(outputs["segments_score"][k])
        out.append(seg)
    return out


def areas_boxes(id_map: np.ndarray) -> dict[int, tuple[int, list[int]]]:
    """Pixel area and COCO box ``[x, y, w, h]`` of every id in ``id_map``."""
    out = {}
    for seg_id in np.unique(id_map):
        ys, xs = np.nonzero(id_map == seg_id)
        x0, y0 = int(xs.min()), int(ys.min())
        out[int(seg_id)] = (int(ys.size), [x0, y0, int(xs.max()) + 1 - x0, int(ys.max()) + 1 - y0])
    return out


def id_to_rgb(id_map: np.ndarray) -> np.ndarray:
    """int ``[H, W]`` ids -> uint8 ``[H, W, 3]`` (id = R + 256 G + 256^2 B)."""
    ids = id_map.astype(np.uint32)
    return np.stack([ids & 255, (ids >> 8) & 255, (ids >> 16) & 255], axis=-1).astype(np.uint8)


def annotation(image_id: Any, png_name: str, id_map: np.ndarray, segs: list[dict[str, Any]]) -> dict[str, Any]:
    """COCO-panoptic annotation: ``segments_info`` in id order, segments without pixels left out."""
    stats = areas_boxes(id_map)
    info = []
    for seg in segs:
        if seg["id"] not in stats:
            continue
        area, bbox = stats[seg["id"]]
        entry = {"id": seg["id"], "category_id": seg["category_id"], "area": area, "bbox": bbox, "iscrowd": 0}
        if "score" in seg:
            entry["score"] = seg["score"]
        info.append(entry)
    return {"image_id": image_id, "file_name": png_name, "segments_info": info}


def _atomic(path: Path, write) -> None:
    """``write(tmp)`` then rename ``tmp`` over ``path``; the file gets a plain open()'s permissions
    (mkstemp's are 0600: results unreadable to the group and others)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# Cityscapes' createPanopticImgs id: the leftImg8bit file's stem less "_leftImg8bit" (<city>_<seq>_<frame>)
CITYSCAPES_STEM = re.compile(r"(?P<id>[^/\\]+_\d+_\d+)_leftImg8bit")


def default_image_id(stems: Sequence[str]) -> list[Any]:
    """The ids tools/predict.py gives (``predict.image_id=auto``), so the JSON matches the dataset's
    ground truth: Cityscapes' ``<city>_<seq>_<frame>`` when every stem is ``..._leftImg8bit``, else
    COCO's int ids when every stem is digits (``000000000139`` -> 139), else the stems; the stems
    also when a rule would give two images one id."""
    city = [m.group("id") if (m := CITYSCAPES_STEM.fullmatch(s)) else None for s in stems]
    digits = [int(s) if s.isascii() and s.isdigit() else None for s in stems]
    for ids in (city, digits):
        if stems and None not in ids:
            return list(ids) if len(set(ids)) == len(ids) else list(stems)
    return list(stems)


def check_output_folder(out_dir: str | os.PathLike) -> None:
    """ValueError when ``out_dir`` holds a COCO-panoptic ``panoptic.json`` that is not a prediction JSON
    (its images have no ``path``): a dataset's ground truth in the same layout, whose PNGs a run
    would overwrite."""
    json_path = Path(out_dir) / f"{PANOPTIC_NAME}.json"
    if not json_path.is_file():
        return
    try:
        images = json.loads(json_path.read_text()).get("images") or []
    except (ValueError, AttributeError):  # not JSON or not an object: no dataset's, replaced
        return
    if not all(isinstance(img, dict) and "path" in img for img in images):
        raise ValueError(f"{json_path} is not a prediction JSON of this runner or tools/predict.py (a dataset's "
                         "ground truth?): predicting there would overwrite it and its PNGs; choose another --out")


def prepare_output_folder(out_dir: str | os.PathLike) -> None:
    """Create ``out_dir/panoptic`` and check a file can be written there: ValueError naming the
    folder (a file of that name, no permission, a read-only disk) before any image is run."""
    png_dir = Path(out_dir) / PANOPTIC_NAME
    try:
        png_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=png_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ValueError(f"cannot write the results into {out_dir} ({type(e).__name__}: "
                         f"{e.strerror or e}): choose another --out") from None


def input_files(args: Sequence[str], out_dir: str | os.PathLike) -> list[Path]:
    """The image paths of the command line: files as given, each folder's files (sorted, not its
    subfolders, hidden files and this runner's own ``panoptic.json`` left out); ValueError naming
    the paths that do not exist and the folders without files."""
    missing = [a for a in args if not Path(a).exists()]
    if missing:
        raise ValueError(f"no such file or folder: {', '.join(missing)}")
    own = (Path(out_dir) / f"{PANOPTIC_NAME}.json").resolve()
    paths: list[Path] = []
    for arg in args:
        path = Path(arg)
        if not path.is_dir():
            paths.append(path)
            continue
        files = sorted(f for f in path.iterdir() if f.is_file() and not f.name.startswith(".") and f.resolve() != own)
        if not files:
            raise ValueError(f"folder {arg} holds no files (subfolders are not searched)")
        paths += files
    return paths


def earlier_entries(out_dir: str | os.PathLike, stems: Sequence[str], image_ids: Sequence[Any],
                    categories: list[dict[str, Any]]) -> list[tuple[dict, dict]]:
    """``(images entry, annotation)`` pairs of an earlier run's prediction JSON in ``out_dir`` to keep
    listing: those whose PNG is still there and that this run neither rewrites (``stems``) nor
    gives an image id again (``image_ids``); none when the earlier run's categories differ."""
    json_path = Path(out_dir) / f"{PANOPTIC_NAME}.json"
    try:
        data = json.loads(json_path.read_text())
        images = {img["id"]: img for img in data["images"]}
        pairs = [(images[ann["image_id"]], ann) for ann in data["annotations"]]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # none yet, or unreadable: replaced
        return []
    if data.get("categories") != categories:
        print(f"{json_path} lists the results of a model with other categories: replaced", file=sys.stderr)
        return []
    new_files, new_ids = {f"{s}.png" for s in stems}, set(image_ids)
    return [(img, ann) for img, ann in pairs if ann["file_name"] not in new_files and ann["image_id"] not in new_ids
            and (Path(out_dir) / PANOPTIC_NAME / ann["file_name"]).is_file()]


def sharing_a_stem(paths: Sequence[Path], stems: Sequence[str]) -> list[str]:
    """The inputs (sorted) whose output name (``stems``) another input has too, ignoring case as
    macOS and Windows file systems do (``a.jpg`` and ``A.png`` would write one ``a.png`` there)."""
    counts = Counter(s.casefold() for s in stems)
    return sorted(str(p) for p, s in zip(paths, stems) if counts[s.casefold()] > 1)


def predict_files(session: Any, paths: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *,
                  stems: Sequence[str] | None = None, image_ids: Sequence[Any] | None = None,
                  failed: list[tuple[str, str]] | None = None,
                  read: Callable[[Path], np.ndarray] = read_rgb,
                  previous: Sequence[tuple[dict, dict]] = ()) -> Path:
    """Predict each image file; write ``<out_dir>/panoptic/<stem>.png`` and ``<out_dir>/panoptic.json``.
    Returns the JSON's path. ``stems``: output names (default the file stems, which must be unique).
    A file that ``read`` cannot decode (ValueError or OSError) is skipped and appended to ``failed``
    as ``(path, reason)`` (raised when ``failed`` is None). The JSON is written also when a run
    stops early (an error, Ctrl-C): it lists the images whose PNG was written, after the
    ``previous`` ``(images entry, annotation)`` pairs (an earlier run's, to keep listing)."""
    paths = [Path(p) for p in paths]
    stems = list(stems) if stems is not None else [p.stem for p in paths]
    same = sharing_a_stem(paths, stems)
    if same:
        raise ValueError(f"inputs with the same output name (file stem): {', '.join(same)}")
    ids = list(image_ids) if image_ids is not None else default_image_id(stems)
    check_output_folder(out_dir)
    meta = model_metadata(session)
    out_dir = Path(out_dir)
    png_dir = out_dir / PANOPTIC_NAME
    png_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [img for img, _ in previous], [ann for _, ann in previous]
    json_path = out_dir / f"{PANOPTIC_NAME}.json"
    try:
        for path, stem, image_id in zip(paths, stems, ids):
            try:
                image = read(path)
            except (OSError, ValueError) as e:
                reason = str(getattr(e, "reason", None) or e)
                if failed is None:
                    raise ValueError(f"{path}: {reason}") from None
                failed.append((str(path), reason))
                continue
            outputs = run_image(session, image)
            id_map = outputs["panoptic"]
            _atomic(png_dir / f"{stem}.png", lambda tmp: Image.fromarray(id_to_rgb(id_map)).save(tmp, format="PNG"))
            annotations.append(annotation(image_id, f"{stem}.png", id_map, segments(outputs)))
            h, w = id_map.shape
            images.append({"id": image_id, "file_name": path.name, "height": int(h), "width": int(w),
                           "path": str(path)})
    finally:
        data = {"images": images, "annotations": annotations, "categories": meta["categories"]}
        _atomic(json_path, lambda tmp: Path(tmp).write_text(json.dumps(data)))
    return json_path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="the exported .onnx file (tools/export.py, export.scope=pipeline)")
    parser.add_argument("images", nargs="+", help="image files or folders (a folder's files, not its subfolders)")
    parser.add_argument("--out", required=True, help="output folder (earlier results there stay listed)")
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: default)")
    args = parser.parse_args(argv)
    try:  # every refusal is a message (exit 2) before anything is written
        paths = input_files(args.images, args.out)
        same = sharing_a_stem(paths, [p.stem for p in paths])
        if same:
            raise ValueError(f"inputs with the same file stem would write one output file: {', '.join(same)}")
        check_output_folder(args.out)
    except ValueError as e:
        parser.error(str(e))
    try:
        session = open_session(args.model, threads=args.threads)
        meta = model_metadata(session)  # a file of another kind: a message, not a traceback
    except ValueError as e:
        parser.error(str(e) if str(e).startswith(str(args.model)) else f"{args.model}: {e}")
    stems = [p.stem for p in paths]
    ids = default_image_id(stems)
    try:
        prepare_output_folder(args.out)
    except ValueError as e:
        parser.error(str(e))
    failed: list[tuple[str, str]] = []
    try:
        json_path = predict_files(session, paths, args.out, stems=stems, image_ids=ids, failed=failed,
                                  previous=earlier_entries(args.out, stems, ids, meta["categories"]))
    except KeyboardInterrupt:  # Ctrl-C: what was written is listed (predict_files' finally), no traceback
        print(f"stopped by Ctrl-C: {Path(args.out) / f'{PANOPTIC_NAME}.json'} lists the images written "
              "until then; run the same command again to redo the rest", file=sys.stderr)
        return 130
    for path, reason in failed:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    print(f"wrote {len(paths) - len(failed)} image(s), skipped {len(failed)}: {json_path}")
    if failed and len(failed) == len(paths):  # every input unreadable: not a success
        print(f"onnx_runner.py: no image written: every input ({len(failed)}) could not be read", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
