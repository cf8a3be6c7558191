"""The paper's experiment grids as MLflow runs, and their paper-style tables built from the local evaluations.

Exp-2: SF with the four input sets x three fine-tuning modes (frozen, unfrozen, gradual). Exp-3: SF, EF and
EFI with gradual fine-tuning and PMs+N. Each grid also gets the threshold baseline (``threshold``: rCBF < 30 %
core, Tmax > 6 s hypoperfusion, see :mod:`scripts.perfusion.thresholds`) and the voxel-wise tissue-outcome baseline
(``voxel``, :mod:`scripts.learning.experiments.voxel_baseline`, fitted on the training split) scored the same way.
Every cell is an ordinary bundle training (train.json with overrides, launched in-process like every
workflow, :func:`scripts.cli.run_workflow`) followed by its evaluation, in MLflow experiment ``exp2`` /
``exp3``; rerunning the command skips finished cells and resumes interrupted ones.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from ...cli import TRACKING_SETTINGS, run_workflow
from ...io import save_csv, save_text
from ...perfusion.thresholds import ThresholdSegmentation
from ..engine.checkpoints import drop_resume_point
from ..engine.metrics import metric_names
from ..engine.reports import evaluate_predictions, load_evaluation, markdown_table, save_evaluation
from ..tracking.runs import check_tracking_uri, experiment_id, log_metrics, run_finished, tracking_client
from .voxel_baseline import FEATURES, evaluate_voxel_baseline, fit_voxel_baseline

logger = logging.getLogger(__name__)

GRIDS = {
    "exp2": [
        ("SF", inputs, mode)
        for mode in ("frozen", "unfrozen", "gradual")
        for inputs in ("PMs", "PMs+M", "PMs+N", "PMs+M+N")
    ],
    "exp3": [(variant, "PMs+N", "gradual") for variant in ("SF", "EF", "EFI")],
}
THRESHOLD = "threshold"  # the RAPID-like threshold baseline, a row of every table
VOXEL = "voxel"  # the learned voxel-wise tissue-outcome baseline, another row
MODE_LETTER = {"frozen": "F", "unfrozen": "U", "gradual": "G", "gradual_full": "G"}


def cell_name(variant: str, inputs: str, mode: str) -> str:
    """Run name in the paper's notation, file-system safe: ``SF_G(PMs,N)`` -> ``SF_G-PMs-N``."""
    return f"{variant}_{MODE_LETTER[mode]}-" + inputs.replace("+", "-")


def run_grid(
    grid: str = "exp2",
    datalist: str = "data/synthetic/datalist.json",
    output_root: str = "runs",
    tracking_uri: str | None = None,
    overrides: dict | None = None,
    config_dir: str = "bundle/configs",
) -> list[str]:
    """Train and evaluate every cell of ``grid`` not finished yet; return the run names."""
    if grid not in GRIDS:
        raise ValueError(f"grid must be one of {', '.join(GRIDS)}, got {grid!r}.")
    uri = check_tracking_uri(tracking_uri)
    names = []
    for variant, inputs, mode in GRIDS[grid]:
        name = cell_name(variant, inputs, mode)
        names.append(name)
        if run_finished(uri, grid, name):
            logger.info("%s/%s already finished: skipped", grid, name)
            continue
        out = os.path.join(output_root, grid, name)
        settings = {
            "datalist": datalist,
            "output_dir": out,
            "tracking_uri": uri,
            "experiment_name": grid,
            "variant": variant,
            "inputs": inputs,
            "finetuning": mode,
            "resume": True,
            **(overrides or {}),
        }
        logger.info("%s/%s: training", grid, name)
        tracking = f"{config_dir}/{TRACKING_SETTINGS}"
        run_workflow("training", f"{config_dir}/train.json", tracking=tracking, **settings)
        configs = [f"{config_dir}/train.json", f"{config_dir}/evaluate.json"]
        run_workflow("evaluating", configs, split="validation", tracking=tracking, **settings)
        drop_resume_point(out)
    for baseline in BASELINES:
        names.append(baseline)
        if run_finished(uri, grid, baseline):
            logger.info("%s/%s already finished: skipped", grid, baseline)
        else:
            run_baseline(baseline, grid, datalist, output_root, uri, config_dir)
    return names


def log_baseline_run(
    experiment: str, name: str, params: dict, summary: list[dict], reports: Path, split: str, tracking_uri: str
) -> str:
    """An MLflow run ``name`` in ``experiment`` holding a baseline's params, ``<split>_*`` metrics and reports."""
    prefix = {"validation": "val", "training": "train"}.get(split, split)
    client = tracking_client(tracking_uri)
    run = client.create_run(experiment_id(client, experiment), run_name=name)
    for key, value in params.items():
        client.log_param(run.info.run_id, key, value)
    log_metrics(client, run.info.run_id, metric_names(summary, prefix))
    client.log_artifacts(run.info.run_id, str(reports), artifact_path=split)
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def threshold_row(datalist: str, out: Path, split: str, config_dir: str) -> tuple[dict, list[dict]]:
    """The threshold baseline: inference in threshold mode on ``split`` (labels under ``out/predictions``),
    scored like the networks (reports under ``out/<split>``); its parameters and summary."""
    predictions = out / "predictions"
    run_workflow(
        "inference",
        [f"{config_dir}/inference.json", f"{config_dir}/inference_threshold.json"],
        workflow_type="infer",
        input=datalist,
        split=split,
        output_dir=str(predictions),
        overwrite=True,
        montage=False,
    )
    _, summary = evaluate_predictions(
        datalist, predictions, split=split, output_dir=out / split, pattern="{id}/label.nii.gz", title=THRESHOLD
    )
    thresholds = ThresholdSegmentation()  # the inference config's defaults are the module's
    params = {
        "variant": "threshold",
        "core_rcbf": thresholds.core_rcbf,
        "hypoperfused_tmax": thresholds.hypoperfused_tmax,
        "normal_tmax": thresholds.normal_tmax,
    }
    return params, summary


def voxel_row(datalist: str, out: Path, split: str, config_dir: str, seed: int = 0) -> tuple[dict, list[dict]]:
    """The voxel-wise tissue-outcome baseline (:mod:`scripts.learning.experiments.voxel_baseline`): fitted on the
    training split, its predictions on ``split`` scored like the networks' (reports under ``out/<split>``)."""
    summary = evaluate_voxel_baseline(datalist, fit_voxel_baseline(datalist, out, seed=seed), split, out)
    return {"variant": "voxel", "features": ",".join(FEATURES), "seed": seed}, summary


BASELINES = {THRESHOLD: threshold_row, VOXEL: voxel_row}
"""The baselines every grid's table carries beside its networks."""


def run_baseline(
    baseline: str,
    experiment: str,
    datalist: str,
    output_root: str,
    tracking_uri: str,
    config_dir: str = "bundle/configs",
    split: str = "validation",
) -> str:
    """A baseline of :data:`BASELINES` as a table row: scored on ``split`` under
    ``<output_root>/<experiment>/<baseline>`` and an MLflow run named after it in ``experiment`` holding its
    metrics and reports; the run's id."""
    out = Path(output_root) / experiment / baseline
    params, summary = BASELINES[baseline](datalist, out, split, config_dir)
    save_evaluation(out / split, summary, method=baseline, split=split, datalist=str(datalist), **params)
    return log_baseline_run(experiment, baseline, params, summary, out / split, split, tracking_uri)


def run_grids(
    grids: Sequence[str] = ("exp2", "exp3"),
    datalist: str = "data/synthetic/datalist.json",
    output_root: str = "runs",
    tracking_uri: str | None = None,
    overrides: dict | None = None,
    config_dir: str = "bundle/configs",
) -> dict[str, list[str]]:
    """:func:`run_grid` for each of ``grids``; their run names by grid."""
    return {grid: run_grid(grid, datalist, output_root, tracking_uri, overrides, config_dir) for grid in grids}


def build_tables(
    grids: tuple[str, ...] = ("exp2", "exp3"),
    output_root: str = "runs",
    output_dir: str | None = None,
) -> dict[str, Path]:
    """Paper-style Markdown + CSV tables (mean [95 % CI] and SD per class and group, validation split) of every
    cell and baseline of ``grids`` evaluated under ``output_root``, from their evaluation records (local results,
    :func:`~scripts.learning.engine.reports.load_evaluation`: MLflow only receives them), written to
    ``output_dir`` (default ``<output_root>/tables``)."""
    written: dict[str, Path] = {}
    out = Path(output_dir if output_dir is not None else Path(output_root) / "tables")
    for grid in grids:
        markdown, rows = [], []
        for name in [cell_name(*cell) for cell in GRIDS[grid]] + list(BASELINES):
            record = load_evaluation(Path(output_root) / grid / name / "validation")
            if record is None:  # not evaluated (yet): not a row
                continue
            summary = record["summary"]
            rows += [{"run": name, **s} for s in summary]
            table = markdown_table(summary, title=name)
            markdown.append(table if not markdown else "\n".join(table.splitlines()[2:]) + "\n")
        if not rows:
            logger.warning("%s: no evaluated cell under %s; run the grid first", grid, output_root)
            continue
        written[f"{grid}_md"] = save_text(out / f"{grid}.md", "".join(markdown))
        written[f"{grid}_csv"] = save_csv(out / f"{grid}.csv", rows)
    return written
