"""The package layout is the architecture: each layer of ``bundle/scripts`` imports only from layers below it."""

from __future__ import annotations

import ast
import json
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[1] / "bundle" / "scripts"
LAYERS = {"io": 0, "physics": 0, "cli": 1, "perfusion": 2, "simulation": 3, "learning": 3, "clinical": 4, "node": 5}
"""Lower imports nothing above it; equal ranks are siblings that must not import each other."""


def scripts_imports(path: Path) -> set[str]:
    """The ``scripts`` packages (first component under ``scripts``) that a module imports."""
    module = path.relative_to(SCRIPTS).with_suffix("").parts
    package = list(module[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - (node.level - 1)]
            target = base + (node.module.split(".") if node.module else [a.name for a in node.names][:1])
            found.add(target[0])
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("scripts."):
            found.add(node.module.split(".")[1])
    return found


def test_every_module_belongs_to_a_layer():
    for path in SCRIPTS.rglob("*.py"):
        if path.parent == SCRIPTS and path.name == "__init__.py":
            continue
        assert path.relative_to(SCRIPTS).parts[0].removesuffix(".py") in LAYERS, path


def test_imports_flow_downwards_only():
    wrong = []
    for path in SCRIPTS.rglob("*.py"):
        if path.parent == SCRIPTS and path.name == "__init__.py":
            continue
        layer = path.relative_to(SCRIPTS).parts[0].removesuffix(".py")
        for target in scripts_imports(path) - {layer}:
            if LAYERS[target] >= LAYERS[layer]:
                wrong.append(f"{path.relative_to(SCRIPTS)} imports scripts.{target}")
    assert not wrong, wrong


LEARNING = SCRIPTS / "learning"
ROOMS = {"model": 0, "tracking": 1, "engine": 2, "experiments": 3}
"""The rooms of ``learning``: the model knows no tracker, the tracker no engine, the engine no experiment."""


def learning_imports(path: Path) -> set[str]:
    """The rooms of ``scripts.learning`` that a module under it imports."""
    package = list(path.relative_to(SCRIPTS).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - (node.level - 1)]
            target = base + (node.module.split(".") if node.module else [a.name for a in node.names][:1])
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("scripts."):
            target = node.module.split(".")[1:]
        else:
            continue
        if target[0] == "learning" and len(target) > 1:
            found.add(target[1])
    return found


def test_learning_has_rooms():
    loose = [p.name for p in LEARNING.glob("*.py") if p.name != "__init__.py"]
    assert not loose, f"modules outside a room of learning/: {loose}"
    assert {p.name for p in LEARNING.iterdir() if p.is_dir() and p.name != "__pycache__"} == set(ROOMS)


def test_learning_rooms_import_downwards_only():
    wrong = []
    for path in LEARNING.rglob("*.py"):
        room = path.relative_to(LEARNING).parts[0]
        if room == "__init__.py":
            continue
        for target in learning_imports(path) - {room}:
            if ROOMS[target] >= ROOMS[room]:
                wrong.append(f"{path.relative_to(SCRIPTS)} imports learning.{target}")
    assert not wrong, wrong


def test_modules_and_functions_stay_small():
    """No module over 350 lines, no function over 80 (issue #29): a reader sees one job at a time."""
    big = []
    for path in SCRIPTS.rglob("*.py"):
        source = path.read_text()
        if source.count("\n") > 350:
            big.append(f"{path.relative_to(SCRIPTS)}: {source.count(chr(10))} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80:
                big.append(
                    f"{path.relative_to(SCRIPTS)}:{node.lineno} {node.name}: {node.end_lineno - node.lineno + 1}"
                )
    assert not big, big


def test_mlflow_enters_through_the_tracking_room_only():
    """The tracker is reached through ``learning/tracking`` (issue #29): no other module imports MLflow."""
    importers = []
    for path in SCRIPTS.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            if any(name.split(".")[0] == "mlflow" for name in names):
                importers.append(str(path.relative_to(SCRIPTS)))
    assert importers and all(p.startswith("learning/tracking/") for p in importers), importers


def test_one_config_names_the_tracker():
    """MLflow enters the workflows through MONAI's tracking settings, ``--tracking bundle/configs/mlflow.json``
    (issue #29): no other config names an MLflow handler or the tracking room."""
    configs = SCRIPTS.parents[0] / "configs"
    naming = []
    for path in sorted(configs.glob("*.json")):
        entries = {k: v for k, v in json.loads(path.read_text()).items() if k not in ("_comment", "changelog")}
        text = json.dumps(entries)
        if "MLFlowHandler" in text or "scripts.learning.tracking" in text:
            naming.append(path.name)
    assert naming == ["mlflow.json"], naming
    settings = json.loads((configs / "mlflow.json").read_text())
    assert set(settings["handlers_id"]) == {"trainer", "validator", "evaluator"}  # MONAI's settings format
    assert set(settings["handlers_id"]) <= set(settings["configs"])


SHARED_BY_TRAINING_AND_INFERENCE = (
    "variant", "inputs", "encoder_width", "precision", "device", "image_keys", "use_nihss",
    "roi_size", "brain_crop", "crop_margin", "prepare_batch",
)  # fmt: skip
"""Ids that ``train.json`` and ``inference.json`` both define and that must agree, or the trained model would not be
the one inference builds (``load_model`` refuses a checkpoint that does not fit, at run time)."""


def test_training_and_inference_configs_agree_on_what_they_share():
    """The network, its inputs and their loading are one fact written in two configs, the network also in
    ``network.json`` (issue #29 item 3).

    They stay in both because ``inference.json`` must stand alone: MONAI Label's bundle infer task and MONAI's
    ``ckpt_export`` (the TorchScript's embedded config) read it without a config list, as the model zoo's bundles
    do; so this test is the one place that keeps them equal."""
    configs = SCRIPTS.parents[0] / "configs"
    train, inference = (json.loads((configs / name).read_text()) for name in ("train.json", "inference.json"))
    for key in SHARED_BY_TRAINING_AND_INFERENCE:
        assert train[key] == inference[key], key
    network = json.loads((configs / "network.json").read_text())  # verify_net_in_out's network alone
    for key in ("variant", "inputs", "encoder_width"):
        assert network[key] == train[key], key
    for config in (train, inference, network):
        definition = {k: v for k, v in config["network_def"].items() if k not in ("pretrained", "lut")}
        assert definition == {
            "_target_": "scripts.learning.model.networks.create_network",
            "variant": "@variant",
            "inputs": "@inputs",
            "encoder_width": "@encoder_width",
        }
    assert inference["network_def"]["pretrained"] is False  # weights come from the checkpoint, never downloaded
    # the loading head: maps read, channel first, brain mask from the MIP, the network's maps concatenated
    head = [t["_target_"].rsplit(".", 1)[-1] for t in train["preprocessing"][:4]]
    assert head == ["LoadImaged", "EnsureChannelFirstd", "BrainMaskFromMIPd", "ConcatItemsd"]
    assert train["preprocessing"][:4] == inference["load_transforms"][:4]
    crop = "scripts.perfusion.brain_mask.brain_crop(['image', 'brain'], @brain_crop, @crop_margin)"
    assert crop in train["validate"]["brain_crop"] and crop in inference["preprocessing"]["transforms"]
