"""MONAI Deploy application: a DICOM CT perfusion study (or NIfTI maps / raw 4D CTP) in; core/penumbra labels,
clinical reports and, for DICOM input, a DICOM SEG, a DICOM SR and a Secondary Capture out.

Optional: needs ``pip install monai-deploy-app-sdk==4.0.0`` (it pulls holoscan and CUDA builds, about 1.5 GB,
so it is not a dependency of the bundle: CI tests it in a virtual environment of its own, ``.ci/deploy``). It
runs on CPUs: the SDK's Holoscan scheduler runs the one operator once (``CountCondition``). The operator runs
the bundle's own inference workflow (``bundle/configs/inference.json``) in-process, so the app gives exactly
the outputs of ``python -m monai.bundle run inference``: per patient ``label.nii.gz``, ``report.json``,
``report.png`` and, for a DICOM study, ``seg.dcm`` (DICOM SEG referencing the CT images), ``report_sr.dcm``
(TID 1500 volumes) and ``report_sc.dcm`` (the montage), all in the input's study.

Why not the SDK's ``DICOMDataLoaderOperator`` / ``DICOMSeriesSelectorOperator`` and its DICOM SEG writer:
they select *one* series and hand on one 3D image, while a CTP study is 4D and often stored as one series per
time point (the loader would split it into dozens of series), and the SEG must reference one time point's
images. The bundle's reader (``bundle/scripts/io/dicom.py``, pydicom) groups the whole study by slice position
and time; its writer (``bundle/scripts/clinical/dicom_outputs.py``) uses highdicom, as the SDK's SEG writer
does. The SDK's generic ``MonaiBundleInferenceOperator`` likewise feeds one in-memory image per input name;
this bundle needs five co-registered maps per study (or a raw series turned into maps first) plus NIHSS.

Run (input: a DICOM study folder or DICOMDIR, a folder of studies or patients, one patient folder, or a
datalist JSON):

    python deploy/app.py -i INPUT -o OUTPUT [-m bundle/models/model.pt] [--nihss 12] [--threshold]
    monai-deploy package deploy/app.py --config deploy/app.yaml --tag ctp-stroke:latest -l DEBUG

Without the SDK the same command runs the same function directly. Sending the results to a PACS (any C-STORE
client, e.g. pynetdicom's; or let the bundle's DICOM node receive studies and send results back itself):

    python -m pynetdicom storescu PACS_HOST 104 -aec PACS_AET -aet CTPSTROKE \\
        OUTPUT/*/seg.dcm OUTPUT/*/report_sr.dcm OUTPUT/*/report_sc.dcm
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

BUNDLE = Path(__file__).resolve().parents[1] / "bundle"
if str(BUNDLE) not in sys.path:
    sys.path.insert(1, str(BUNDLE))

from scripts.clinical.pipeline import label_studies  # noqa: E402  (the bundle's one processing function)


def create_app(sdk_argv: list[str], threshold: bool = False, **overrides):  # pragma: no cover - needs the SDK
    """The SDK application: one operator, run once, on the SDK's ``-i``/``-o``/``-m`` (``sdk_argv``, the command
    line without this app's own options, which the SDK's parser would refuse)."""
    from monai.deploy.conditions import CountCondition
    from monai.deploy.core import Application, Fragment, Operator, OperatorSpec

    class CTPStrokeInferenceOperator(Operator):
        """Reads the input folder given to the app, runs the bundle's inference, writes to the output folder."""

        def __init__(self, fragment: Fragment, *args, input_folder: Path, output_folder: Path,
                     model: Path | None = None, **kwargs):  # fmt: skip
            self.input_folder, self.output_folder, self.model = Path(input_folder), Path(output_folder), model
            super().__init__(fragment, *args, **kwargs)

        def setup(self, spec: OperatorSpec) -> None:
            pass

        def compute(self, op_input, op_output, context) -> None:
            done = label_studies(
                self.input_folder, self.output_folder, self.model, threshold, overwrite=True, **overrides
            )
            print(f"ctp_stroke_inference: {len(done)} patient(s) labelled in {self.output_folder}")

    class CTPStrokeApp(Application):
        """Core and penumbra segmentation with clinical report from CT perfusion (research use only)."""

        def compose(self) -> None:
            context = Application.init_app_context(sdk_argv)  # SDK 4.0: the context is built, not an attribute
            model = Path(context.model_path) if context.model_path else None
            if model is not None and model.is_dir():
                model = next(iter(sorted(model.glob("*.pt"))), None)
            operator = CTPStrokeInferenceOperator(
                self, CountCondition(self, 1), input_folder=context.input_path, output_folder=context.output_path,
                model=model if model is not None and model.is_file() else None, name="ctp_stroke_inference",
            )  # fmt: skip
            self.add_operator(operator)

    return CTPStrokeApp([sys.executable, *sdk_argv])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-i", "--input", required=True)
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("-m", "--model", default=None)
    parser.add_argument("--nihss", type=int, default=None, help="NIHSS for a study without one (DICOM has none)")
    parser.add_argument("--threshold", action="store_true", help="the threshold overlay instead of the network")
    args, _ = parser.parse_known_args()
    overrides = {} if args.nihss is None else {"nihss": args.nihss}
    try:
        import monai.deploy  # noqa: F401
    except ImportError:
        print("monai-deploy-app-sdk is not installed: running the bundle's inference directly.", file=sys.stderr)
        print(label_studies(args.input, args.output, args.model, args.threshold, **overrides))
        return
    Path(args.output).mkdir(parents=True, exist_ok=True)  # the SDK's parser wants it to exist
    sdk_argv = [sys.argv[0], "-i", args.input, "-o", args.output, *(["-m", args.model] if args.model else [])]
    create_app(sdk_argv, args.threshold, **overrides).run()


if __name__ == "__main__":
    main()
