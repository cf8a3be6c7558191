"""What an evaluation writes: the per-patient and per-group reports, the paper-style Markdown table, and the
evaluation's record (:data:`EVALUATION_RECORD`), from which the experiment grids' tables are built; and the
scoring of a folder of label predictions (any method's, the threshold rule's included) the same way.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from ignite.engine import Engine, Events

from ...io import LABEL_VALUES, CTPDataError, load_datalist, save_csv, save_json, save_text
from .metrics import CLASSES, LesionMetrics, patient_row, summarise


def markdown_table(summary: Sequence[Mapping], title: str = "model") -> str:
    """Markdown table laid out like the paper's Table 2: Dice, Hausdorff (hd95, mm) and ΔV (|dv|, ml), each as
    the mean over patients and its 95 % bootstrap interval."""
    cell = {(s["group"], s["class"], s["metric"]): s for s in summary}

    def fmt(group: str, name: str, metric: str) -> str:
        s = cell.get((group, name, metric))
        if s is None or math.isnan(float(s["mean"])):
            return "–"
        digits = 2 if metric == "dice" else 1
        low, high = float(s.get("ci_low", math.nan)), float(s.get("ci_high", math.nan))
        interval = f" [{low:.{digits}f}, {high:.{digits}f}]" if not math.isnan(low) else ""
        return f"{float(s['mean']):.{digits}f}{interval}"

    header = (
        "| model | class | Dice LVO ↑ | Dice Non-LVO ↑ | HD95 LVO (mm) ↓ | HD95 Non-LVO (mm) ↓ | "
        "ΔV LVO (ml) ↓ | ΔV Non-LVO (ml) ↓ | ΔV WIS (ml) ↓ | Dice all ↑ |"
    )
    lines = [header, "|" + "---|" * 10]
    for name in CLASSES:
        lines.append(
            f"| {title} | {name} | {fmt('LVO', name, 'dice')} | {fmt('Non-LVO', name, 'dice')} | "
            f"{fmt('LVO', name, 'hd95')} | {fmt('Non-LVO', name, 'hd95')} | {fmt('LVO', name, 'adv_ml')} | "
            f"{fmt('Non-LVO', name, 'adv_ml')} | {fmt('WIS', name, 'adv_ml')} | {fmt('all', name, 'dice')} |"
        )
    return "\n".join(lines) + "\n"


def write_reports(
    rows: Sequence[Mapping], summary: Sequence[Mapping], output_dir: str | os.PathLike, title: str = "model"
) -> dict[str, Path]:
    """Write ``metrics_per_patient.csv``, ``metrics_summary.csv`` and ``metrics_summary.md`` atomically."""
    out = Path(output_dir)
    return {
        "per_patient": save_csv(out / "metrics_per_patient.csv", rows),
        "summary": save_csv(out / "metrics_summary.csv", summary),
        "markdown": save_text(out / "metrics_summary.md", markdown_table(summary, title)),
    }


EVALUATION_RECORD = "evaluation.json"
"""The record a finished evaluation leaves beside its reports: what it scored and its per-group summary. Tables
(the experiment grids') are built from these records, never from a training's in-loop validation reports."""


def save_evaluation(output_dir: str | os.PathLike, summary: Sequence[Mapping], **context: Any) -> Path:
    """Write :data:`EVALUATION_RECORD` in ``output_dir``: ``context`` (split, checkpoint, datalist, ...) and the
    ``summary`` of :func:`summarise`."""
    return save_json(Path(output_dir) / EVALUATION_RECORD, {**context, "summary": [dict(s) for s in summary]})


def load_evaluation(output_dir: str | os.PathLike) -> dict | None:
    """The :data:`EVALUATION_RECORD` in ``output_dir``; None where no evaluation finished there."""
    path = Path(output_dir) / EVALUATION_RECORD
    return json.loads(path.read_text()) if path.is_file() else None


def _load_labels(path: Path, what: str, pid: str) -> tuple[np.ndarray, tuple[float, ...]]:
    if not path.is_file():
        raise CTPDataError(f"patient {pid}: {what} file not found: {path}.")
    img = nib.load(str(path))
    data = np.asarray(img.dataobj)
    bad = np.setdiff1d(np.unique(data), LABEL_VALUES)
    if bad.size:
        raise CTPDataError(f"patient {pid}: {path}: {what} values must be 0, 1, 2; found {bad.tolist()[:5]}.")
    return data.astype(np.uint8), tuple(float(z) for z in img.header.get_zooms()[:3])


def evaluate_predictions(
    datalist: str | os.PathLike,
    predictions: str | os.PathLike | None,
    split: str = "test",
    output_dir: str | os.PathLike | None = None,
    pattern: str = "{id}.nii.gz",
    title: str = "model",
) -> tuple[list[dict], list[dict]]:
    """Score a folder of label predictions (``pattern`` per patient id) against a datalist split.

    Any model's outputs, a thresholding method's included, are scored the same way. Returns the
    per-patient rows and the summary, and writes the reports into ``output_dir`` when given.
    """
    if predictions is None:
        raise CTPDataError("predictions: no folder given; pass --predictions path/to/folder.")
    items = load_datalist(datalist, splits=(split,))[split]
    if not items:
        raise CTPDataError(f"{datalist}: split '{split}' has no patients.")
    rows = []
    for item in items:
        pid = item["id"]
        pred, pred_spacing = _load_labels(Path(predictions) / pattern.format(id=pid), "prediction", pid)
        label, spacing = _load_labels(Path(item["label"]), "label", pid)
        if pred.shape != label.shape:
            raise CTPDataError(
                f"patient {pid}: prediction shape {pred.shape} differs from label {label.shape} ({item['label']})."
            )
        if not np.allclose(pred_spacing, spacing, rtol=1e-3):
            raise CTPDataError(
                f"patient {pid}: prediction spacing {pred_spacing} differs from label {spacing} ({item['label']})."
            )
        rows.append(patient_row(pid, item["group"], pred, label, spacing))
    summary = summarise(rows)
    if output_dir is not None:
        write_reports(rows, summary, output_dir, title)
    return rows, summary


class MetricReports:
    """After each evaluation (its one epoch, so before any ``COMPLETED`` handler such as the MLflow logger reads
    them), write the per-patient CSV and the per-group summaries of a LesionMetrics; with ``record`` (the
    evaluation's context: split, checkpoint, ...) also its :data:`EVALUATION_RECORD`."""

    def __init__(
        self,
        metric: LesionMetrics,
        output_dir: str | os.PathLike,
        title: str = "model",
        record: Mapping[str, Any] | None = None,
    ) -> None:
        self.metric, self.output_dir, self.title, self.record = metric, output_dir, title, record

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if self.metric.rows:
            summary = summarise(self.metric.rows)
            write_reports(self.metric.rows, summary, self.output_dir, self.title)
            if self.record is not None:
                save_evaluation(self.output_dir, summary, **self.record)
