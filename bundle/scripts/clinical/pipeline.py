"""The one processing function for every way a study arrives: the bundle's inference workflow
(``configs/inference.json``, with ``inference_threshold.json`` for the threshold overlay) run in this process.

The command line, the DICOM node (:mod:`scripts.node`) and the MONAI Deploy app (``deploy/app.py``) all label a
study through it, so they give the same outputs: per patient ``label.nii.gz``, ``report.json``, ``report.png``
and, for a DICOM study, ``seg.dcm``, ``report_sr.dcm`` and ``report_sc.dcm``.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..cli import run_workflow

BUNDLE_ROOT = Path(__file__).resolve().parents[2]
"""The bundle folder (``configs/``, ``models/``)."""


def label_studies(
    input_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    checkpoint: str | os.PathLike | None = None,
    threshold: bool = False,
    **overrides,
) -> list[str]:
    """Run the inference workflow on ``input_path`` into ``output_dir``; return the finished patient ids.

    Args:
        input_path: a DICOM study folder or DICOMDIR, a folder of studies or patients, one patient folder, or a
            datalist JSON (as ``--input``).
        output_dir: where each patient's outputs go.
        checkpoint: the network's weights (default: the bundle's model, as the command line).
        threshold: merge ``inference_threshold.json`` (the RAPID-like overlay, no network) as the command line does.
        overrides: any other setting of ``inference.json`` (``nihss``, ``overwrite``, ``precision``, ...).
    """
    configs = [BUNDLE_ROOT / "configs" / "inference.json"]
    if threshold:
        configs.append(BUNDLE_ROOT / "configs" / "inference_threshold.json")
    settings = {"input": str(input_path), "output_dir": str(output_dir), "bundle_root": str(BUNDLE_ROOT), **overrides}
    if checkpoint is not None:
        settings["checkpoint"] = str(checkpoint)
    done = run_workflow("inference", configs, workflow_type="infer", **settings)
    return done[0] if isinstance(done, list) and done and isinstance(done[0], list) else done
