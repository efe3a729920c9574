"""The trainer's loss components, each with its own normalizer: GRPO over sampled tokens, L_CA over pairs.

L = L_GRPO + λ · L_CA; the trainer adds them (see DESIGN.md, decision 7).
"""

from trainer.losses.context_awareness import ca_loss, ca_margin
from trainer.losses.grpo import GRPOLossConfig, compute_advantages, grpo_loss

__all__ = ["GRPOLossConfig", "ca_loss", "ca_margin", "compute_advantages", "grpo_loss"]
