"""The checks tools/train.py makes of its config before it builds a model or opens a dataset, in
one place: each job runs them at its start (``run_training_job`` the job's, ``train_from_config``
the config's), and a multirun runs them on every job before the first starts
(:mod:`panfpn.engine.sweep.precheck`), so both refuse the same configs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from omegaconf import DictConfig

if TYPE_CHECKING:
    from panfpn.data.metadata import DatasetMetadata


def check_job_start(cfg: DictConfig) -> str | None:
    """The job's checks (sweeper direction, ``train.objective``); returns the objective's warning
    (this run does not evaluate) or None. Raises ConfigError naming the key."""
    from panfpn.engine.sweep.direction import check_sweeper_direction
    from panfpn.engine.training.job import check_objective

    check_sweeper_direction(cfg)  # optuna minimises by default
    return check_objective(cfg)


def check_training_config(cfg: DictConfig, overrides: Sequence[str] | None = None) -> None:
    """Every key declared and valid, no other tool's option typed (``overrides``; None: hydra's
    command line), the data transforms buildable. Raises ConfigError naming the key."""
    from panfpn.data.transforms import check_data_transforms
    from panfpn.engine.config import validate_config
    from panfpn.engine.config.unread import refuse_unread_overrides

    validate_config(cfg)
    refuse_unread_overrides("train", overrides, cfg=cfg)  # predict.* etc. typed to tools/train.py
    check_data_transforms(cfg)


def check_model_labels(cfg: DictConfig, metadata: DatasetMetadata) -> None:
    """The model config's class counts and thing labels are the dataset's (``metadata``): the model
    configs derive them from ``data.*``, so they differ only when set by hand, and then a model
    with fewer classes than the data trained silently wrong and one with more failed at its final
    evaluation. Fine-tuning from weights with other counts is ``weights_partial=true``, not this.
    Raises ConfigError naming the key."""
    from panfpn.engine.job_setup import resolved
    from panfpn.modeling.build import check_labels_fit

    check_labels_fit(resolved(cfg, "model") or {}, metadata, "of data.metadata")
