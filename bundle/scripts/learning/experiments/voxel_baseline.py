"""A learned voxel-wise tissue-outcome baseline: each voxel classified from its own map values and NIHSS.

Between the RAPID-like thresholds (:mod:`scripts.perfusion.thresholds`, no learning) and the networks (spatial
context, learned): a gradient-boosted classifier (scikit-learn's ``HistGradientBoostingClassifier``) on
per-voxel features relative to the patient's normal tissue, as tissue-outcome models in the literature do
(e.g. Wu et al. 2001; ISLES 2018 voxel baselines):

* ``rcbf``, ``rcbv``: CBF and CBV over their medians in normal tissue (Tmax < ``normal_tmax``, in the brain);
* ``tmax`` (s) and ``rttp`` (TTP minus its normal median, s);
* ``nihss`` (the patient's, on every voxel).

``features`` picks a subset (:data:`IMAGE_FEATURES`: the four map features, no NIHSS; on a small training split
a per-voxel NIHSS can single out patients, so the baseline without it may be the stronger). It is fitted on the
training split (a random sample of brain voxels, ``max_voxels``), inside the same MIP brain mask as the networks
and the thresholds, and scored by the same evaluation. Its gap to the networks measures what spatial context adds.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from nibabel.affines import voxel_sizes
from sklearn.ensemble import HistGradientBoostingClassifier

from ...io import CTPDataError, load_datalist, load_map, save_bytes, save_nifti
from ...perfusion.brain_mask import brain_mask_from_mip
from ...perfusion.lesions import MIN_CORE_ML, MIN_LESION_ML, drop_small_lesions
from ..engine.reports import evaluate_predictions

logger = logging.getLogger(__name__)

FEATURES = ("rcbf", "rcbv", "tmax", "rttp", "nihss")
IMAGE_FEATURES = tuple(name for name in FEATURES if name != "nihss")


def voxel_features(
    maps: dict[str, np.ndarray], brain: np.ndarray, nihss: float, normal_tmax: float = 4.0
) -> np.ndarray:
    """Features ``(V, len(FEATURES))`` of the ``brain`` voxels, relative to the patient's normal tissue."""
    normal = brain & (maps["tmax"] < normal_tmax) & (maps["cbf"] > 0)
    reference = normal if normal.sum() >= 10 else brain
    ref = {key: float(np.median(maps[key][reference])) for key in ("cbf", "cbv", "ttp")}
    columns = [
        maps["cbf"][brain] / max(ref["cbf"], 1e-3),
        maps["cbv"][brain] / max(ref["cbv"], 1e-3),
        maps["tmax"][brain],
        maps["ttp"][brain] - ref["ttp"],
        np.full(int(brain.sum()), float(nihss)),
    ]
    return np.stack(columns, axis=1).astype(np.float32)


def load_patient(item: dict) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """A datalist item's maps, MIP brain mask and affine."""
    maps, affine = {}, None
    for key in ("cbf", "cbv", "ttp", "tmax", "mip"):
        maps[key], affine = load_map(item[key])
    return maps, brain_mask_from_mip(maps["mip"]), affine


class VoxelOutcomeModel:
    """Gradient-boosted per-voxel classifier of healthy / penumbra / core (see the module docstring)."""

    def __init__(
        self, max_voxels: int = 300_000, seed: int = 0, normal_tmax: float = 4.0, features: Sequence[str] = FEATURES
    ) -> None:
        unknown = sorted(set(features) - set(FEATURES))
        if unknown or not features:
            raise ValueError(f"voxel baseline features must be a non-empty subset of {FEATURES}, got {features}.")
        self.max_voxels, self.seed, self.normal_tmax = int(max_voxels), int(seed), float(normal_tmax)
        self.features = tuple(features)
        self.classifier = None

    def _features(self, maps: dict[str, np.ndarray], brain: np.ndarray, nihss: float) -> np.ndarray:
        columns = [FEATURES.index(name) for name in getattr(self, "features", FEATURES)]  # models saved before 0.11
        return voxel_features(maps, brain, nihss, self.normal_tmax)[:, columns]

    def fit(self, items: list[dict]) -> VoxelOutcomeModel:
        """Fit on the brain voxels of ``items`` (validated datalist items with labels)."""
        if not items:
            raise CTPDataError("voxel baseline: no training patients to fit on.")
        rng = np.random.default_rng(self.seed)
        per_patient = max(1, self.max_voxels // len(items))
        features, targets = [], []
        for item in items:
            maps, brain, _ = load_patient(item)
            label, _ = load_map(item["label"])
            x = self._features(maps, brain, item["nihss"])
            y = label[brain].astype(np.int64)
            keep = rng.choice(len(y), size=min(per_patient, len(y)), replace=False)
            features.append(x[keep])
            targets.append(y[keep])
        self.classifier = HistGradientBoostingClassifier(max_iter=200, learning_rate=0.1, random_state=self.seed)
        self.classifier.fit(np.concatenate(features), np.concatenate(targets))
        return self

    def predict(self, maps: dict[str, np.ndarray], brain: np.ndarray, nihss: float) -> np.ndarray:
        """Label volume (0 healthy, 1 penumbra, 2 core), 0 outside ``brain``."""
        if self.classifier is None:
            raise RuntimeError("the voxel baseline is not fitted.")
        label = np.zeros(brain.shape, dtype=np.uint8)
        if brain.any():
            label[brain] = self.classifier.predict(self._features(maps, brain, nihss)).astype(np.uint8)
        return label

    def save(self, path: str | os.PathLike) -> Path:
        """Write the fitted model (pickle, written atomically)."""
        return save_bytes(path, pickle.dumps(self))

    @staticmethod
    def load(path: str | os.PathLike) -> VoxelOutcomeModel:
        """Read a model written by :meth:`save` (only load files you made: pickle runs code)."""
        path = Path(path)
        if not path.is_file():
            raise CTPDataError(f"{path}: voxel baseline model not found; run its 'fitting' workflow first.")
        try:
            with open(path, "rb") as handle:
                model = pickle.load(handle)
        except (pickle.UnpicklingError, EOFError, AttributeError, ImportError) as err:
            raise CTPDataError(f"{path}: not a readable voxel baseline model ({err}).") from None
        if not isinstance(model, VoxelOutcomeModel):
            raise CTPDataError(f"{path}: not a voxel baseline model.")
        return model


def fit_voxel_baseline(
    datalist: str | os.PathLike,
    output_dir: str | os.PathLike,
    seed: int = 0,
    max_voxels: int = 300_000,
    features: Sequence[str] = FEATURES,
) -> Path:
    """Fit on the datalist's training split (on ``features``) and save ``<output_dir>/model.pkl``; return its path."""
    items = load_datalist(datalist, splits=("training",))["training"]
    model = VoxelOutcomeModel(max_voxels=max_voxels, seed=seed, features=features).fit(items)
    path = model.save(Path(output_dir) / "model.pkl")
    logger.info("voxel baseline fitted on %d patients: %s", len(items), path)
    return path


def predict_split(
    datalist: str | os.PathLike,
    model_path: str | os.PathLike,
    split: str,
    output_dir: str | os.PathLike,
    min_lesion_ml: float = MIN_LESION_ML,
    min_core_ml: float = MIN_CORE_ML,
) -> Path:
    """Write ``<output_dir>/<id>.nii.gz`` label predictions for every patient of ``split``, lesion islands under
    ``min_lesion_ml`` dropped and core islands under ``min_core_ml`` labelled penumbra as the networks' are
    (:mod:`scripts.perfusion.lesions`); return the folder."""
    model = VoxelOutcomeModel.load(model_path)
    out = Path(output_dir)
    for item in load_datalist(datalist, splits=(split,))[split]:
        maps, brain, affine = load_patient(item)
        label = model.predict(maps, brain, item["nihss"])
        label = drop_small_lesions(label, voxel_sizes(affine), min_lesion_ml, min_core_ml)
        save_nifti(out / f"{item['id']}.nii.gz", label, affine)
    return out


def evaluate_voxel_baseline(
    datalist: str | os.PathLike,
    model_path: str | os.PathLike,
    split: str,
    output_dir: str | os.PathLike,
    **islands: float,
) -> list[dict]:
    """Predict ``split`` into ``<output_dir>/predictions`` (``islands``: :func:`predict_split`'s ``min_lesion_ml``
    and ``min_core_ml``) and score it like the networks (reports in ``<output_dir>/<split>``); return the per-group
    summary."""
    predictions = predict_split(datalist, model_path, split, Path(output_dir) / "predictions", **islands)
    _, summary = evaluate_predictions(
        datalist, predictions, split=split, output_dir=Path(output_dir) / split, title="voxel"
    )
    return summary
