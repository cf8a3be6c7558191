"""Per-patient, per-group lesion metrics: Dice, Hausdorff distance (mm) and volume error (ml).

Per patient, on the whole 3D volume, for ``penumbra`` (label 1), ``core`` (2) and ``hypoperfused`` (1 or 2):

* ``dice`` = 2|P∩T| / (|P| + |T|).
* ``hd`` and ``hd95``: maximum and 95th-percentile symmetric Hausdorff distance between the boundary
  voxels of prediction and truth, in mm with the volume's voxel spacing (MONAI's
  ``compute_hausdorff_distance``).
* ``dv_ml`` = V_pred - V_true (signed) and ``adv_ml`` = |dv_ml|, in ml.

Empty masks (WIS patients have no lesion; small lesions may be missed), applied the same everywhere:

* both empty: Dice = 1 (counted in ``n_both_empty``); Hausdorff is undefined.
* one empty: Dice = 0; Hausdorff is undefined.
* undefined values are NaN per patient, left out of means and SDs and counted (``n_undefined``); they are
  never averaged as zeros. Volumes are always defined.

Groups are summarised as mean ± SD (sample SD, ddof = 1) over patients, per group (LVO, Non-LVO, WIS) and
over all, with a 95 % percentile bootstrap confidence interval of the mean over patients (``ci_low``,
``ci_high``; :func:`bootstrap_ci`). Metric names follow ``shared/DESIGN.md``: ``<split>_<metric>_<class>_<group>``
and ``..._ci_low`` / ``..._ci_high``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from ignite.metrics import Metric, MetricsLambda
from monai.metrics import compute_dice, compute_hausdorff_distance
from monai.utils import convert_to_numpy

from ...io import GROUPS, voxel_volume_ml

LESION_CLASSES = ("penumbra", "core")
LESION_GROUPS = ("LVO", "Non-LVO")
CLASSES: dict[str, tuple[int, ...]] = {"penumbra": (1,), "core": (2,), "hypoperfused": (1, 2)}
METRICS = ("dice", "hd", "hd95", "dv_ml", "adv_ml")
SUMMARY_GROUPS = (*GROUPS, "all")
BOOTSTRAP_RESAMPLES = 2000
"""Resamples of the patients for the confidence intervals (fixed generator seed 0: same rows, same interval)."""


def bootstrap_ci(values: np.ndarray, level: float = 0.95, resamples: int = BOOTSTRAP_RESAMPLES) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (patients drawn with replacement); NaN for no
    values, the value itself for one."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(0)
    means = values[rng.integers(0, values.size, size=(resamples, values.size))].mean(axis=1)
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return float(low), float(high)


def lesion_metrics(pred: np.ndarray, label: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
    """Metrics of one patient's 3D label volumes; keys ``<metric>_<class>``, NaN where undefined."""
    pred, label = np.asarray(pred), np.asarray(label)
    spacing = tuple(float(s) for s in spacing)  # e.g. numpy floats from a NIfTI header
    if pred.shape != label.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from label shape {label.shape}.")
    voxel_ml = voxel_volume_ml(spacing[: pred.ndim])
    out: dict[str, float] = {}
    for name, values in CLASSES.items():
        p, t = np.isin(pred, values), np.isin(label, values)
        n_p, n_t = int(p.sum()), int(t.sum())
        pt, tt = torch.from_numpy(p)[None, None], torch.from_numpy(t)[None, None]
        out[f"dice_{name}"] = float(compute_dice(pt, tt, ignore_empty=False))  # 1 when both are empty
        if n_p and n_t:
            hd = compute_hausdorff_distance(pt, tt, include_background=True, spacing=list(spacing[: pred.ndim]))
            hd95 = compute_hausdorff_distance(
                pt, tt, include_background=True, percentile=95, spacing=list(spacing[: pred.ndim])
            )
            out[f"hd_{name}"], out[f"hd95_{name}"] = float(hd.item()), float(hd95.item())
        else:
            out[f"hd_{name}"] = out[f"hd95_{name}"] = math.nan
        out[f"dv_ml_{name}"] = (n_p - n_t) * voxel_ml
        out[f"adv_ml_{name}"] = abs(n_p - n_t) * voxel_ml
    return out


def summarise(rows: Iterable[Mapping]) -> list[dict]:
    """Mean ± SD per group and over all from per-patient rows (each with ``group`` and metric keys)."""
    rows = list(rows)
    summary = []
    for group in SUMMARY_GROUPS:
        members = [r for r in rows if group == "all" or r["group"] == group]
        if not members:
            continue
        for name in CLASSES:
            for metric in METRICS:
                values = np.array([r[f"{metric}_{name}"] for r in members], dtype=np.float64)
                defined = values[~np.isnan(values)]
                entry = {
                    "group": group,
                    "class": name,
                    "metric": metric,
                    "n": int(defined.size),
                    "n_undefined": int(values.size - defined.size),
                    "mean": float(defined.mean()) if defined.size else math.nan,
                    "sd": float(defined.std(ddof=1)) if defined.size > 1 else (0.0 if defined.size else math.nan),
                }
                entry["ci_low"], entry["ci_high"] = bootstrap_ci(defined)
                if metric == "dice":
                    entry["n_both_empty"] = sum(
                        1
                        for r in members
                        if not r.get(f"has_pred_{name}", True) and not r.get(f"has_true_{name}", True)
                    )
                summary.append(entry)
    return summary


def metric_names(summary: Iterable[Mapping], split: str, intervals: bool = True) -> dict[str, float]:
    """``{<split>_<metric>_<class>_<group>: mean}`` for the defined means, and with ``intervals`` also
    ``..._ci_low`` / ``..._ci_high`` where the summary has them (MLflow / Ignite names)."""
    names = {}
    for s in summary:
        if math.isnan(float(s["mean"])):
            continue
        name = f"{split}_{s['metric']}_{s['class']}_{s['group']}"
        names[name] = float(s["mean"])
        for bound in ("ci_low", "ci_high") if intervals else ():
            if s.get(bound) not in (None, "") and not math.isnan(float(s[bound])):
                names[f"{name}_{bound}"] = float(s[bound])
    return names


def lesion_mean(
    metrics: Mapping[str, float], split: str, metric: str = "dice", groups: Sequence[str] = LESION_GROUPS
) -> float:
    """Mean of ``<split>_<metric>_<class>_<group>`` over penumbra and core and the given groups (NaN entries
    and missing ones left out; NaN if none is defined). With Dice over LVO and Non-LVO this is the model-selection
    score of training (``val_dice_lesion``) and the search's ``dice`` objective: unlike the validation loss it
    ranks a network that predicts nothing low (Dice 0 on every patient who has the class), and WIS patients
    (no lesion) do not dilute it."""
    values = [float(metrics.get(f"{split}_{metric}_{c}_{g}", math.nan)) for c in LESION_CLASSES for g in groups]
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else math.nan


def selection_metric(lesion: LesionMetrics) -> MetricsLambda:
    """``lesion_mean`` of an attached :class:`LesionMetrics` as a scalar Ignite metric (an evaluator's key metric)."""
    return MetricsLambda(lambda computed: lesion_mean(computed, lesion.split), lesion)


def patient_row(pid: str, group: str, pred: np.ndarray, label: np.ndarray, spacing: Sequence[float]) -> dict:
    """One per-patient row: id, group, presence flags and the metrics."""
    row: dict = {"id": pid, "group": group}
    for name, values in CLASSES.items():
        row[f"has_pred_{name}"] = bool(np.isin(pred, values).any())
        row[f"has_true_{name}"] = bool(np.isin(label, values).any())
    row.update(lesion_metrics(pred, label, spacing))
    return row


def label_indices(x: Any) -> np.ndarray:
    """A 3D label of class indices (uint8) from indices, or from a channel-first one-channel, one-hot or
    probability volume."""
    array = convert_to_numpy(x)
    if array.ndim == 4:  # channel first: one channel of indices, or one-hot / probabilities
        array = array[0] if array.shape[0] == 1 else array.argmax(axis=0)
    return np.rint(array).astype(np.uint8)


class LesionMetrics(Metric):
    """Ignite metric: per-patient lesion metrics over an evaluation, summarised per group.

    ``update`` takes the (decollated) evaluator output: a dict or list of dicts with ``pred`` and
    ``label`` 3D volumes (class indices or one-hot / probabilities, channel first), the patient's
    group and id (under ``group_key`` and ``id_key``); the spacing is read from the label's MetaTensor
    (``pixdim``) or a ``spacing`` key.
    ``compute`` returns ``{<split>_<metric>_<class>_<group>: mean}``, with ``confidence_intervals`` also the
    95 % bootstrap bounds (``..._ci_low`` / ``..._ci_high``: evaluation sets it, validation every epoch does
    not); Ignite stores each entry in ``engine.state.metrics``. The per-patient rows stay in ``self.rows``.
    """

    def __init__(
        self,
        split: str = "val",
        output_transform=lambda x: x,
        device: str | torch.device = "cpu",
        group_key: str = "group",
        id_key: str = "id",
        confidence_intervals: bool = False,
    ) -> None:
        self.split, self.group_key, self.id_key = split, group_key, id_key
        self.confidence_intervals = bool(confidence_intervals)
        self.rows: list[dict] = []
        super().__init__(output_transform=output_transform, device=device)

    def reset(self) -> None:
        self.rows = []

    def update(self, output) -> None:
        for item in output if isinstance(output, (list, tuple)) else [output]:
            label = item["label"]
            if "spacing" in item:
                spacing = [float(s) for s in item["spacing"]]
            elif hasattr(label, "pixdim"):
                spacing = [float(s) for s in label.pixdim[:3]]
            else:
                raise ValueError("LesionMetrics needs the voxel spacing: a MetaTensor label or a 'spacing' entry.")
            group = item.get(self.group_key)
            if group not in GROUPS:
                raise ValueError(
                    f"LesionMetrics: item {item.get(self.id_key, '?')} has group {group!r}; expected one of {GROUPS}."
                )
            pid = str(item.get(self.id_key, len(self.rows)))
            self.rows.append(patient_row(pid, group, label_indices(item["pred"]), label_indices(label), spacing))

    def compute(self) -> dict[str, float]:
        return metric_names(summarise(self.rows), self.split, self.confidence_intervals)


def lower_is_better(current: float, best: float) -> bool:
    """Ignite/MONAI ``metric_cmp_fn`` for a loss: ``current`` improves on ``best`` (negative before any value)."""
    return best < 0 or current < best
