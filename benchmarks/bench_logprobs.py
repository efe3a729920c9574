"""Logprob benchmark (not a timed test): peak memory and time of forward + backward of per-token logprobs over one
long sequence, naive (full float32 log_softmax, then gather) vs chunked (trainer.logprobs.token_logprobs), measured
in the same run. Target: chunked peak ≤ 1/8 of naive at 8,192 tokens with Qwen3's 151,669-token vocabulary.

    python benchmarks/bench_logprobs.py [--tokens 8192] [--hidden 256] [--chunk-size 1024]

How memory is measured, and why this way: torch's CPU allocations are invisible to tracemalloc, and torch keeps no
peak-allocation counter on CPU (torch.cuda.max_memory_allocated is CUDA-only). Each method therefore runs in its own
fresh subprocess, which measures its resident set: after building the inputs (hidden [1, T, H] and the head
[V, H], float32, both requiring grad) and a small warm-up it records the current RSS and resets the kernel's
high-water mark (`echo 5 > /proc/self/clear_refs`, so nothing before that point counts), runs forward + backward
once, and reports peak RSS (VmHWM) − RSS before. That is the extra memory the computation needed at its worst moment:
every live tensor (logits, log-probabilities, gradients, the grads of hidden and head), as the OS saw it. Tensors this
large are mmap'ed by glibc and returned on free, so RSS follows live tensors closely. On a CUDA device the same
script reports torch.cuda.max_memory_allocated instead (`--device cuda`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

QWEN3_VOCAB = 151_669
GIB = 2**30


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def worker(method: str, tokens: int, hidden_size: int, vocab: int, chunk_size: int, device: str) -> dict[str, float]:
    """Runs in the subprocess: one method, forward + backward once; returns its extra peak memory and time."""
    import torch

    from trainer.logprobs import token_logprobs

    torch.manual_seed(0)
    hidden = torch.randn(1, tokens, hidden_size, device=device).requires_grad_()
    weight = (torch.randn(vocab, hidden_size, device=device) * 0.05).requires_grad_()
    targets = torch.randint(0, vocab, (1, tokens), device=device)

    def run(h: torch.Tensor, t: torch.Tensor) -> None:
        if method == "naive":
            logp = torch.log_softmax(h @ weight.T, dim=-1)
            out = logp.gather(-1, t[..., None]).squeeze(-1)
            del logp
        else:
            out = token_logprobs(h, weight, t, chunk_size=chunk_size)
        out.sum().backward()
        del out

    run(hidden[:, :16], targets[:, :16])  # warm-up: kernels, thread pool and the .grad buffers exist before we measure
    hidden.grad = None
    weight.grad = torch.zeros_like(weight)  # both methods then accumulate into an existing [V, H] buffer

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = _status_kib("VmRSS") * 1024
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    start = time.perf_counter()
    run(hidden, targets)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else _status_kib("VmHWM") * 1024
    return {"extra_peak_bytes": float(peak - before), "seconds": seconds}


def measure(method: str, args: argparse.Namespace) -> dict[str, float]:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        method,
        "--tokens",
        str(args.tokens),
        "--hidden",
        str(args.hidden),
        "--vocab",
        str(args.vocab),
        "--chunk-size",
        str(args.chunk_size),
        "--device",
        args.device,
        "--threads",
        str(args.threads),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{method} worker failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=8192, help="Sequence length (one sequence).")
    parser.add_argument("--hidden", type=int, default=256, help="Hidden size H (small: this is a CPU machine).")
    parser.add_argument("--vocab", type=int, default=QWEN3_VOCAB, help="Vocabulary size V (Qwen3's by default).")
    parser.add_argument("--chunk-size", type=int, default=1024, help="Tokens per chunk for the chunked method.")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default).")
    parser.add_argument("--worker", choices=["naive", "chunked"], help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        result = worker(args.worker, args.tokens, args.hidden, args.vocab, args.chunk_size, args.device)
        print(json.dumps(result))
        return 0

    full = args.tokens * args.vocab * 4
    print(
        f"T={args.tokens} tokens, V={args.vocab}, H={args.hidden}, chunk_size={args.chunk_size}, "
        f"device={args.device}; one float32 [T, V] tensor = {full / GIB:.2f} GiB, one chunk = "
        f"{min(args.chunk_size, args.tokens) * args.vocab * 4 / GIB:.2f} GiB, head [V, H] = "
        f"{args.vocab * args.hidden * 4 / GIB:.3f} GiB"
    )
    results = {}
    for method in ("chunked", "naive"):
        results[method] = measure(method, args)
        r = results[method]
        print(
            f"{method:>8}: extra peak memory {r['extra_peak_bytes'] / GIB:6.2f} GiB "
            f"({r['extra_peak_bytes'] / full:4.2f} × [T, V] float32), forward+backward {r['seconds']:6.2f} s"
        )
    ratio = results["chunked"]["extra_peak_bytes"] / results["naive"]["extra_peak_bytes"]
    verdict = "meets" if ratio <= 1 / 8 else "MISSES"
    print(
        f"ratio chunked / naive peak memory: {ratio:.4f} (1/{1 / ratio:.1f}); {verdict} the ≤ 1/8 target; "
        f"time chunked / naive: {results['chunked']['seconds'] / results['naive']['seconds']:.2f}"
    )
    return 0 if ratio <= 1 / 8 else 1


if __name__ == "__main__":
    raise SystemExit(main())
