"""Tissue-fate lesions: a voxel's label is a latent fate of its physiology, not a threshold of one map.

The default lesion model of the synthetic cohort (``lesion_model="fate"``). Per patient it draws a time
from onset, a collateral grade and, for some, an early partial reperfusion; per voxel a depth of
hypoperfusion inside an occluded territory (LVO) or around small distal occlusions (Non-LVO). The maps
follow from those (flow, arrival delay, blood volume) and the fate follows from the physiology below,
so every class overlaps every other on every single map, and no map threshold recovers the labels:

* **Infarction depends on flow and time** (Jones et al., J Neurosurg 1981: in awake monkeys the flow
  below which tissue dies rises with the duration of ischaemia, about 10-12 ml/100 g/min for 2-3 h and
  17-18 for a permanent occlusion, against a normal of about 50-60). Here a voxel is **core** when its
  ischaemic flow, relative to its own normal, is below ``T(t) = 0.08 + 0.24 (1 - exp(-t / 4 h))`` (0.19 at
  2.5 h, 0.32 for a permanent occlusion) for the time ``t`` it has been ischaemic (onset to imaging, or to
  reperfusion), give or take a tissue vulnerability (thresholds scaled by 1 +- 2 %, fine and coarse
  texture: boundary uncertainty); core islands under ``MIN_CORE_ML`` are not drawn.
* **Penumbra** is the living tissue that will die if flow is not restored: relative flow below the
  permanent-occlusion threshold ``PENUMBRA_RCBF`` (0.40, ~ Jones' 17-18 ml and Astrup's electrical
  failure), above the time-dependent one. Hypoperfused tissue above it is **benign oligaemia**
  (state 3, labelled healthy).
* **Collaterals** (one grade per patient, smooth local variation): good collaterals keep flow up in the
  occluded territory while the retrograde route lengthens the arrival, so benign oligaemia reaches Tmax
  of 6-10 s and penumbra spans about 4-14 s; poor collaterals give deep, short-delay flow loss. The
  grade also shapes NIHSS (:func:`scripts.simulation.cohort.draw_nihss`).
* **Blood volume** rises with autoregulatory vasodilation while perfusion pressure falls and collapses
  where flow is too low to keep vessels open or the tissue has died (Powers 1991; the CBV core criteria of
  Wintermark 2006), by a per-patient amount: CBV marks core, loosely.
* **Early partial reperfusion** (a quarter of LVO, a third of Non-LVO patients): the core formed before
  reperfusion stays core while its flow is partly or wholly restored (luxury perfusion, Marchal et al.
  1996) and its delay shrinks: cores with rCBF above 30 % and Tmax below 6 s, which thresholds miss.

Lesions are territory-shaped and contiguous (a smooth depth field); fine-scale vulnerability makes the
boundaries uncertain, as drawn labels are. The former construction, in which one map separates each
class, is :func:`scripts.simulation.phantom.lvo_lesion` / ``distal_lesion`` (``lesion_model="separable"``).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..io import voxel_volume_ml
from . import phantom as ph

PENUMBRA_RCBF = 0.40
"""Relative flow below which living tissue is at risk (infarcts if the occlusion persists)."""

KNEE = 0.45
"""Depth (rank within the hypoperfused region) at which ischaemic flow reaches ``PENUMBRA_RCBF``."""

FLOOR_RCBF = (0.12, 0.34)
"""Deepest relative flow with the poorest and the best collaterals."""

VULNERABILITY = 0.02
"""Relative spread (SD) of the voxels' infarction and penumbra thresholds: uncertain lesion boundaries."""

MIN_CORE_ML = 0.1
"""Core islands smaller than this are not drawn as core (below what a reader outlines); their voxels follow
the living-tissue rule (penumbra below ``PENUMBRA_RCBF``)."""

REPERFUSION_PROBABILITY = {"LVO": 0.25, "Non-LVO": 0.35}
"""Fraction of patients imaged after an early partial reperfusion."""


def infarction_threshold(hours: np.ndarray | float) -> np.ndarray | float:
    """Relative CBF below which tissue has died after ``hours`` of ischaemia (Jones et al. 1981, scaled)."""
    return 0.08 + 0.24 * (1.0 - np.exp(-np.asarray(hours, dtype=np.float64) / 4.0))


ONSET_H = {"LVO": (1.0, 8.0), "Non-LVO": (1.0, 10.0)}
"""Range of the onset-to-imaging time (h) per group, drawn uniformly."""


def draw_patient(group: str, rng: np.random.Generator) -> dict:
    """Latent parameters of one patient: onset to imaging (h), collateral grade, reperfusion."""
    onset = float(rng.uniform(*ONSET_H[group]))
    reperfused = bool(rng.random() < REPERFUSION_PROBABILITY[group])
    return {
        "onset_h": onset,
        "collateral": float(rng.beta(2.0, 2.0) if group == "LVO" else rng.beta(3.0, 2.0)),
        "reperfused": reperfused,
        "ischaemia_h": float(onset * rng.uniform(0.3, 0.8)) if reperfused else onset,
        "reperfusion_extent": float(rng.uniform(0.3, 1.0)) if reperfused else 0.0,
        "cbv_collapse": float(rng.uniform(0.45, 0.85)),
    }


def _fate_lesion(
    severity: np.ndarray,
    hypoperfused: np.ndarray,
    grid: ph.Grid,
    rng: np.random.Generator,
    latent: dict,
    max_delay: tuple[float, float],
) -> ph.Lesion:
    """Maps and fate from a severity field over the ``hypoperfused`` region (contiguous, territory-shaped).

    The region's voxels are ranked by severity into a depth ``u`` in [0, 1] (uniform over the region, so
    the flow profile, not the region's shape, sets the class sizes): relative flow falls linearly from 1
    at the edge to ``PENUMBRA_RCBF`` at ``u = KNEE`` and on to a collateral-held floor at the deepest point.
    """
    shape, px = severity.shape, grid.pixel_mm
    coarse, fine = (6.0 / px, 6.0 / px, 0.8), (2.0 / px, 2.0 / px, 0.4)
    collateral = np.clip(latent["collateral"] + 0.15 * ph.smooth_field(shape, coarse, rng), 0.0, 1.0)
    depth = np.zeros(shape)
    if hypoperfused.any():
        order = np.argsort(np.argsort(severity[hypoperfused], kind="stable"), kind="stable")
        depth[hypoperfused] = (order + 1.0) / order.size
    # flow during ischaemia: 1 -> PENUMBRA_RCBF at the knee -> the collateral floor; smooth local variation
    floor = FLOOR_RCBF[0] + (FLOOR_RCBF[1] - FLOOR_RCBF[0]) * collateral
    outer = 1.0 - (1.0 - PENUMBRA_RCBF) * depth / KNEE
    inner = PENUMBRA_RCBF - (PENUMBRA_RCBF - floor) * (depth - KNEE) / (1.0 - KNEE)
    rcbf_ischaemic = np.where(depth < KNEE, outer, inner) + 0.04 * depth * ph.smooth_field(shape, coarse, rng)
    rcbf_ischaemic = np.where(hypoperfused, np.clip(rcbf_ischaemic, 0.02, 1.0), 1.0)
    # arrival delay (true Tmax, on top of the healthy delay): deeper and longer with collateral routes
    lo, hi = max_delay
    delay = depth * (lo + (hi - lo) * collateral) + 1.5 * depth * ph.smooth_field(shape, coarse, rng)
    delay = np.where(hypoperfused, np.clip(delay, 0.0, None), 0.0)
    # tissue vulnerability: each voxel's thresholds scaled by 1 +- VULNERABILITY (fine and coarse texture)
    vulnerability = 1.0 + VULNERABILITY * (
        0.8 * ph.smooth_field(shape, fine, rng) + 0.6 * ph.smooth_field(shape, coarse, rng)
    )
    core = hypoperfused & (rcbf_ischaemic < infarction_threshold(latent["ischaemia_h"]) * vulnerability)
    core = drop_small_components(core, MIN_CORE_ML / voxel_volume_ml(grid.spacing))
    rcbf = rcbf_ischaemic.copy()
    if latent["reperfused"]:
        extent = np.clip(latent["reperfusion_extent"] * (1.0 + 0.15 * ph.smooth_field(shape, coarse, rng)), 0.0, 1.0)
        rcbf = rcbf_ischaemic + (1.0 - rcbf_ischaemic) * extent
        rcbf = np.where(core, rcbf * rng.uniform(1.0, 1.3), rcbf)  # luxury perfusion of the dead tissue
        delay = delay * (1.0 - extent)
    penumbra = hypoperfused & ~core & (rcbf < PENUMBRA_RCBF * vulnerability)
    oligaemia = hypoperfused & ~core & ~penumbra
    # blood volume: vasodilation with depth, collapse at very low flow and in dead tissue
    rcbv = (1.0 + 0.35 * depth) * np.clip(rcbf / 0.25, 0.0, 1.0) ** 0.5
    collapse = latent["cbv_collapse"] if not latent["reperfused"] else 0.5 * (1.0 + latent["cbv_collapse"])
    rcbv = np.where(core, rcbv * collapse * (1.0 + 0.1 * ph.smooth_field(shape, coarse, rng)), rcbv)
    rcbv = np.where(hypoperfused, np.clip(np.minimum(rcbv, 4.0 * rcbf), 0.05, None), 1.0)  # MTT at most 4x normal
    state = np.full(shape, ph.HEALTHY, dtype=np.uint8)
    state[oligaemia], state[penumbra], state[core] = ph.OLIGAEMIA, ph.PENUMBRA, ph.CORE
    latent = {**latent, "rcbf_ischaemic": rcbf_ischaemic.astype(np.float32)}
    return ph.Lesion(
        state=state, rcbf=rcbf, rcbv=rcbv, delay=delay, affected_left=None, extra_delay=True, latent=latent
    )


def fate_lvo_lesion(anatomy: ph.Anatomy, grid: ph.Grid, rng: np.random.Generator) -> ph.Lesion:
    """Proximal occlusion: MCA (80 %) or ICA (MCA + ACA) territory, deepest around a deep centre."""
    severity, allowed, left = ph.proximal_severity(anatomy, grid, rng, ((50, 70), (65, 90), (35, 55)))
    hypoperfused = allowed & ph.brain_tissue(anatomy) & (severity > rng.uniform(0.05, 0.25))
    lesion = _fate_lesion(severity, hypoperfused, grid, rng, draw_patient("LVO", rng), max_delay=(8.0, 14.0))
    lesion.affected_left = left
    return lesion


def fate_distal_lesion(anatomy: ph.Anatomy, grid: ph.Grid, rng: np.random.Generator) -> ph.Lesion:
    """One to three distal occlusions (Non-LVO): small, shallower and shorter-delay lesions."""
    brain = ph.brain_tissue(anatomy)
    severity = ph.distal_severity(anatomy, grid, rng, radius_mm=(15, 30), depth_mm=(6, 12))
    hypoperfused = brain & (severity > -0.2)
    return _fate_lesion(severity, hypoperfused, grid, rng, draw_patient("Non-LVO", rng), max_delay=(6.0, 10.0))


def drop_small_components(mask: np.ndarray, min_voxels: float) -> np.ndarray:
    """``mask`` without its 3D connected components of fewer than ``min_voxels`` voxels."""
    components, count = ndimage.label(mask)
    if count == 0:
        return mask
    sizes = np.bincount(components.ravel())
    keep = sizes >= min_voxels
    keep[0] = False
    return keep[components]


def oracle_labels(rcbf: np.ndarray, rcbf_ischaemic: np.ndarray, ischaemia_h: float, voxel_ml: float) -> np.ndarray:
    """The fate rule applied to the true relative flow (now and during ischaemia) and the patient's latent
    ischaemia time, without the tissue vulnerability: what the labels are, minus boundary uncertainty.

    Not available to any model (it needs the latent parameters); it shows the labels are physiology."""
    core = (rcbf_ischaemic > 0) & (rcbf_ischaemic < infarction_threshold(ischaemia_h))
    core = drop_small_components(core, MIN_CORE_ML / voxel_ml)
    penumbra = ~core & (rcbf > 0) & (rcbf < PENUMBRA_RCBF)
    return np.where(core, 2, np.where(penumbra, 1, 0)).astype(np.uint8)


def best_single_map_dice(
    samples: dict[str, list[np.ndarray]], labels: list[np.ndarray]
) -> dict[tuple[str, str], float]:
    """Best pooled Dice of ``map < t`` or ``map > t`` per (map, class): how well one map's threshold reads
    the labels. ``samples`` maps a name to per-patient voxel values, ``labels`` the same voxels' labels;
    ``t`` runs over the pooled values' 0.5 ... 99.5th percentiles."""
    label = np.concatenate(labels)
    out = {}
    for name, parts in samples.items():
        values = np.concatenate(parts)
        cuts = np.unique(np.percentile(values, np.linspace(0.5, 99.5, 199)))
        for cls, target in (("core", label == 2), ("penumbra", label == 1)):
            best = 0.0
            n_true = int(target.sum())
            for cut in cuts:
                for pred in (values < cut, values > cut):
                    inter = int((pred & target).sum())
                    best = max(best, 2.0 * inter / max(int(pred.sum()) + n_true, 1))
            out[(name, cls)] = best
    return out
