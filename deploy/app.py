"""MONAI Deploy application: a DICOM CT perfusion study (or NIfTI maps / raw 4D CTP) in; core/penumbra labels,
clinical reports and, for DICOM input, a DICOM SEG, a DICOM SR and a Secondary Capture out.

Optional: needs ``pip install monai-deploy-app-sdk`` (it pulls holoscan and CUDA builds, so it is not a
dependency of the bundle or its CI). The operator runs the bundle's own inference workflow
(``bundle/configs/inference.json``) in-process, so the app gives exactly the outputs of
``python -m monai.bundle run inference``: per patient ``label.nii.gz``, ``report.json``, ``report.png`` and,
for a DICOM study, ``seg.dcm`` (DICOM SEG referencing the CT images), ``report_sr.dcm`` (TID 1500 volumes) and
``report_sc.dcm`` (the montage), all in the input's study.

Why not the SDK's ``DICOMDataLoaderOperator`` / ``DICOMSeriesSelectorOperator`` and its DICOM SEG writer:
they select *one* series and hand on one 3D image, while a CTP study is 4D and often stored as one series per
time point (the loader would split it into dozens of series), and the SEG must reference one time point's
images. The bundle's reader (``bundle/scripts/io/dicom.py``, pydicom) groups the whole study by slice position
and time; its writer (``bundle/scripts/clinical/dicom_outputs.py``) uses highdicom, as the SDK's SEG writer
does. The SDK's generic ``MonaiBundleInferenceOperator`` likewise feeds one in-memory image per input name;
this bundle needs five co-registered maps per study (or a raw series turned into maps first) plus NIHSS.

Run (input: a DICOM study folder or DICOMDIR, a folder of studies or patients, one patient folder, or a
datalist JSON):

    python deploy/app.py -i INPUT -o OUTPUT [-m bundle/models/model.pt] [--nihss 12]
    monai-deploy package deploy/app.py --config deploy/app.yaml --tag ctp-stroke:latest -l DEBUG

Sending the results back to a PACS (any DICOM C-STORE client; e.g. pynetdicom's, ``pip install pynetdicom``):

    python -m pynetdicom storescu PACS_HOST 104 -aec PACS_AET -aet CTPSTROKE \\
        OUTPUT/*/seg.dcm OUTPUT/*/report_sr.dcm OUTPUT/*/report_sc.dcm
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

BUNDLE = Path(__file__).resolve().parents[1] / "bundle"


def _bundle_on_path() -> None:
    if str(BUNDLE) not in sys.path:
        sys.path.insert(1, str(BUNDLE))


def run_bundle_inference(
    input_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    model: str | os.PathLike | None = None,
    threshold: bool = False,
    **overrides,
) -> list[str]:
    """The bundle's one processing function (``scripts.clinical.pipeline.label_studies``, which the DICOM node
    runs too) on ``input_path`` into ``output_dir``; return the finished patient ids."""
    _bundle_on_path()
    from scripts.clinical.pipeline import label_studies

    return label_studies(input_path, output_dir, checkpoint=model, threshold=threshold, **overrides)


def create_app():  # pragma: no cover - needs the MONAI Deploy SDK
    from monai.deploy.core import Application, Fragment, Operator, OperatorSpec

    class CTPStrokeInferenceOperator(Operator):
        """Reads the input folder given to the app, runs the bundle's inference, writes to the output folder."""

        def __init__(
            self,
            fragment: Fragment,
            *args,
            input_folder: Path,
            output_folder: Path,
            model: Path | None = None,
            **kwargs,
        ):
            self.input_folder, self.output_folder, self.model = Path(input_folder), Path(output_folder), model
            super().__init__(fragment, *args, **kwargs)

        def setup(self, spec: OperatorSpec) -> None:
            pass

        def compute(self, op_input, op_output, context) -> None:
            run_bundle_inference(self.input_folder, self.output_folder, self.model, overwrite=True)

    class CTPStrokeApp(Application):
        """Core and penumbra segmentation with clinical report from CT perfusion (research use only)."""

        def compose(self) -> None:
            model = next(iter(self.app_context.model_path.glob("*.pt")), None) if self.app_context.model_path else None
            self.add_operator(
                CTPStrokeInferenceOperator(
                    self,
                    input_folder=self.app_context.input_path,
                    output_folder=self.app_context.output_path,
                    model=model,
                    name="ctp_stroke_inference",
                )
            )

    return CTPStrokeApp()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-i", "--input", required=True)
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("-m", "--model", default=None)
    parser.add_argument("--nihss", type=int, default=None, help="NIHSS for a study without one (DICOM has none)")
    args, _ = parser.parse_known_args()
    try:
        import monai.deploy  # noqa: F401
    except ImportError:
        print("monai-deploy-app-sdk is not installed: running the bundle's inference directly.", file=sys.stderr)
        extra = {} if args.nihss is None else {"nihss": args.nihss}
        print(run_bundle_inference(args.input, args.output, args.model, **extra))
        return
    create_app().run()


if __name__ == "__main__":
    main()
