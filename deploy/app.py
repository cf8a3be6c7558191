"""MONAI Deploy application: CT perfusion maps (or raw 4D CTP) in, core/penumbra labels and clinical reports out.

Optional: needs ``pip install monai-deploy-app-sdk`` (it pulls holoscan and CUDA builds, so it is not a
dependency of the bundle or its CI). The operator runs the bundle's own inference workflow
(``bundle/configs/inference.json``) in-process, so the app gives exactly the outputs of
``python -m monai.bundle run inference``: per patient ``label.nii.gz``, ``report.json``, ``report.png``.
The SDK's generic ``MonaiBundleInferenceOperator`` feeds one in-memory image per input name and returns one
prediction; this bundle needs five co-registered maps per study (or a raw series turned into maps first)
plus NIHSS, and writes a report per patient, hence this small operator around the same workflow.

Run (input: a folder of patient folders, one patient folder or a datalist JSON):

    python deploy/app.py -i INPUT -o OUTPUT [-m bundle/models/model.pt]
    monai-deploy package deploy/app.py --config deploy/app.yaml --tag ctp-stroke:latest -l DEBUG
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

BUNDLE = Path(__file__).resolve().parents[1] / "bundle"


def run_bundle_inference(
    input_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    model: str | os.PathLike | None = None,
    threshold: bool = False,
    **overrides,
) -> list[str]:
    """Run the bundle's inference workflow on ``input_path`` into ``output_dir``; return the finished patient ids.

    ``threshold`` merges ``inference_threshold.json`` (the RAPID-like baseline) as the command line does.
    """
    if str(BUNDLE) not in sys.path:
        sys.path.insert(1, str(BUNDLE))
    from scripts.cli import run_workflow

    configs = [BUNDLE / "configs" / "inference.json"]
    if threshold:
        configs.append(BUNDLE / "configs" / "inference_threshold.json")
    settings = {"input": str(input_path), "output_dir": str(output_dir), "bundle_root": str(BUNDLE), **overrides}
    if model is not None:
        settings["checkpoint"] = str(model)
    done = run_workflow("inference", configs, workflow_type="infer", **settings)
    return done[0] if isinstance(done, list) and done and isinstance(done[0], list) else done


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
    args, _ = parser.parse_known_args()
    try:
        import monai.deploy  # noqa: F401
    except ImportError:
        print("monai-deploy-app-sdk is not installed: running the bundle's inference directly.", file=sys.stderr)
        print(run_bundle_inference(args.input, args.output, args.model))
        return
    create_app().run()


if __name__ == "__main__":
    main()
