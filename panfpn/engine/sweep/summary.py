"""One table of a sweep's jobs, built from each run folder's own result files.

A row per run folder: its overrides (hydra's record: ``.hydra/overrides.yaml``, or the
``overrides.yaml`` beside ``hydra.yaml`` in another subfolder, from ``hydra.output_subdir=.cfg``), status (``job_status.json``:
done / failed / interrupted; ``running`` while a training holds the folder's ``train.lock`` (or
may: a holder on another host cannot be checked), whatever an earlier attempt's job_status.json
says; ``unknown`` when the job wrote none, or left a lock no process holds: killed outright),
the final PQ/SQ/RQ All/Things/Stuff, mIoU and AP (``eval_results.json``, percent) and the
iteration they were evaluated at (an interrupted run's last evaluation is earlier than its end), the
objective, the wall time, the config keys that differ between the jobs' config.yaml outside the
overrides that differ (:mod:`panfpn.engine.sweep.config_diff`) and the folder. Nothing is
recomputed. Written as ``summary.csv``, ``summary.json`` and ``summary.html`` (:mod:`panfpn.engine.sweep.page`) by
:func:`write_summary`, which hydra's sweep callback and tools/summarize.py call.
"""

from __future__ import annotations

import csv
import functools
import io
import logging
import math
import os
import re
from pathlib import Path
from typing import Any, Collection, Iterable, Sequence

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from panfpn.engine.sweep.config_diff import add_config_differences
from panfpn.engine.training.job import EVAL_RESULTS, JOB_STATUS, LOSS_PREFIX
from panfpn.utils.atomic import atomic_write, write_json_atomic
from panfpn.utils.json_file import JSONFileError, load_json
from panfpn.utils.json_values import nonfinite_to_null

logger = logging.getLogger("panfpn")
SUMMARY_FILES = ("summary.csv", "summary.json", "summary.html")
OVERRIDES_RECORD = Path(".hydra", "overrides.yaml")  # hydra's record of a job's overrides, per job folder
LOCK_FILE = "train.lock"  # panfpn.engine.training.run_lock's (not imported: it imports torch)
# (column, eval_results.json path): the metrics of a row, percent.
METRICS: tuple[tuple[str, tuple[str, ...]], ...] = (
    *((f"{k.upper()}{suffix}", ("panoptic", split, k))
      for split, suffix in (("All", ""), ("Things", "_th"), ("Stuff", "_st")) for k in ("pq", "sq", "rq")),
    ("mIoU", ("sem_seg", "mIoU")),
    ("AP_mask", ("segm", "AP")),
    ("AP_box", ("bbox", "AP")),
)
METRIC_NAMES = tuple(name for name, _ in METRICS)
COLUMNS = ("job", "status", "params", "overrides", *METRIC_NAMES, "objective", "objective_name",
           "objective_direction", "images", "image_set", "image_gt", "iteration", "eval_iteration", "skipped_steps",
           "wall_s",
           "config_diff",
           "run_dir", "error")


TRAINING_MARKS = (JOB_STATUS, EVAL_RESULTS, LOCK_FILE, "metrics.jsonl", "last_checkpoint")


def overrides_record(run_dir: Path) -> Path | None:
    """hydra's ``overrides.yaml`` of the job that ran in ``run_dir``: ``.hydra/``, else a subfolder
    holding it beside ``hydra.yaml`` (``hydra.output_subdir=.cfg``); None when there is none."""
    from panfpn.engine.sweep.relaunch import find_record  # not at the top: relaunch imports this module

    return find_record(run_dir)


def is_run_dir(path: Path, output_subdir: str | None = OVERRIDES_RECORD.parent.name, *,
               checkpoints: bool = False) -> bool:
    """A folder one job wrote: its status, its results, hydra's record of it (in ``output_subdir``,
    the job's ``hydra.output_subdir``, or another subfolder), or what a training killed outright
    leaves without the first three (hydra.output_subdir=null: no record). ``checkpoints``: a
    training checkpoint alone counts too (an Optuna sweep folder's check: a trial would replace or
    continue it); a summary has no row to show for a folder of weights. The one test of a run
    folder, for the summaries and the sweep folder's check alike (a run one counted and the other
    did not was mixed into a new sweep's summary)."""
    if any((path / mark).is_file() for mark in TRAINING_MARKS):
        return True
    if checkpoints:
        from panfpn.engine.training.checkpoint import resume_candidates  # torch: not for the summaries

        if resume_candidates(path):
            return True
    from panfpn.engine.sweep.relaunch import find_record  # not at the top: relaunch imports this module

    return find_record(path, output_subdir) is not None


def find_run_dirs(roots: Iterable[str | os.PathLike]) -> list[Path]:
    """Every run folder at or below ``roots`` (a sweep folder, run folders, a tree of them), in
    hydra's job order (numbered folders by number)."""
    found: list[Path] = []
    for root in map(Path, roots):
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: no such folder")
        if is_run_dir(root):
            found.append(root)
            continue
        found += sorted((p for p in root.rglob("*") if p.is_dir() and p.name != ".hydra" and is_run_dir(p)),
                        key=natural_key)
    unique: dict[Path, Path] = {}  # one row per folder, however it was reached (a symlink, twice)
    for path in found:
        unique.setdefault(path.resolve(), path)
    return list(unique.values())


def natural_key(path: Path) -> list:
    """Sort key of a path: its text with runs of digits as numbers (job 2 before job 10)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def _dig(data: Any, keys: Sequence[str]) -> float | None:
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return _percent(data)


def _number(value: Any) -> float | None:
    """A finite number, or None (missing, null, text, NaN: an older panfpn wrote NaN literals)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _percent(value: Any) -> float | None:
    value = _number(value)
    return None if value is None or value < 0 else 100.0 * value  # COCOeval's -1: no ground truth


def _read_json(path: Path, problems: list[str] | None = None) -> dict | None:
    """The JSON object in ``path``; None when missing or unreadable (then the reason is logged
    and appended to ``problems``)."""
    if not path.is_file():
        return None
    try:
        data = load_json(path)
    except JSONFileError as err:
        logger.warning("%s", err)
        if problems is not None:
            problems.append(str(err))
        return None
    if not isinstance(data, dict):
        if problems is not None:
            problems.append(f"{path}: not a JSON object")
        return None
    return data


def read_overrides(path: Path, problems: list[str]) -> list[str]:
    """hydra's overrides.yaml (a list of strings); [] and a problem when unreadable, not a traceback
    that would stop the whole summary (and a multirun's callback)."""
    if not path.is_file():
        return []
    try:
        data = OmegaConf.to_container(OmegaConf.load(path))
    except (yaml.YAMLError, OmegaConfBaseException, OSError, UnicodeDecodeError) as err:
        problems.append(f"{path}: unreadable ({type(err).__name__}: {str(err).splitlines()[0]})")
        return []
    if not isinstance(data, list):
        problems.append(f"{path}: not a list of overrides")
        return []
    return [str(o) for o in data]


def job_row(run_dir: Path, base: Path | None = None) -> dict[str, Any]:
    """One row from one run folder's files; an unreadable file is named in the row's ``error``."""
    problems: list[str] = []
    status = _read_json(run_dir / JOB_STATUS, problems) or {}
    results = _read_json(run_dir / EVAL_RESULTS, problems) or {}
    record = overrides_record(run_dir)
    overrides = read_overrides(record, problems) if record is not None else []
    row: dict[str, Any] = {
        "job": _job_name(run_dir, base),
        "status": status.get("status", "unknown"),
        "overrides": overrides,
    }
    row.update({name: _dig(results, path) for name, path in METRICS})
    objective = status.get("objective") or {}
    row["objective"] = _number(objective.get("value"))
    row["objective_name"] = objective.get("name")
    row["objective_direction"] = objective.get("direction", "maximize")
    image_set = results.get("image_set") if isinstance(results.get("image_set"), dict) else {}
    row["images"] = image_set.get("count", results.get("num_images"))
    row["image_set"] = image_set.get("sha256")  # which images were scored (evaluation/image_set.py)
    row["image_gt"] = image_set.get("gt_sha256")  # and their ground truth (ids alike, other data: differs)
    row["iteration"] = status.get("iteration")
    row["skipped_steps"] = status.get("skipped_steps")  # train.on_nonfinite=skip: steps not taken
    row["eval_iteration"] = results.get("iteration")  # the metrics' iteration (None: tools/eval.py or older)
    row["wall_s"] = status.get("wall_s")
    row["run_dir"] = str(run_dir.resolve())
    row["error"] = "; ".join([*([status["error"]] if status.get("error") else []), *problems]) or None
    if (run_dir / LOCK_FILE).is_file():
        _mark_running(row, run_dir / LOCK_FILE, bool(status))
    return row


def _mark_running(row: dict[str, Any], lock: Path, has_status: bool) -> None:
    """A training holds (or held, when killed outright) the folder's train.lock: its
    job_status.json, if any, is an earlier attempt's (a finished run extended with resume=true).
    When this machine's lock table shows the lock free, its holder was killed: ``unknown``."""
    from panfpn.engine.sweep.lock_state import lock_held
    from panfpn.engine.training.run_lock import describe_holder, read_record

    record = read_record(lock)
    earlier = "; job_status.json and the metrics are of an earlier attempt" if has_status else ""
    held = lock_held(lock, record)
    if held is False:
        row["status"] = "unknown"
        row["error"] = (f"{lock.name} of {describe_holder(record)}, which is not held: that training ended "
                        f"without releasing it (killed outright?){earlier}")
        return
    row["status"] = "running"
    now = "running now (it holds the lock)" if held else "running now, or killed without cleaning up"
    row["error"] = f"{lock.name} of {describe_holder(record)}: {now}{earlier}"


def _job_name(run_dir: Path, base: Path | None) -> str:
    """The folder relative to ``base`` (its name when it is ``base`` or outside it)."""
    path = run_dir.absolute() if base is not None and base.is_absolute() else run_dir
    if base is None or path == base or not path.is_relative_to(base):
        return run_dir.name
    return str(path.relative_to(base))


def _scored(rows: Sequence[dict]) -> list[dict]:
    return [r for r in rows if r.get("objective") is not None and r["status"] == "done"]


def no_best_reason(rows: Sequence[dict]) -> str | None:
    """Why no job can be called best although several have an objective value: they optimise
    different objectives, or an evaluation objective scored different image sets (None: comparable)."""
    scored = _scored(rows)
    kinds = sorted({(str(r.get("objective_name")), str(r.get("objective_direction"))) for r in scored})
    if len(kinds) > 1:
        return "the jobs have different objectives (" + ", ".join(f"{n} {d}" for n, d in kinds) + ")"
    if not scored or kinds[0][0].startswith(LOSS_PREFIX):
        return None
    known = all(r.get("image_set") for r in scored)
    gt_known = all(r.get("image_gt") for r in scored)
    sets = {(r.get("image_set"), r.get("image_gt") if gt_known else None) if known else r.get("images")
            for r in scored} - {None}
    if len(sets) > 1:
        counts = sorted({r.get("images") for r in scored if r.get("images") is not None})
        what = f"{counts[0]} images each, other ids or ground truth" if len(counts) == 1 else \
            f"{', '.join(map(str, counts))} images"
        return (f"the jobs scored different image sets ({what}; "
                "compare evaluations of the same data.val and eval.max_images)")
    return None


def tied_with_best(rows: Sequence[dict], best: str | None) -> list[str]:
    """The other done jobs with the best job's objective value (Optuna, like :func:`best_job`,
    calls the first of them best: the summary says it is a tie)."""
    top = next((r["objective"] for r in rows if r["job"] == best), None)
    return [str(r["job"]) for r in _scored(rows) if top is not None and r["job"] != best and r["objective"] == top]


def best_job(rows: Sequence[dict], objective: dict | None = None) -> str | None:
    """The done job with the best objective value, in the direction its job status recorded;
    None when none has one or they are not comparable (:func:`no_best_reason`)."""
    scored = _scored(rows)
    if not scored or no_best_reason(rows):
        return None
    sign = -1.0 if scored[0].get("objective_direction") == "minimize" else 1.0
    return max(scored, key=lambda r: sign * float(r["objective"]))["job"]


def objective_of(rows: Sequence[dict]) -> dict | None:
    """The first recorded objective's name and direction (from the rows, not read again: an
    unreadable file is warned about once): not its value, which is that job's, not the sweep's
    (summary.json's ``best`` names the best job; each row has its own value)."""
    for row in rows:
        if row.get("objective_name"):
            return {"name": row["objective_name"], "direction": row.get("objective_direction") or "maximize"}
    return None


def collect(roots: Iterable[str | os.PathLike]) -> tuple[list[dict], dict | None]:
    """``(rows, objective)``: a row per run folder below ``roots``; the objective's name and
    direction as the jobs recorded them (None when the jobs had none)."""
    roots = [Path(r) for r in roots]
    run_dirs = find_run_dirs(roots)
    # job names relative to the roots' common folder: two sweeps' job 0 are a/0 and b/0
    base = roots[0] if len(roots) == 1 else Path(os.path.commonpath([r.absolute() for r in roots]))
    rows = [job_row(d, base) for d in run_dirs]
    add_params(rows, swept_keys(roots))
    add_config_differences(rows, run_dirs)
    return rows, objective_of(rows)


MULTIRUN_RECORD = "multirun.yaml"  # hydra's record of a multirun, in its sweep folder


def swept_keys(roots: Iterable[Path]) -> set[str]:
    """The keys a multirun's command line swept (``solver.base_lr=0.01,0.02``, ``interval(...)``),
    from hydra's ``multirun.yaml`` in each root that has one: a sweep stopped after its first job
    still shows that job's swept values as its params, although no other job differs yet."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from panfpn.engine.sweep.config_diff import override_key

    keys: set[str] = set()
    for root in roots:
        path = Path(root) / MULTIRUN_RECORD
        if not path.is_file():
            continue
        try:
            task = ((yaml.safe_load(path.read_text()) or {}).get("hydra") or {}).get("overrides", {}).get("task")
            parsed = OverridesParser.create().parse_overrides([str(o) for o in task or []])
        except (yaml.YAMLError, OSError, UnicodeDecodeError, AttributeError, HydraException) as err:
            logger.warning("%s: swept keys not read (%s: %s)", path, type(err).__name__, err)
            continue
        keys |= {override_key(o.input_line or "") for o in parsed if o.is_sweep_override()}
    return keys


def add_params(rows: Sequence[dict], swept: Collection[str] = ()) -> list[str]:
    """Set each row's ``params``: its overrides that differ between the jobs, or whose key the
    multirun swept (``swept``: :func:`swept_keys`; what the sweep varies); returns the overrides all
    jobs share."""
    from panfpn.engine.sweep.config_diff import override_key

    keyed = [{o.partition("=")[0]: o for o in r["overrides"]} for r in rows]
    keys = list(dict.fromkeys(k for overrides in keyed for k in overrides))
    varying = {k for k in keys if len({_parsed(overrides.get(k)) for overrides in keyed}) > 1
               or override_key(k) in swept}
    for row, overrides in zip(rows, keyed):
        row["params"] = " ".join(o for k, o in overrides.items() if k in varying)
        row["param_values"] = dict(_param_cell(o) for k, o in overrides.items() if k in varying)
    return [keyed[0][k] for k in keys if k not in varying] if rows else []


DELETED = "~"  # a param's cell when the job's override deletes the key (``~weights``)


def _param_cell(override: str) -> tuple[str, str]:
    """``(column, cell)`` of a param in summary.csv: the key without hydra's ``+``/``++``/``~``, the
    value as the job's override wrote it (``solver.base_lr=1e-2``: ``1e-2``); ``~`` for a deletion."""
    key, _, value = override.partition("=")
    return key.lstrip("+~"), DELETED if key.startswith("~") else value


def param_columns(rows: Sequence[dict]) -> dict[str, str]:
    """summary.csv's param columns, ``{column: key}``: every job's params' keys (first seen first),
    each column named by its key, or ``param:<key>`` for a key named like one of :data:`COLUMNS`."""
    keys = dict.fromkeys(k for r in rows for k in r.get("param_values") or {})
    return {f"param:{k}" if k in COLUMNS else k: k for k in keys}


def shared_overrides(rows: Sequence[dict]) -> list[str]:
    """The overrides of the first job whose config key is none of its params' keys (set by
    :func:`add_params`): those every job shares. Compared by key, not by the params' text: a key
    given twice (the last one counts) or a value with a space that holds another override's text
    were listed as shared, or hidden."""
    from panfpn.engine.sweep.config_diff import override_key

    if not rows:
        return []
    varying = {override_key(k) for k in rows[0].get("param_values") or {}}
    return [o for o in rows[0]["overrides"] if override_key(o) not in varying]


@functools.lru_cache(maxsize=None)
def _parsed(override: str | None) -> str | None:
    """An override's value as hydra parses it, as text: a sweep's jobs record ``x=False`` where a
    single run records the ``x=false`` it was given, and ``0.01`` is ``1e-2``; the text when it
    does not parse."""
    if override is None:
        return None
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        return "=" + repr(OverridesParser.create().parse_override(override).value())  # "~key": "=None"
    except (HydraException, ValueError):
        return override


def to_csv(rows: Sequence[dict]) -> str:
    """summary.csv: :data:`COLUMNS`, and after ``params`` a column per param (:func:`param_columns`)
    holding each job's value as written, empty for a job without it (one column per swept key,
    for pandas or a spreadsheet)."""
    extra = param_columns(rows)
    at = COLUMNS.index("params") + 1
    fields = [*COLUMNS[:at], *extra, *COLUMNS[at:]]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        cells = {k: ("" if row.get(k) is None else " ".join(row[k]) if isinstance(row[k], list) else row[k])
                 for k in COLUMNS}
        values = row.get("param_values") or {}
        cells.update({column: values.get(key, "") for column, key in extra.items()})
        writer.writerow(cells)
    return buffer.getvalue()


def _fmt(value: Any, decimals: int = 2) -> str:
    return "-" if value is None else f"{value:.{decimals}f}" if isinstance(value, float) else str(value)


def objective_decimals(rows: Sequence[dict]) -> int:
    """The decimals the objective column needs: 2, or more (up to 6) when two different values
    would look alike (losses of 4.2888 and 4.2906 both showed 4.29, one of them called best)."""
    values = {float(r["objective"]) for r in rows if isinstance(r.get("objective"), (int, float))}
    for decimals in range(2, 7):
        if len({f"{v:.{decimals}f}" for v in values}) == len(values):
            return decimals
    return 6


def status_text(row: dict) -> str:
    """The status as shown: with the steps skipped for non-finite losses, when any were."""
    skipped = row.get("skipped_steps")
    return f"{row['status']} ({skipped} steps skipped)" if skipped else str(row["status"])


def format_table(rows: Sequence[dict], objective: dict | None = None) -> str:
    """The console table: job, status, main metrics, wall time, overrides."""
    cols = ("job", "status", "PQ", "PQ_th", "PQ_st", "mIoU", "AP_mask", "objective", "eval_iteration", "wall_s",
            "params")
    decimals = {"objective": objective_decimals(rows)}
    cells = [[status_text(r) if c == "status" else _fmt(r.get(c), decimals.get(c, 2)) for c in cols] for r in rows]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
    best, reason = best_job(rows, objective), no_best_reason(rows)
    if best is not None:
        row = next(r for r in rows if r["job"] == best)
        tied = tied_with_best(rows, best)
        lines.append(f"best {row['objective_name']} ({row['objective_direction']}): job {best}"
                     + (f" (tied with job {', '.join(tied)}: the same value)" if tied else ""))
    elif reason:
        lines.append(f"no best job: {reason}")
    notes = [r for r in rows if r.get("error")]  # why a job failed, is running or unknown
    if notes:
        lines += ["notes:"] + [f"  job {r['job']} ({r['status']}): {_one_line(str(r['error']))}" for r in notes]
    if any(r.get("config_diff") for r in rows):
        lines += ["config.yaml differs outside the overrides (config_diff):"]
        lines += [f"  job {r['job']}: {r['config_diff']}" for r in rows if r.get("config_diff")]
    return "\n".join(lines)


def _one_line(text: str, limit: int = 200) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[:limit - 1] + "…"


def write_summary(roots: Iterable[str | os.PathLike], out_dir: str | os.PathLike, *,
                  title: str | None = None) -> list[dict]:
    """Collect the run folders below ``roots`` and write summary.csv / .json / .html into
    ``out_dir``; returns the rows."""
    from panfpn.engine.sweep.page import build_page

    out = Path(out_dir)
    rows, objective = collect(roots)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "summary.csv", lambda f: f.write(to_csv(rows)), mode="w")
    best = best_job(rows, objective)
    summary = {"objective": objective, "best": best, "tied_with_best": tied_with_best(rows, best),
               "no_best_reason": no_best_reason(rows),
               "columns": list(COLUMNS), "jobs": rows}
    write_json_atomic(out / "summary.json", nonfinite_to_null(summary))  # NaN in an older run's files: null
    page = build_page(rows, objective, title=title or f"Sweep: {out.resolve()}")
    atomic_write(out / "summary.html", lambda f: f.write(page), mode="w")
    return rows
