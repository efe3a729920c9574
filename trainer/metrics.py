"""A run's metrics: one JSON row per step in `metrics.jsonl` (the record the plots and `--resume` read) and the same
numbers as TensorBoard scalars under `tensorboard/` (when the `tensorboard` package is installed).

On resume, rows past the checkpoint the run restarts from are dropped from the JSONL (they are redone), and
TensorBoard is told to purge its events after that step, so neither keeps two values for one step.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


class MetricsLog:
    """Appends step rows to `<dir>/metrics.jsonl` and mirrors the numeric ones to TensorBoard."""

    def __init__(self, output_dir: Path, resume_step: int | None, tensorboard: bool = True) -> None:
        """resume_step: None for a fresh run (the old rows are removed), else the checkpoint step (later rows go)."""
        self.path = output_dir / "metrics.jsonl"
        if resume_step is None:
            self.path.unlink(missing_ok=True)
        elif self.path.exists():
            kept = [
                line
                for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line)["step"] <= resume_step
            ]
            self.path.write_text("".join(line + "\n" for line in kept))
        self.writer: Any = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # the `tensorboard` package is optional: JSONL and PNG are the record
                return
            self.writer = SummaryWriter(
                str(output_dir / "tensorboard"), purge_step=None if resume_step is None else resume_step + 1
            )

    def write(self, row: dict[str, Any]) -> None:
        with open(self.path, "a") as handle:
            handle.write(json.dumps(row) + "\n")
        if self.writer is not None:
            for key, value in row.items():
                if (
                    key != "step"
                    and isinstance(value, (int, float))
                    and not isinstance(value, bool)
                    and math.isfinite(value)
                ):
                    self.writer.add_scalar(key, value, row["step"])
            self.writer.flush()

    def rows(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
