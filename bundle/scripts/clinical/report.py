"""The clinical report of one study: volumes in ml, mismatch, Tmax volumes, HIR, imaging criteria, a montage.

Volumes are voxel counts times the voxel volume from the NIfTI spacing. From the segmentation: core,
penumbra, hypoperfused (= core + penumbra), mismatch volume (= hypoperfused - core) and mismatch ratio
(= hypoperfused / core). From the Tmax map, inside the brain mask: Tmax > 4, 6, 8, 10 s volumes and the
hypoperfusion intensity ratio HIR = vol(Tmax > 10 s) / vol(Tmax > 6 s). Imaging criteria (Albers et al.,
NEJM 2018; Campbell et al., NEJM 2015), stated as imaging criteria only, never as a treatment decision:

- **DEFUSE 3**: core < 70 ml, mismatch ratio >= 1.8 and mismatch volume >= 15 ml;
- **EXTEND-IA**: core < 70 ml, mismatch ratio > 1.2 and mismatch volume > 10 ml.
"""

from __future__ import annotations

import io
import os
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ignite.engine import Engine, Events
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from monai.utils import convert_to_numpy
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

from ..io import save_bytes, voxel_volume_ml
from ..learning.engine.metrics import label_indices

TMAX_THRESHOLDS_S = (4.0, 6.0, 8.0, 10.0)
DISCLAIMER = (
    "Imaging criteria only, computed by a research model: not a medical device and not a treatment decision. "
    "Trial eligibility also needs clinical criteria (time from onset, occlusion site, age, NIHSS, ...)."
)


def _ratio(numerator: float, denominator: float) -> float | None:
    return round(numerator / denominator, 3) if denominator > 0 else None


def imaging_criteria(core_ml: float, mismatch_ml: float, mismatch_ratio: float | None) -> dict[str, bool]:
    """DEFUSE 3 and EXTEND-IA target-mismatch imaging criteria (no core: the ratio counts as infinite)."""
    ratio = float("inf") if mismatch_ratio is None else mismatch_ratio
    return {
        "DEFUSE-3": bool(core_ml < 70 and ratio >= 1.8 and mismatch_ml >= 15),
        "EXTEND-IA": bool(core_ml < 70 and ratio > 1.2 and mismatch_ml > 10),
    }


def clinical_report(
    label: np.ndarray,
    tmax: np.ndarray,
    spacing: Sequence[float],
    brain: np.ndarray | None = None,
    nihss: int | None = None,
    patient_id: str = "",
    method: str = "model",
) -> dict[str, Any]:
    """The report of one study as a JSON-ready dict (see the module docstring for the definitions)."""
    label, tmax = np.asarray(label), np.asarray(tmax, dtype=np.float32)
    if label.shape != tmax.shape:
        raise ValueError(f"label {label.shape} and tmax {tmax.shape} must have the same shape.")
    brain = np.ones(label.shape, bool) if brain is None else np.asarray(brain, bool)
    voxel = voxel_volume_ml(spacing)
    core = float((label == 2).sum()) * voxel
    penumbra = float((label == 1).sum()) * voxel
    hypoperfused = core + penumbra
    ratio = _ratio(hypoperfused, core)
    tmax_ml = {f"Tmax>{t:g}s": round(float((brain & (tmax > t)).sum()) * voxel, 2) for t in TMAX_THRESHOLDS_S}
    return {
        "patient_id": patient_id,
        "method": method,
        "nihss": None if nihss is None else int(nihss),
        "volumes_ml": {"core": round(core, 2), "penumbra": round(penumbra, 2), "hypoperfused": round(hypoperfused, 2)},
        "mismatch": {"volume_ml": round(hypoperfused - core, 2), "ratio": ratio},
        "tmax_volumes_ml": tmax_ml,
        "hypoperfusion_intensity_ratio": _ratio(tmax_ml["Tmax>10s"], tmax_ml["Tmax>6s"]),
        "imaging_criteria_met": imaging_criteria(core, hypoperfused - core, ratio),
        "voxel_ml": voxel,
        "note": DISCLAIMER,
    }


def radiological(volume: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """``volume`` reordered to L-P-S index order, so that ``volume[..., z].T`` drawn with row 0 on top shows
    an axial slice as radiologists read it: the patient's right on the screen's left, anterior up."""
    return apply_orientation(np.asarray(volume), ornt_transform(io_orientation(affine), axcodes2ornt("LPS")))


def save_montage(
    path: str | os.PathLike,
    background: np.ndarray,
    label: np.ndarray,
    report: Mapping[str, Any],
    window: tuple[float, float] = (0.0, 120.0),
    columns: int = 4,
    affine: np.ndarray | None = None,
) -> str:
    """PNG of every slice: ``background`` (the MIP in HU, greyscale) with penumbra filled green and core filled
    magenta, titled with the volumes and mismatch; written atomically.

    With the volumes' ``affine`` the slices are shown as radiologists read axial images (patient's right on
    the screen's left, anterior up, slices from feet to head) and each panel is marked R / L / A / P.
    Without it the arrays are shown as stored, unmarked.
    """
    origin = "lower"
    if affine is not None:
        background, label, origin = radiological(background, affine), radiological(label, affine), "upper"
    slices = background.shape[2]
    columns = min(columns, slices)
    rows = -(-slices // columns)
    width = max(2.4 * columns, 7.2)
    flags = [  # quality flags, wrapped to the figure's width (about 12 characters an inch at 9 pt)
        line
        for flag in report.get("quality") or []
        for line in textwrap.wrap(f"QUALITY: {flag['message']}", width=int(12 * width))
    ]
    curves = report.get("curves")  # the AIF and VOF the maps were computed with, when computed here
    title_in = 0.2 * (2 + len(flags)) + 0.2
    heights = [2.4] * rows + ([1.6] if curves else [])
    figure = Figure(figsize=(width, sum(heights) + title_in))
    grid = figure.add_gridspec(len(heights), columns, height_ratios=heights)
    for z in range(rows * columns):
        ax = figure.add_subplot(grid[z // columns, z % columns])
        ax.axis("off")
        if z < slices:
            _panel(ax, background[..., z], label[..., z], window, origin, f"{z + 1}", affine is not None)
    if curves:
        _curves(figure.add_subplot(grid[rows, :]), curves)
    volumes, mismatch = report["volumes_ml"], report["mismatch"]
    ratio = "n/a" if mismatch["ratio"] is None else f"{mismatch['ratio']:.1f}"
    figure.suptitle(
        f"{report.get('patient_id', '')} [{report.get('method', '')}]   core (magenta) {volumes['core']:.1f} ml   "
        f"penumbra (green) {volumes['penumbra']:.1f} ml\nmismatch {mismatch['volume_ml']:.1f} ml, ratio {ratio}   "
        f"Tmax>6s {report['tmax_volumes_ml']['Tmax>6s']:.1f} ml   research use only"
        + "".join(f"\n{line}" for line in flags),
        fontsize=9,
        color="darkred" if flags else "black",
    )
    return _save_figure(path, figure, top=1.0 - title_in / (sum(heights) + title_in))


def _curves(ax: Any, curves: Mapping[str, Any]) -> None:
    """The arterial input and venous output curves (HU above baseline) against time: what a reader checks first
    when maps look wrong (a late, low or truncated bolus)."""
    dt = float(curves["interval_s"])
    for key, name, colour in (("aif_hu", "AIF", "tab:red"), ("vof_hu", "VOF", "tab:blue")):
        values = curves.get(key)
        if values:
            ax.plot(np.arange(len(values)) * dt, values, color=colour, label=name, linewidth=1.2)
    ax.set_xlabel("time (s)", fontsize=8)
    ax.set_ylabel("HU above baseline", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, loc="upper right")


def save_comparison(
    path: str | os.PathLike,
    background: np.ndarray,
    truth: np.ndarray,
    prediction: np.ndarray,
    title: str,
    affine: np.ndarray | None = None,
    window: tuple[float, float] | None = None,
    max_slices: int = 8,
) -> str:
    """PNG comparing a label with the reference: one column per slice (at most ``max_slices``, evenly spaced
    over the slices holding either label), the reference on the top row and the prediction below, penumbra
    green and core magenta over ``background`` (e.g. CBF); radiological orientation with ``affine``."""
    origin = "lower"
    if affine is not None:
        background, truth, prediction = (radiological(v, affine) for v in (background, truth, prediction))
        origin = "upper"
    lesion = [z for z in range(background.shape[2]) if truth[..., z].any() or prediction[..., z].any()]
    candidates = lesion or list(range(background.shape[2]))
    chosen = sorted(
        {candidates[round(i)] for i in np.linspace(0, len(candidates) - 1, min(max_slices, len(candidates)))}
    )
    if window is None:
        inside = background[background > 0]
        window = (0.0, float(np.percentile(inside, 99))) if inside.size else (0.0, 1.0)
    figure = Figure(figsize=(max(2.2 * len(chosen), 4.4), 5.0))
    axes = figure.subplots(2, len(chosen), squeeze=False)
    for column, z in enumerate(chosen):
        for row, (name, label) in enumerate((("reference", truth), ("prediction", prediction))):
            ax = axes[row, column]
            ax.axis("off")
            _panel(ax, background[..., z], label[..., z], window, origin, f"{name} {z + 1}", affine is not None)
    figure.suptitle(f"{title}   core magenta, penumbra green   research use only", fontsize=9)
    return _save_figure(path, figure)


def _panel(
    ax: Any, background: np.ndarray, label: np.ndarray, window: Sequence[float], origin: str, text: str, marked: bool
) -> None:
    """One axial slice: greyscale background, penumbra filled green and core magenta, a caption, and the
    R / L / A / P marks when the slice is in radiological orientation."""
    overlay = ListedColormap([(0, 0, 0, 0), (0.1, 0.9, 0.2, 0.5), (1.0, 0.1, 0.9, 0.75)])
    ax.imshow(background.T, cmap="gray", vmin=window[0], vmax=window[1], origin=origin)
    ax.imshow(label.T, cmap=overlay, vmin=0, vmax=2, origin=origin, interpolation="nearest")
    ax.text(0.02, 0.97, text, color="white", fontsize=8, transform=ax.transAxes, va="top")
    if marked:
        for x, y, mark, align in (
            (0.02, 0.5, "R", "left"),
            (0.98, 0.5, "L", "right"),
            (0.5, 0.97, "A", "center"),
            (0.5, 0.03, "P", "center"),
        ):
            ax.text(
                x, y, mark, color="yellow", fontsize=9, fontweight="bold", transform=ax.transAxes, ha=align, va="center"
            )


def _save_figure(path: str | os.PathLike, figure: Any, top: float = 0.93) -> str:
    figure.tight_layout(rect=(0, 0, 1, top))
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    save_bytes(path, buffer.getvalue())
    return str(path)


class PatientMontages:
    """During an evaluation, write one PNG per patient comparing the predicted label with the reference
    (``<output_dir>/<id>.png``, :func:`save_comparison`) over the image's first
    channel (CBF), so runs can be compared by eye in MLflow (the evaluation logs its report folder)."""

    def __init__(self, output_dir: str | os.PathLike, image_key: str = "image", id_key: str = "id") -> None:
        self.output_dir, self.image_key, self.id_key = Path(output_dir), image_key, id_key

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        output = engine.state.output
        for item in output if isinstance(output, (list, tuple)) else [output]:
            pid = str(item.get(self.id_key, "patient"))
            label = item["label"]
            background = convert_to_numpy(item[self.image_key])[0]
            affine = convert_to_numpy(label.affine) if hasattr(label, "affine") else None
            truth, pred = label_indices(label), label_indices(item["pred"])
            save_comparison(self.output_dir / f"{pid}.png", background, truth, pred, pid, affine=affine)
