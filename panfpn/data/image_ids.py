"""The ``image_id`` a prediction of an image file gets, so that it matches the dataset's ground
truth (``predict.image_id``): the output stem, createPanopticImgs' Cityscapes id, COCO's integer
id, or a regular expression's group."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Sequence

from panfpn.utils.errors import ConfigError

logger = logging.getLogger("panfpn")

# The named rules of image_ids; anything else is a regular expression.
IMAGE_ID_RULES = ("auto", "stem", "cityscapes", "coco_int")

# createPanopticImgs: image id = the gtFine file name without "_gtFine_instanceIds.png", i.e. the
# leftImg8bit file name without "_leftImg8bit.png": <city>_<sequence>_<frame>.
_CITYSCAPES_STEM = re.compile(r"(?P<id>[^/\\]+_\d+_\d+)_leftImg8bit")


def id_rule(rule: str) -> str | re.Pattern:
    """A named rule, or the compiled regular expression (one group, or a group named ``id``)."""
    if rule in IMAGE_ID_RULES:
        return rule
    try:
        pattern = re.compile(rule)
    except re.error as e:
        raise ConfigError(f"config key 'predict.image_id' must be one of {list(IMAGE_ID_RULES)} or a regular "
                          f"expression, got {rule!r} ({e})") from None
    if pattern.groups < 1:
        raise ConfigError(f"config key 'predict.image_id': the regular expression {rule!r} needs a "
                          "group (the id), e.g. '(.+)_leftImg8bit'")
    return pattern


def id_of(path: Path, rule: str | re.Pattern) -> str | int | None:
    """One file's image id under a rule; None when the file does not follow it."""
    stem = path.stem
    if rule == "cityscapes":
        m = _CITYSCAPES_STEM.fullmatch(stem)
        return m.group("id") if m else None
    if rule == "coco_int":
        return int(stem) if stem.isascii() and stem.isdigit() else None
    m = rule.fullmatch(stem)  # type: ignore[union-attr]
    if m is None:
        return None
    return m.group("id") if "id" in rule.groupindex else m.group(1)  # type: ignore[union-attr]


def image_ids(paths: Sequence[Path], stems: Sequence[str], rule: str = "auto") -> list[str | int]:
    """The JSON ``image_id`` of each input, so predictions match the dataset's ground truth.

    ``stem``: the output stem. ``cityscapes``: ``<city>_<seq>_<frame>_leftImg8bit.*`` gives
    createPanopticImgs' ``<city>_<seq>_<frame>``. ``coco_int``: an all-digit stem as an int
    (``000000000139.jpg`` -> 139, COCO's ids). A regular expression: matched against the whole
    file stem, its group ``id`` (or first group) is the id. ``auto``: ``cityscapes`` when every
    file follows it, else ``coco_int`` when every stem is digits, else ``stem``; and ``stem`` when
    the chosen rule would give two files one id.

    Raises:
        ConfigError: with an explicit rule, a file that does not follow it or two files with one id.
    """
    if rule == "auto":
        for candidate in ("cityscapes", "coco_int"):
            ids = [id_of(p, candidate) for p in paths]
            if paths and None not in ids:
                if len(set(ids)) == len(ids):
                    return ids  # type: ignore[return-value]
                logger.warning("predict.image_id=auto: the %s rule gives two inputs one id; using the "
                               "output stems", candidate)
                break
        return list(stems)
    if rule == "stem":
        return list(stems)
    compiled = id_rule(rule)
    ids: list[str | int] = []
    owner: dict[str | int, Path] = {}
    for p in paths:
        image_id = id_of(p, compiled)
        if image_id is None:
            raise ConfigError(f"config key 'predict.image_id'={rule!r}: {p} does not follow the rule")
        if image_id in owner:
            raise ConfigError(f"config key 'predict.image_id'={rule!r}: {owner[image_id]} and {p} both "
                              f"get image id {image_id!r}; use predict.image_id=stem")
        owner[image_id] = p
        ids.append(image_id)
    return ids
