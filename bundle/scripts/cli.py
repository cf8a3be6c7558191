"""How the bundle's workflows are launched and how they end.

From the command line (``python -m monai.bundle run <id>``) a workflow ends on bad input with one line
(:func:`run_or_exit`). From Python, every caller (the loss search, the experiment grids, the MONAI Deploy
app) launches a workflow the same way, :func:`bundle_workflow` / :func:`run_workflow`, which is MONAI's
``ConfigWorkflow`` as the command line runs it, plus the record of the executed config.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import ignite.distributed as idist
from fire.parser import DefaultParseValue
from monai.bundle import ConfigParser, ConfigWorkflow

from .io import CTPDataError, OutputWriteError, save_json

logger = logging.getLogger(__name__)

USER_ERRORS = (CTPDataError, FileExistsError, FileNotFoundError, ValueError, OutputWriteError)
WRAPPED_ERRORS = (CTPDataError, OutputWriteError, FileExistsError)
"""The bundle's own errors, found under MONAI's wrappers (a generic ``ValueError`` deep inside stays a traceback)."""
TRACKING_SETTINGS = "mlflow.json"
"""The bundle's MLflow tracking settings in its config folder, MONAI's ``--tracking`` file (``tracking=`` of
:func:`bundle_workflow`)."""
_RUN_ARGS = ("config_file", "meta_file", "logging_file", "args_file", "tracking", "run_id", "init_id", "final_id")
"""Arguments of ``monai.bundle run`` that are not config overrides."""
RESOLVED_CONFIG = "resolved_config"
"""Config id of the path where a workflow records the config it executes (train.json defines it)."""


def run_or_exit(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call ``function``; bad input, a refused overwrite or an output that cannot be written (also when MONAI
    wrapped it) exits with status 1 and a one-line message.

    MONAI's config runner would otherwise bury the message under its own ``Failed to evaluate`` traceback.
    """
    try:
        return function(*args, **kwargs)
    except Exception as err:
        cause = user_error(err)
        if cause is None:
            raise
        raise SystemExit(f"error: {cause}") from None


def user_error(err: BaseException) -> BaseException | None:
    """``err`` when it is a user's error (:data:`USER_ERRORS`), else the first bundle error (:data:`WRAPPED_ERRORS`)
    it was raised from: MONAI's transforms and config runner wrap what they call in ``RuntimeError``."""
    if isinstance(err, USER_ERRORS):
        return err
    return next((e for e in exception_chain(err) if isinstance(e, WRAPPED_ERRORS)), None)


def exception_chain(err: BaseException | None, context: bool = False) -> Iterator[BaseException]:
    """``err`` and the exceptions it was raised from (``__cause__``; with ``context``, else ``__context__``), each
    once."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or (err.__context__ if context else None)


def bundle_workflow(
    run_id: str, config_file: str | os.PathLike | Sequence[str | os.PathLike], workflow_type: str = "train", **overrides
) -> Any:
    """MONAI's ``ConfigWorkflow`` for ``run_id`` with ``overrides`` (config ids to values; ``tracking``, the
    tracking settings, as on the command line), initialised, its executed config written to the path under the
    ``resolved_config`` id when the config defines one.

    The caller may attach handlers before ``run()`` (the loss search adds its pruning handler). Logging is
    left as the calling process configured it.
    """
    files = [str(f) for f in config_file] if isinstance(config_file, (list, tuple)) else str(config_file)
    workflow = ConfigWorkflow(
        config_file=files, logging_file=False, run_id=run_id, workflow_type=workflow_type, **overrides
    )
    workflow.initialize()
    if RESOLVED_CONFIG in workflow.parser:  # the config and overrides, as the command line records them
        record = ConfigParser()
        record.read_config(files)
        record.update({k: v for k, v in overrides.items() if k not in _RUN_ARGS})
        save_json(workflow.parser.get_parsed_content(RESOLVED_CONFIG), record.get())
    return workflow


def run_workflow(
    run_id: str, config_file: str | os.PathLike | Sequence[str | os.PathLike], workflow_type: str = "train", **overrides
) -> Any:
    """Run a bundle workflow in this process as ``python -m monai.bundle run <run_id>`` would; return its result
    (the value of the ``run_id`` expression list)."""
    workflow = bundle_workflow(run_id, config_file, workflow_type, **overrides)
    try:
        return workflow.run()
    finally:
        workflow.finalize()


def save_resolved_config(path: str | os.PathLike, run_id: str, argv: Sequence[str] | None = None) -> str | None:
    """Write the configuration this ``python -m monai.bundle run <run_id>`` executes (its config files merged,
    then the command line's overrides applied, as MONAI's ``ConfigWorkflow`` does) to ``path``, atomically.

    The file goes into the run's artifacts (with ``--tracking``, MLflow's), so a run can be repeated from its
    record. Returns None (nothing written) on processes other than rank 0, or when this process was not started
    as ``monai.bundle run <run_id>``: a workflow launched from Python is recorded by :func:`bundle_workflow`.
    """
    argv = list(sys.argv if argv is None else argv)
    if idist.get_rank() != 0 or len(argv) < 3 or "monai" not in argv[0] or argv[1] != "run":
        return None
    pairs: dict[str, Any] = {} if argv[2].startswith("--") else {"run_id": argv[2]}
    items = iter(argv[2:] if argv[2].startswith("--") else argv[3:])
    for item in items:
        if not item.startswith("--"):
            continue
        key, sep, value = item[2:].partition("=")
        value = value if sep else next(items, "true")
        key = key.replace("-", "_") if key.replace("-", "_") in _RUN_ARGS else key
        pairs[key] = DefaultParseValue(value)
    if "config_file" not in pairs or pairs.get("run_id") != run_id:
        return None
    parser = ConfigParser()
    parser.read_config(f=pairs["config_file"])
    parser.update(pairs={k: v for k, v in pairs.items() if k not in _RUN_ARGS})
    save_json(path, parser.get())
    return str(path)
