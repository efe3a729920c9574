"""Checkpoints: model, optimizer, scheduler, every RNG state and the data position, written atomically, so a resumed
run draws exactly the batches an uninterrupted one would have."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

LATEST = "latest"


def rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def save_checkpoint(
    directory: Path,
    model: Any,
    optimizer: Any,
    scheduler: Any,
    step: int,
    data_state: dict[str, Any],
    ca_optimizer: Any = None,
    ca_scheduler: Any = None,
) -> Path:
    """Write `directory/step-N`, then point `latest` at it; a kill mid-write leaves the previous one intact.
    `ca_optimizer` / `ca_scheduler`: L_CA's own, when it has them (TrainerConfig.ca_updates_per_step)."""
    target = directory / f"step-{step:06d}"
    partial = directory / f".partial-step-{step:06d}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    model.save_pretrained(partial / "model", safe_serialization=True)
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "step": step,
            "data": data_state,
            "rng": rng_state(),
            **(
                {"ca_optimizer": ca_optimizer.state_dict(), "ca_scheduler": ca_scheduler.state_dict()}
                if ca_optimizer is not None
                else {}
            ),
        },
        partial / "trainer_state.pt",
    )
    shutil.rmtree(target, ignore_errors=True)
    os.replace(partial, target)
    link = directory / LATEST
    tmp_link = directory / f".{LATEST}.tmp"
    tmp_link.unlink(missing_ok=True)
    tmp_link.symlink_to(target.name)
    os.replace(tmp_link, link)
    return target


def latest_checkpoint(directory: Path) -> Path | None:
    link = directory / LATEST
    return link.resolve() if link.exists() else None


def load_trainer_state(
    checkpoint: Path, optimizer: Any, scheduler: Any, ca_optimizer: Any = None, ca_scheduler: Any = None
) -> tuple[int, dict[str, Any]]:
    """Restore optimizer, scheduler (and L_CA's own, when the run has them) and RNGs; (step, data state). The model
    is loaded from `checkpoint/model`. A checkpoint without L_CA's optimizer for a run that has one raises."""
    state = torch.load(checkpoint / "trainer_state.pt", weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if ca_optimizer is not None:
        if "ca_optimizer" not in state:
            raise ValueError(
                f"{checkpoint}: no L_CA optimizer state, but this run gives L_CA its own "
                "(ca_updates_per_step > 0); resume with the configuration the checkpoint was made with"
            )
        ca_optimizer.load_state_dict(state["ca_optimizer"])
        ca_scheduler.load_state_dict(state["ca_scheduler"])
    set_rng_state(state["rng"])
    return int(state["step"]), state["data"]
