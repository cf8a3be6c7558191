"""A real (tiny) training and evaluation through `python -m monai.bundle`, with MLflow and resume."""

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from workflows import overrides_from, refusal, run_in_process

from scripts.cli import TRACKING_SETTINGS
from scripts.io import CTPDataError
from scripts.learning.engine.precision import resolve_precision
from scripts.learning.engine.reports import load_evaluation
from scripts.learning.engine.training import check_training_inputs
from scripts.learning.model.vgg import vgg16_layers

ROOT = Path(__file__).resolve().parents[1]
CONFIG_FILES = ["bundle/configs/train.json", "bundle/configs/evaluate.json"]
CONFIGS = str(CONFIG_FILES)  # as the command line takes them
SUBPROCESS_TIMEOUT = 900
"""Seconds a workflow process may take before the test kills it (and fails) instead of hanging CI."""


def bundle(run_id: str, config: str, *overrides: str, check: bool = True, wait: bool = True):
    command = [sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", config, *overrides]
    if not wait:
        return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=check, timeout=SUBPROCESS_TIMEOUT)


TRACKING = f"bundle/configs/{TRACKING_SETTINGS}"
"""The bundle's MLflow tracking settings (``--tracking``)."""


def tiny_overrides(datalist: Path, out: Path, uri: str, *extra: str) -> list[str]:
    return [
        "--tracking",
        TRACKING,
        "--datalist",
        str(datalist),
        "--output_dir",
        str(out),
        "--tracking_uri",
        uri,
        "--pretrained",
        "false",
        "--roi_size",
        "[64,64]",
        "--slices_per_volume",
        "1",
        "--min_epochs",
        "0",
        *extra,
    ]


STAGE_AFTER_EVERY_VALIDATION = ("--patience", "1", "--finetuning", "gradual", "--min_delta", "1000")
"""Gradual fine-tuning where only the first validation counts as an improvement (min_delta 1000), so every
later one moves a stage (patience 1)."""


def trained_epochs(checkpoint: dict) -> int:
    return checkpoint["trainer"]["iteration"] // checkpoint["trainer"]["epoch_length"]


def runs_named(uri: str, name: str, experiment: str = "ctp-stroke"):
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name(experiment)
    return client, client.search_runs([experiment.experiment_id], filter_string=f"attributes.run_name = '{name}'")


@pytest.fixture(scope="module")
def trained(tiny_cohort, tmp_path_factory):
    """Gradual fine-tuning with patience 1 over 6 epochs, then evaluation on the test split."""
    base = tmp_path_factory.mktemp("training")
    uri = f"sqlite:///{base / 'mlflow.db'}"
    out = base / "gradual"
    weights = base / "vgg16.pth"
    torch.manual_seed(0)
    torch.save({f"features.{k}": v for k, v in vgg16_layers().state_dict().items()}, weights)

    def args_for(output_dir: Path) -> list[str]:
        args = tiny_overrides(tiny_cohort, output_dir, uri, "--max_epochs", "6", *STAGE_AFTER_EVERY_VALIDATION)
        args[args.index("--pretrained") + 1] = str(weights)
        return args

    args = args_for(out)
    train = bundle("training", "bundle/configs/train.json", *args, "--profile", "true")
    evaluation = bundle("evaluating", CONFIGS, *args)
    return {"out": out, "uri": uri, "train": train, "eval": evaluation, "args": args_for}


def test_training_writes_checkpoints_and_reports(trained):
    assert [p.name.split("_")[0] for p in (trained["out"] / "checkpoints").iterdir()] == ["last"]
    assert [p.name.split("_")[0] for p in (trained["out"] / "model").iterdir()] == ["best"]
    last = torch.load(next((trained["out"] / "checkpoints").glob("last*.pt")), weights_only=False)
    assert {"network", "optimizer", "trainer", "finetuning"} <= set(last)
    assert (trained["out"] / "validation" / "metrics_per_patient.csv").is_file()
    assert "| SF_gradual(PMs+N) |" in (trained["out"] / "test" / "metrics_summary.md").read_text()
    record = load_evaluation(trained["out"] / "test")  # the evaluation's record, which tables are built from
    assert record["split"] == "test" and record["method"] == "SF_gradual(PMs+N)"
    assert Path(record["checkpoint"]).parent == trained["out"] / "model"
    summary = list(csv.DictReader(open(trained["out"] / "test" / "metrics_summary.csv")))
    assert [(s["group"], s["class"], s["metric"]) for s in record["summary"]] == [
        (s["group"], s["class"], s["metric"]) for s in summary
    ]
    assert load_evaluation(trained["out"] / "validation") is None  # the in-loop validation reports are no record
    montages = sorted(p.stem for p in (trained["out"] / "test" / "montages").glob("*.png"))  # one per patient
    assert montages and montages == sorted(
        row["id"] for row in csv.DictReader(open(trained["out"] / "test" / "metrics_per_patient.csv"))
    )
    assert (trained["out"] / "test" / "montages" / f"{montages[0]}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    profile = json.loads((trained["out"] / "profile.json").read_text())  # --profile true: where the time went
    assert all(profile["seconds"][k] > 0 for k in ("iterations", "data", "ValidationHandler", "Checkpoint"))
    assert profile["total"] == pytest.approx(sum(profile["seconds"].values()))
    assert "training time" in trained["train"].stdout + trained["train"].stderr
    assert "interpreted in multiple ways" not in trained["train"].stderr  # MLflow's dataset-source warning
    assert "always_return_as_numpy" not in trained["eval"].stderr  # MONAI's warning about its own call


def test_mlflow_run_holds_params_metrics_and_artifacts(trained):
    client, runs = runs_named(trained["uri"], "gradual")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    params = run.data.params
    for key in (
        "variant",
        "inputs",
        "finetuning",
        "gamma",
        "alpha",
        "beta",
        "lr",
        "batch_size",
        "seed",
        "data_version",
        "pretrained",
    ):
        assert key in params, key
    assert params["pretrained"] == "True" and params["finetuning"] == "gradual"
    assert params["precision"] == resolve_precision("auto", "cpu")  # bf16 where this CPU computes it natively
    metrics = run.data.metrics
    for key in (
        "train_loss",
        "val_loss",
        "val_dice_lesion",
        "val_dice_penumbra_LVO",
        "val_dv_ml_core_all",
        "test_dice_hypoperfused_all",
        "test_dice_lesion",
        "test_loss",
    ):
        assert key in metrics and metrics[key] == metrics[key], key
    # the evaluation logs 95 % bootstrap bounds around each test mean; validation (every epoch) does not
    mean, low, high = (metrics[f"test_dice_hypoperfused_all{s}"] for s in ("", "_ci_low", "_ci_high"))
    assert low <= mean <= high and not any(k.startswith("val_") and k.endswith("_ci_low") for k in metrics)
    history = client.get_metric_history(run.info.run_id, "val_loss")
    assert len(history) >= 2
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert any(a.startswith("best") for a in artifacts) and "test" in artifacts
    assert any(a.path.endswith(".png") for a in client.list_artifacts(run.info.run_id, "test/montages"))
    assert not any(a.startswith("last") for a in artifacts)  # the 1 GB resume point stays out of MLflow
    resolved = json.loads(Path(client.download_artifacts(run.info.run_id, "train_resolved.json")).read_text())
    assert resolved["min_delta"] == 1000 and resolved["roi_size"] == [64, 64]  # the command line's overrides
    assert (
        resolved["network_def"]["_target_"] == "scripts.learning.model.networks.create_network"
    )  # over the merged config


def test_evaluation_in_each_precision_loads_the_trained_weights(trained, tmp_path):
    """Training and evaluation wrap the network in bf16 autocast where the CPU computes bf16 natively; the
    checkpoints hold the network's own weights, so an evaluation in either precision loads them and scores
    alike (emulated bf16 on an AVX2 CPU is slow but correct on this tiny cohort)."""
    dice = {}
    for precision in ("fp32", "bf16"):
        report = tmp_path / precision
        args = [*trained["args"](trained["out"]), "--precision", precision, "--report_dir", str(report)]
        args[args.index("--tracking_uri") + 1] = f"sqlite:///{tmp_path / 'mlflow.db'}"  # the training's run untouched
        bundle("evaluating", CONFIGS, *args)
        rows = list(csv.DictReader(open(report / "metrics_per_patient.csv")))
        dice[precision] = np.array([float(r["dice_hypoperfused"]) for r in rows])
    assert dice["fp32"].size and np.nanmax(np.abs(dice["fp32"] - dice["bf16"])) < 0.05, dice


def test_stage_transitions_happen_in_order(trained):
    client, runs = runs_named(trained["uri"], "gradual")
    stages = client.get_metric_history(runs[0].info.run_id, "finetuning_stage")
    values = [m.value for m in sorted(stages, key=lambda m: m.step)]
    assert values == sorted(values) and values[0] == 0.0 and len(values) >= 2
    assert values == [0.0, 1.0, 2.0] and [m.step for m in sorted(stages, key=lambda m: m.step)] == [1, 2, 3]
    last = torch.load(next((trained["out"] / "checkpoints").glob("last*.pt")), weights_only=False)
    assert [stage for _, stage in last["finetuning"]["transitions"]] == ["frozen", "half", "all"]
    assert trained_epochs(last) == 4  # no improvement in the last stage: early stopping, not epoch 6


def metric_history(uri: str, name: str, metric: str, experiment: str = "ctp-stroke") -> list[tuple[int, float]]:
    """A run's (step, value) history of one metric, each step once (a step logged again after a resume
    with the same value counts once)."""
    client, runs = runs_named(uri, name, experiment)
    return sorted({(m.step, round(m.value, 6)) for m in client.get_metric_history(runs[0].info.run_id, metric)})


def kill_after_epoch(args: list[str], out: Path, epoch: int, sig: int = signal.SIGKILL) -> str:
    """Start a training and send it ``sig`` as soon as the resume point of ``epoch`` is on disk; return its
    standard error. SIGTERM must stop it by itself, promptly, with status 143 (128 + 15)."""
    process = bundle("training", "bundle/configs/train.json", *args, wait=False)
    try:
        deadline = time.time() + 300
        while (
            time.time() < deadline
            and process.poll() is None
            and not list((out / "checkpoints").glob(f"last*epoch={epoch}.pt"))
        ):
            time.sleep(0.05)
        process.send_signal(sig)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
    assert list((out / "checkpoints").glob(f"last*epoch={epoch}.pt")), (
        f"no epoch-{epoch} resume point before the kill: {stderr[-3000:]}"
    )
    if sig == signal.SIGTERM:
        assert process.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    return stderr


def test_killed_run_resumes_exactly(trained, tiny_cohort, tmp_path):
    """The ``trained`` run (gradual, stage changes after epochs 2 and 3, early stop after 4) killed with
    SIGKILL after epoch 1 (frozen stage, Adam state in use), resumed and stopped with SIGTERM after epoch 2
    (just moved to ``half``, best weights reloaded, optimizer reset: the polite stop drops epoch 3 at its first
    iteration boundary, marks the MLflow run KILLED and exits 143), then resumed to the end: same final weights,
    same best model and the same MLflow history as the uninterrupted run, in one MLflow run."""
    out = tmp_path / "killed"
    args = trained["args"](out)
    kill_after_epoch(args, out, 1)
    stderr = kill_after_epoch([*args, "--resume", "true"], out, 2, signal.SIGTERM)
    assert re.search(r"training stopped by SIGTERM at iteration \d+, epoch 3; resume it with --resume true\.", stderr)
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["last_checkpoint_epoch=2.pt"]  # epoch 3 dropped
    _, runs = runs_named(trained["uri"], "killed")
    assert len(runs) == 1 and runs[0].info.status == "KILLED"  # not left RUNNING, not FINISHED
    run_in_process("training", "bundle/configs/train.json", **overrides_from([*args, "--resume", "true"]))  # to the end
    last = sorted((out / "checkpoints").glob("last*.pt"))
    assert [p.name for p in last] == ["last_checkpoint_epoch=4.pt"]
    final = torch.load(last[0], weights_only=False)
    reference = torch.load(next((trained["out"] / "checkpoints").glob("last*.pt")), weights_only=False)
    difference = max(
        float((final["network"][k].float() - v.float()).abs().max()) for k, v in reference["network"].items()
    )
    print(f"killed after epochs 1 and 2, resumed: max |weight difference| to the uninterrupted run {difference:.2e}")
    assert difference < 1e-5
    assert final["finetuning"] == reference["finetuning"] and final["best_model"] == reference["best_model"]
    assert [p.name for p in (out / "model").iterdir()] == [p.name for p in (trained["out"] / "model").iterdir()]
    for metric in ("train_loss", "val_loss", "val_dice_lesion", "finetuning_stage"):
        assert metric_history(trained["uri"], "killed", metric) == metric_history(trained["uri"], "gradual", metric), (
            metric
        )
    _, runs = runs_named(trained["uri"], "killed")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # the killed run was reopened and closed
    refused = refusal("training", "bundle/configs/train.json", **overrides_from(args))  # no --resume: keep the run
    assert refused.startswith("error: ") and "already has checkpoints; pass --resume true" in refused


def test_bad_training_inputs_stop_before_training(tiny_cohort, tmp_path):
    with pytest.raises(CTPDataError, match="datalist not found"):
        check_training_inputs(tmp_path / "none.json", "SF", "PMs", "frozen", "cpu")
    with pytest.raises(ValueError, match="variant must be one of"):
        check_training_inputs(tiny_cohort, "UNet", "PMs", "frozen", "cpu")
    with pytest.raises(ValueError, match="finetuning must be one of"):
        check_training_inputs(tiny_cohort, "SF", "PMs", "slow", "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU is available"):
            check_training_inputs(tiny_cohort, "SF", "PMs", "frozen", "cuda")
    empty = json.loads(tiny_cohort.read_text())
    empty["validation"] = []
    paths_absolute = re.sub(r'"(CTP_\d+_\d+/)', f'"{tiny_cohort.parent}/\\1', json.dumps(empty))  # not the ids
    (tmp_path / "empty.json").write_text(paths_absolute)
    with pytest.raises(CTPDataError, match="split 'validation' is empty"):
        check_training_inputs(tmp_path / "empty.json", "SF", "PMs", "frozen", "cpu")
    refused = refusal(  # its own output folder: the README's main command leaves runs/default with checkpoints
        "training", "bundle/configs/train.json", datalist=str(tmp_path / "none.json"), output_dir=str(tmp_path / "run")
    )
    assert refused == f"error: {tmp_path / 'none.json'}: datalist not found."
    for unreachable in ("http://127.0.0.1:9", "postgresql://nobody@127.0.0.1:9/mlflow"):
        with pytest.raises(ValueError, match=f"^{unreachable}: the MLflow tracking store does not answer"):
            check_training_inputs(tiny_cohort, "SF", "PMs", "frozen", "cpu", tracking_uri=unreachable)
    refused = refusal(  # through --tracking, as the command line runs it: one line, before any data is cached
        "training",
        "bundle/configs/train.json",
        tracking=TRACKING,
        datalist=str(tiny_cohort),
        output_dir=str(tmp_path / "untracked"),
        tracking_uri="http://127.0.0.1:9",
        pretrained=False,
    )
    assert refused.startswith("error: http://127.0.0.1:9: the MLflow tracking store does not answer")
    assert "\n" not in refused and not (tmp_path / "untracked" / "checkpoints").exists()


def test_exp3_grid_runs_resumes_and_tabulates(tiny_cohort, tmp_path):
    from scripts.learning.experiments.grids import GRIDS, build_tables, cell_name, run_grid

    assert len(GRIDS["exp2"]) == 12 and cell_name("SF", "PMs+M+N", "gradual") == "SF_G-PMs-M-N"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    overrides = {"max_epochs": 1, "pretrained": False, "roi_size": [64, 64], "slices_per_volume": 1}
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        names = run_grid("exp3", str(tiny_cohort), str(tmp_path / "runs"), uri, overrides)
        again = run_grid("exp3", str(tiny_cohort), str(tmp_path / "runs"), uri, overrides)  # all finished: skipped
    finally:
        os.chdir(cwd)
    assert names == again == ["SF_G-PMs-N", "EF_G-PMs-N", "EFI_G-PMs-N", "threshold", "voxel"]
    assert not list((tmp_path / "runs" / "exp3").glob("*/checkpoints/last*.pt"))  # finished cells keep no resume point
    assert len(list((tmp_path / "runs" / "exp3").glob("*/model/best*.pt"))) == 3
    (tmp_path / "mlflow.db").unlink()  # the tables are built from the local evaluations, not from MLflow
    written = build_tables(("exp3",), str(tmp_path / "runs"), str(tmp_path / "tables"))
    table = written["exp3_md"].read_text()
    assert all(f"| {name} | penumbra |" in table for name in names)
    rows = list(csv.DictReader(open(written["exp3_csv"])))
    threshold = load_evaluation(tmp_path / "runs" / "exp3" / "threshold" / "validation")
    assert threshold["method"] == "threshold" and threshold["core_rcbf"] == pytest.approx(0.3)
    dice = {(r["run"], r["group"], r["class"]): float(r["mean"]) for r in rows if r["metric"] == "dice"}
    recorded = {(s["metric"], s["group"], s["class"]): s["mean"] for s in threshold["summary"]}
    assert dice[("threshold", "LVO", "core")] == pytest.approx(recorded[("dice", "LVO", "core")])
    assert re.search(r"\d\.\d\d \[\d\.\d\d, \d\.\d\d\]", table)  # mean [95 % bootstrap interval]
    assert written["exp3_csv"].read_text().count("\n") > 3


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc), children first."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


TORCHRUN = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2")
"""Two local processes under torchrun."""


def test_two_process_ddp_training_with_gloo(tiny_cohort, tmp_path):
    """multi_gpu_train.json under torchrun on CPU, killed with SIGKILL after its first checkpoint and resumed
    with ``--resume true``: it ends at the uninterrupted run's epoch count in one MLflow run; stages move in
    step, only rank 0 logs and saves."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "ddp"
    weights = tmp_path / "vgg16.pth"
    torch.save({f"features.{k}": v for k, v in vgg16_layers().state_dict().items()}, weights)
    args = tiny_overrides(
        tiny_cohort,
        out,
        uri,
        "--max_epochs",
        "4",
        *STAGE_AFTER_EVERY_VALIDATION,
        "--batch_size",
        "1",
        "--dist_backend",
        "gloo",
    )  # CPU even beside a GPU
    args[args.index("--pretrained") + 1] = str(weights)
    # each rank saves its final weights: DDP (rebuilt at every stage) must have kept them identical
    args += [
        "--finalize",
        '[\'$torch.save(@network_def.state_dict(), @output_dir + "/rank" + str(@rank) + ".pt")\', '
        "'$scripts.learning.engine.distributed.end_process_group()']",
    ]
    command = [
        *TORCHRUN,
        "-m",
        "monai.bundle",
        "run",
        "training",
        "--config_file",
        "['bundle/configs/train.json','bundle/configs/multi_gpu_train.json']",
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # killed with SIGKILL (launcher and both ranks) once epoch 1 is saved, then resumed with --resume true
    with open(tmp_path / "killed.log", "w") as log:
        killed = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=log, env=env)
        deadline = time.time() + 300
        while time.time() < deadline and killed.poll() is None and not list(out.glob("checkpoints/last*epoch=1.pt")):
            time.sleep(0.05)
        for pid in [killed.pid, *descendants(killed.pid)]:  # torchrun starts its ranks in their own sessions
            os.kill(pid, signal.SIGKILL)
        killed.wait()
    assert list(out.glob("checkpoints/last*epoch=1.pt")), (tmp_path / "killed.log").read_text()[-4000:]
    assert [r.info.status for r in runs_named(uri, "ddp")[1]] == ["RUNNING"]  # killed mid-run
    result = subprocess.run(
        command + ["--resume", "true"], cwd=ROOT, capture_output=True, text=True, env=env, timeout=SUBPROCESS_TIMEOUT
    )
    assert result.returncode == 0, result.stderr[-4000:]
    last = list((out / "checkpoints").glob("last*.pt"))
    assert len(last) == 1 and len(list((out / "model").glob("best*.pt"))) == 1
    state = torch.load(last[0], weights_only=False)
    n_training = len(json.loads(tiny_cohort.read_text())["training"])
    assert state["trainer"]["epoch_length"] == -(-n_training // 2)  # each rank sees its half of the patients
    assert [stage for _, stage in state["finetuning"]["transitions"]] == ["frozen", "half", "all"]
    assert trained_epochs(state) == 4
    rank0, rank1 = (torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    first_conv = [k for k in rank0 if k.endswith("features.0.weight")]  # unfrozen only in the last stage
    initial = torch.load(weights, weights_only=True)["features.0.weight"]
    assert first_conv and all(not torch.equal(rank0[k], initial) for k in first_conv)
    client, runs = runs_named(uri, "ddp")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # rank 1 opened no run of its own
    stages = client.get_metric_history(runs[0].info.run_id, "finetuning_stage")
    assert sorted(m.value for m in stages) == [0.0, 1.0, 2.0]  # logged once each, by rank 0
    history = client.get_metric_history(runs[0].info.run_id, "train_loss")
    assert sorted(m.step for m in history) == [1, 2, 3, 4]  # one run across the kill, each epoch logged once
    assert not client.search_runs([runs[0].info.experiment_id], filter_string="attributes.status = 'RUNNING'")


def test_multi_gpu_config_keeps_the_writers_on_rank_zero_only():
    """multi_gpu_train.json picks each rank's handlers by kind (rank_handlers), so on other ranks the trainer loses
    only its MLflow handler and the validator keeps only its StatsHandler, wherever they stand in the lists."""
    from pydoc import locate

    from monai.bundle import ConfigParser, ConfigWorkflow

    from scripts.learning.engine.distributed import WRITERS

    parser = ConfigParser()
    parser.read_config([str(ROOT / "bundle/configs/train.json"), str(ROOT / "bundle/configs/multi_gpu_train.json")])
    ConfigWorkflow.patch_bundle_tracking(parser, ConfigParser.load_config_files(str(ROOT / TRACKING)))  # --tracking
    assert "rank_handlers(" in parser["train#trainer#train_handlers"]
    assert "rank_handlers(" in parser["validate#evaluator#val_handlers"]

    def kind(handler):  # the class a handler entry builds, through an @reference where there is one
        entry = parser[handler[1:]] if isinstance(handler, str) else handler
        return locate(entry["_target_"]) or locate("monai.handlers." + entry["_target_"])

    def kept(handlers):
        return [k.__name__ for k in map(kind, handlers) if not issubclass(k, WRITERS)]

    train, validate = parser["train#handlers"], parser["validate#handlers"]
    assert [k.__name__ for k in map(kind, train) if issubclass(k, WRITERS)] == ["MLFlowHandler"]
    assert len(kept(train)) == len(train) - 1
    assert kept(validate) == ["StatsHandler"]


def test_training_batches_ignore_extra_datalist_keys(tiny_cohort):
    """Items may carry extra keys (true maps, latent parameters) that differ between patients: a batch of a
    lesion patient and a WIS patient must still collate (only the keys training uses are kept)."""
    from monai.bundle import ConfigParser
    from monai.data import list_data_collate
    from monai.transforms import Compose

    from scripts.io import load_datalist

    parser = ConfigParser()
    parser.read_config(str(ROOT / "bundle/configs/train.json"))
    preprocessing = Compose(parser.get_parsed_content("preprocessing"))
    items = [i for split in load_datalist(tiny_cohort).values() for i in split]
    wis = next(i for i in items if i["group"] == "WIS")
    lesion = next(i for i in items if i["group"] == "LVO")
    assert set(lesion) != set(wis)  # e.g. the fate model's parameters and true relative flow
    batch = list_data_collate([preprocessing(dict(lesion)), preprocessing(dict(wis))])
    assert batch["image"].shape[0] == 2 and list(batch["group"]) == ["LVO", "WIS"]


def test_non_lvo_penalty_scales_only_non_lvo_samples_and_clipping_bounds_every_gradient():
    """Through a real SupervisedTrainer: the same image costs ``non_lvo_factor`` times more when its batch says
    Non-LVO, the flags are cleared after each iteration (validation unaffected), and with a loss scaled to give
    large gradients every parameter's gradient stays within the clip value."""
    from ignite.engine import Events
    from monai.engines import SupervisedTrainer

    from scripts.learning.engine.training import ClipGradientValues, NonLVOPenalty
    from scripts.learning.model.losses import FocalTverskyLoss

    torch.manual_seed(0)
    network = torch.nn.Conv2d(2, 3, 3, padding=1)
    loss = FocalTverskyLoss(class_weights=(1.0, 1.0, 1.0), form="class", sample_weighting="none", non_lvo_factor=6.0)
    image, label = torch.randn(1, 2, 8, 8), torch.randint(0, 3, (1, 1, 8, 8))
    batches = [{"image": image, "label": label, "group": [group]} for group in ("LVO", "Non-LVO", "WIS")]
    losses, grads = [], []
    trainer = SupervisedTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=batches,
        network=network,
        optimizer=torch.optim.SGD(network.parameters(), lr=0.0),
        loss_function=lambda pred, y: 1000.0 * loss(pred, y),
    )
    NonLVOPenalty(loss).attach(trainer)
    ClipGradientValues(0.01).attach(trainer)

    @trainer.on(Events.ITERATION_COMPLETED)
    def record(engine):
        losses.append(float(engine.state.output[0]["loss"]))
        grads.append(max(float(p.grad.abs().max()) for p in network.parameters()))

    trainer.run()
    lvo, non_lvo, wis = losses
    assert non_lvo == pytest.approx(6.0 * lvo, rel=1e-5) and wis == pytest.approx(lvo, rel=1e-5)
    assert loss.batch_non_lvo is None
    assert max(grads) <= 0.01 + 1e-9 and max(grads) == pytest.approx(0.01)  # clipped, and the clip was reached


DDP_STEP = """
import sys
import torch, torch.distributed as dist
from scripts.learning.engine.distributed import end_process_group
from scripts.learning.engine.training import ClipGradientValues
dist.init_process_group("gloo")
rank, out = dist.get_rank(), sys.argv[1]
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Conv2d(2, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 3, 1))
image, label = torch.randn(4, 2, 8, 8), torch.randint(0, 3, (4, 8, 8))
ddp = torch.nn.parallel.DistributedDataParallel(net)
optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
ClipGradientValues(CLIP).register(optimizer)
part = slice(2 * rank, 2 * rank + 2)
torch.nn.functional.cross_entropy(ddp(image[part]), label[part]).backward()
optimizer.step()
if rank == 0:
    torch.save(net.state_dict(), out)  # rank 1 reaches the end first: the rank that used to abort at exit
assert end_process_group() == 1 and not dist.is_initialized()
"""


def test_ddp_update_equals_one_process_on_the_whole_batch(tmp_path):
    """Two gloo processes with 2 samples each make the same SGD update as one process with all 4 samples,
    clipping included (applied after DDP has averaged the gradients). The clip value is set between the
    per-process and the averaged gradient sizes, so clipping each process's gradient first would differ."""
    from scripts.learning.engine.training import ClipGradientValues

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 3, 1))
    image, label = torch.randn(4, 2, 8, 8), torch.randint(0, 3, (4, 8, 8))
    grads = []
    for part in (slice(0, 2), slice(2, 4), slice(0, 4)):
        net.zero_grad()
        torch.nn.functional.cross_entropy(net(image[part]), label[part]).backward()
        grads.append(torch.cat([p.grad.flatten() for p in net.parameters()]))
    clip = float(grads[2].abs().quantile(0.75))  # a quarter of the averaged gradient is clipped
    assert float(torch.maximum(grads[0].abs(), grads[1].abs()).max()) > clip
    per_process_first = (grads[0].clamp(-clip, clip) + grads[1].clamp(-clip, clip)) / 2
    assert not torch.allclose(per_process_first, grads[2].clamp(-clip, clip), atol=1e-6)  # the order matters

    optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
    ClipGradientValues(clip).register(optimizer)
    net.zero_grad()
    torch.nn.functional.cross_entropy(net(image), label).backward()
    optimizer.step()
    script = tmp_path / "ddp_step.py"
    script.write_text(DDP_STEP.replace("CLIP", repr(clip)))
    result = subprocess.run(
        [
            *TORCHRUN,
            str(script),
            str(tmp_path / "ddp.pt"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "bundle")},
        timeout=SUBPROCESS_TIMEOUT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=True)
    difference = max(float((ddp[k] - v).abs().max()) for k, v in net.state_dict().items())
    print(f"DDP (2 x batch 2) vs one process (batch 4): max |weight difference| {difference:.2e}")
    assert difference < 1e-6, difference


def test_staged_fine_tuning_moves_on_a_real_plateau_reloads_the_best_weights_and_stops(tmp_path):
    """GradualFineTuning on a scripted validation score (higher is better, patience 2): the stage changes
    after two validations without improvement (not forced), the best weights are reloaded, the optimizer is
    reset (state cleared, learning rate back to its value, only trainable parameters), and after the last
    stage training stops after ``patience`` validations without improvement."""
    from ignite.engine import Engine, Events

    from scripts.learning.model.finetuning import GradualFineTuning

    class Tiny(torch.nn.Module):
        pretrained = True

        def __init__(self):
            super().__init__()
            self.encoders = torch.nn.ModuleList([torch.nn.Linear(2, 2)])
            self.decoder = torch.nn.Linear(2, 1)

        def set_finetuning(self, stage):
            for p in self.encoders.parameters():
                p.requires_grad_(stage != "frozen")

    torch.manual_seed(0)
    net = Tiny()
    optimizer = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=0.01)
    scores = iter([0.1, 0.3, 0.3, 0.29, 0.35, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2])
    best_path = tmp_path / "best.pt"
    validator = Engine(lambda e, b: None)
    handler = GradualFineTuning(
        net, optimizer, validator, mode="gradual_full", patience=2, lr=0.01, best_checkpoint=lambda: str(best_path)
    )
    seen = {}

    def step(engine, batch):
        optimizer.zero_grad()
        net.decoder(net.encoders[0](torch.ones(1, 2))).sum().backward()
        optimizer.step()

    trainer = Engine(step)
    trainer.network = net  # what MONAI's trainer exposes (the handler rewraps it under DDP)

    @validator.on(Events.COMPLETED)
    def score(engine):  # registered before the handler's own COMPLETED callback: the score is set first
        engine.state.metrics["val_dice_lesion"] = next(scores)
        if engine.state.metrics["val_dice_lesion"] > handler.best:  # the best model saver's job
            torch.save({"network": net.state_dict()}, best_path)
            seen.setdefault("best_weights", []).append({k: v.clone() for k, v in net.state_dict().items()})

    handler.attach(trainer)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: validator.run([0]))

    @trainer.on(Events.EPOCH_COMPLETED)
    def after_validation(engine):
        if engine.state.epoch == 4:  # the plateau (0.3, 0.29 after 0.3) moved the run to stage "all"
            seen["weights"] = {k: v.clone() for k, v in net.state_dict().items()}
            seen["state"], seen["lr"] = len(optimizer.state), optimizer.param_groups[0]["lr"]
            seen["params"] = len(optimizer.param_groups[0]["params"])
        if engine.state.epoch == 2:
            optimizer.param_groups[0]["lr"] = 0.5  # changed mid-stage: the stage change must reset it

    trainer.run([0], max_epochs=20)
    assert handler.transitions == [(1, "frozen"), (4, "all")]
    epoch2 = seen["best_weights"][1]  # saved at epochs 1, 2 and 5
    assert all(torch.equal(seen["weights"][k], v) for k, v in epoch2.items())  # reloaded epoch 2's weights
    assert (seen["state"], seen["lr"], seen["params"]) == (0, 0.01, 4)  # 4 tensors: encoder and decoder
    assert trainer.state.epoch == 7  # best 0.35 at epoch 5, then 2 validations without improvement: stop


def test_a_configured_tracking_uri_wins_over_the_environment(tmp_path, monkeypatch):
    """MONAI's MLFlowHandler lets MLFLOW_TRACKING_URI beat its tracking_uri argument; the bundle's handler
    (what train.json uses) keeps the bundle's order: the configured store first, the environment only
    without one."""
    import mlflow
    from ignite.engine import Engine

    from scripts.learning.tracking.handlers import MLFlowHandler

    configured, environment = (f"sqlite:///{tmp_path / name}.db" for name in ("configured", "environment"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", environment)
    for uri, name in ((configured, "explicit"), (None, "from-environment")):
        engine = Engine(lambda engine, batch: 0.0)
        MLFlowHandler(tracking_uri=uri, experiment_name=name, run_name=name, iteration_log=False).attach(engine)
        engine.run([0], max_epochs=1)
        assert os.environ["MLFLOW_TRACKING_URI"] == environment  # the user's setting is left as it was
    assert mlflow.MlflowClient(configured).get_experiment_by_name("explicit") is not None
    assert mlflow.MlflowClient(environment).get_experiment_by_name("explicit") is None
    assert mlflow.MlflowClient(environment).get_experiment_by_name("from-environment") is not None


def test_switching_mlflow_for_a_model_leaves_the_users_settings(monkeypatch):
    """``mlflow.set_tracking_uri`` writes MLFLOW_TRACKING_URI and MLflow's own temporary switch unsets it: the
    registry's switch (logging and loading models) restores the user's environment and MLflow's globals."""
    import mlflow

    from scripts.learning.tracking.runs import use_tracking_uri

    for user in ("sqlite:///user.db", None):
        if user:
            monkeypatch.setenv("MLFLOW_TRACKING_URI", user)
        else:
            monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
        before = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
        with use_tracking_uri("sqlite:///other.db"):
            assert mlflow.get_tracking_uri() == mlflow.get_registry_uri() == "sqlite:///other.db"
        assert os.environ.get("MLFLOW_TRACKING_URI") == user and "MLFLOW_REGISTRY_URI" not in os.environ
        assert (mlflow.get_tracking_uri(), mlflow.get_registry_uri()) == before


def test_a_checkpoint_that_cannot_be_written_keeps_the_previous_one(tmp_path):
    """train.json's resume-point saver on a 512 KiB filesystem: the epoch-1 checkpoint fits, epoch 2's (bigger,
    as a checkpoint grows when Adam's state appears) does not. Ignite alone deletes the old file before saving
    the new one, which left nothing; here the previous checkpoint stays loadable, no temporary file is left, and
    the error is one line naming the folder."""
    from conftest import small_filesystem
    from ignite.engine import Engine, Events, State
    from ignite.handlers import Checkpoint

    from scripts.cli import run_or_exit
    from scripts.learning.engine.checkpoints import KeepUntilSaved

    folder = tmp_path / "checkpoints"
    with small_filesystem(folder, 512):
        content = {"network": torch.nn.Linear(200, 200)}  # 160 KB of weights
        saver = Checkpoint(
            content,
            KeepUntilSaved(folder),
            filename_prefix="last",
            filename_pattern="{filename_prefix}_checkpoint_epoch={global_step}.{ext}",
            n_saved=1,
            global_step_transform=lambda engine, event: engine.state.epoch,
        )
        engine = Engine(lambda e, b: None)
        engine.state = State(epoch=1)
        saver(engine)
        assert [p.name for p in folder.iterdir()] == ["last_checkpoint_epoch=1.pt"]
        content["network"] = torch.nn.Linear(400, 400)  # 640 KB: past the filesystem's end
        engine.state.epoch = 2

        def save(engine):
            saver(engine)

        trainer = Engine(lambda e, b: None)
        trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: save(engine))
        with pytest.raises(SystemExit) as stop:
            run_or_exit(trainer.run, [0], max_epochs=1)  # raised inside an Ignite handler, as in training
        message = str(stop.value.code)
        assert message.startswith(f"error: {folder}: checkpoint last_checkpoint_epoch=2.pt could not be written")
        assert "(no space left on the device)" in message and "last_checkpoint_epoch=1.pt" in message
        assert "\n" not in message
        assert [p.name for p in folder.iterdir()] == ["last_checkpoint_epoch=1.pt"]  # no temporary file either
        weights = torch.load(folder / "last_checkpoint_epoch=1.pt", weights_only=True)
        assert weights["weight"].shape == (200, 200)


def test_rank_handlers_pick_by_kind_not_position():
    """Under torchrun only rank 0 writes (MLflow, best model, reports), wherever those handlers stand in the list."""
    from monai.handlers import StatsHandler, ValidationHandler

    from scripts.learning.engine.checkpoints import BestModelSaver
    from scripts.learning.engine.distributed import rank_handlers
    from scripts.learning.engine.reports import MetricReports
    from scripts.learning.tracking.handlers import MLFlowHandler

    writers = [object.__new__(kind) for kind in (MLFlowHandler, BestModelSaver, MetricReports)]
    others = [StatsHandler(), object.__new__(ValidationHandler)]
    handlers = [writers[0], others[0], writers[1], others[1], writers[2]]  # writers first, between and last
    assert rank_handlers(handlers, 0) == handlers
    assert rank_handlers(handlers, 1) == others
    assert rank_handlers(list(reversed(handlers)), 3) == list(reversed(others))
