"""Where a training's time goes: Ignite's ``HandlersTimeProfiler`` on the trainer, summed up at the end of the
run (``--profile true``)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ignite.engine import Engine, Events
from ignite.handlers import HandlersTimeProfiler

from ...io import save_json

logger = logging.getLogger(__name__)


class TrainingProfile:
    """Attach to the trainer (a handler in ``train#handlers``); at the end, log one line with the seconds spent
    in data loading, training iterations (forward, loss, backward, optimiser) and each handler (validation is
    ``ValidationHandler``; checkpoints, MLflow, fine-tuning ...) and write them to ``<output_dir>/profile.json``.

    Args:
        output_dir: where ``profile.json`` goes.
        enabled: attach nothing when false (the config's ``profile`` switch).
    """

    def __init__(self, output_dir: str | os.PathLike, enabled: bool = True) -> None:
        self.output_dir, self.enabled = Path(output_dir), enabled
        self.profiler = HandlersTimeProfiler()

    def attach(self, engine: Engine) -> None:
        if not self.enabled:
            return
        self.profiler.attach(engine)
        engine.add_event_handler(Events.COMPLETED, self.report)

    def summary(self) -> dict[str, float]:
        """Seconds per part of the training so far, largest first."""
        parts: dict[str, float] = {}
        for name, _event, total, *_ in self.profiler.get_results():
            if name == "Total" or not isinstance(total, (int, float)):
                continue
            name = {"Processing": "iterations", "Dataflow": "data"}.get(str(name), str(name).split(".")[0])
            parts[name] = parts.get(name, 0.0) + float(total)
        return dict(sorted(parts.items(), key=lambda kv: -kv[1]))

    def report(self, engine: Engine) -> None:
        parts = self.summary()
        total = sum(parts.values())
        shown = ", ".join(f"{k} {v:.1f} s ({v / max(total, 1e-9):.0%})" for k, v in parts.items() if v >= 0.05)
        logger.info("training time %.1f s: %s", total, shown)
        save_json(self.output_dir / "profile.json", {"seconds": parts, "total": total})
