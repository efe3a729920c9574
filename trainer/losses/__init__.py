"""The trainer's loss components, each with its own normalizer: GRPO over sampled tokens, L_CA over pairs.

L = L_GRPO + λ · L_CA; the trainer adds them (see DESIGN.md, decision 7).
"""

from trainer.losses.context_awareness import ContextAwarenessConfig, ca_loss, ca_margin
from trainer.losses.grpo import GRPOConfig, compute_advantages, grpo_loss

__all__ = ["ContextAwarenessConfig", "GRPOConfig", "ca_loss", "ca_margin", "compute_advantages", "grpo_loss"]
