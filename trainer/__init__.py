"""trainer — GRPO plus the context-awareness loss L_CA against remote env servers (`python -m trainer.run`), the
contrastive pairs it trains on and the probe that measures context-selection accuracy (`trainer.pairs`,
`trainer.probe`); `trainer.compare` puts runs side by side."""
