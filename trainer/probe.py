"""`python -m trainer.probe --pairs pairs.jsonl --engine hf|vllm|openai --model NAME [--out DIR] [--base-url URL]`:
the context-selection probe (DESIGN.md, "The method").

Given (Q, A) and two look-alike contexts, does the model pick the one that supports A? Every pair is shown in both
orders, with the prompt L_CA trains on (trainer.pairs). Scoring: the option tokens' logits where the engine gives
them (hf, vllm), else the reply's text (openai); see trainer/probe_scoring.py. Writes to --out:

    report.json    accuracy with a bootstrap interval over pairs, position bias, accuracy by source and funnel stage,
                   how much of each context the prompt showed (`shown`: mean and min over pairs, positives and
                   negatives apart), the scoring method and the run's settings (trainer/probe_report.py says what
                   each number means)
    report.png     the same as a bar chart (accuracies only)
    answers.jsonl  one line per presentation: the answer, whether it was right, the margin or the reply, and the
                   pair's shown fractions (`trainer.pairs.record.shown_fractions`)
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from agent.engines.base import EngineError
from trainer.pairs.record import (
    PROMPT_VERSION,
    PairRecord,
    SharedPrefix,
    balanced_presentations,
    load_pairs,
    option_token_ids,
    prompt_text,
    shown_fractions,
)

PROBE_VERSION = 2
"""Bump when the report's fields or their meaning change. 2: `shown` (how much of each context the prompt showed),
`run.shared_prefix`, per-answer `shown`."""

SCORING = {
    "option_logits": "logits of the option tokens '1' and '2' at the answer position; the larger one is the answer",
    "answer_text": "a short greedy reply, parsed for the first standalone '1' or '2'; a reply naming neither is "
    "wrong and counted under 'unanswered'",
}


class EngineKind(str, Enum):
    hf = "hf"
    vllm = "vllm"
    openai = "openai"


class SharedPrefixKind(str, Enum):
    omit = "omit"
    once = "once"
    keep = "keep"


class ProbeError(Exception):
    """A problem with the user's input or setup (reported without a traceback)."""


@dataclass
class ProbeConfig:
    """One probe run."""

    pairs: Path
    """Pair records (JSONL, trainer.pairs.PairRecord)."""
    engine: str
    """hf (a local model directory, in process), vllm (a vLLM server) or openai (a chat-completions API)."""
    model: str
    """hf: the model directory; vllm / openai: the served model's name."""
    out: Path = Path("probe")
    """Folder for report.json, report.png and answers.jsonl."""
    base_url: str | None = None
    """The server's API root (vllm, openai), e.g. http://127.0.0.1:8001/v1."""
    tokenizer: str | None = None
    """Tokenizer directory; default: the hf model's own (or the vllm model's, when its name is a local directory),
    else the bundled Qwen3 tokenizer. openai uses it only to size the contexts' truncation."""
    max_context_tokens: int = 1024
    """Token budget of the two contexts together (each gets half); 1024 is what the trainer's held-out accuracy uses."""
    shared_prefix: SharedPrefix = "omit"
    """The opening both contexts share: omit (as L_CA and the trainer's held-out accuracy), once, or keep (prompt
    version 1's presentation); see `trainer.pairs.prompt_text`."""
    batch_size: int = 8
    """hf: presentations per forward pass."""
    concurrency: int = 16
    """vllm / openai: requests in flight."""
    max_answer_tokens: int = 16
    """openai: the reply's token limit."""
    device: str | None = None
    """hf: torch device (default: cuda when available, else cpu)."""


# --------------------------------------------------------------------------------------------------------- helpers


def _load(path: Path) -> list[PairRecord]:
    if not path.is_file():
        raise ProbeError(f"--pairs: no such file: {path}")
    try:
        pairs = load_pairs(path)
    except ValueError as exc:  # bad records, listed by line and field
        raise ProbeError(str(exc)) from exc
    if not pairs:
        raise ProbeError(f"--pairs: {path} holds no pair records")
    return pairs


def _check_engine(config: ProbeConfig) -> None:
    """The engine's own settings, before anything slow is loaded."""
    if config.engine not in {kind.value for kind in EngineKind}:
        raise ProbeError(f"unknown engine {config.engine!r}; choose one of {', '.join(k.value for k in EngineKind)}")
    if config.engine == "hf" and not (Path(config.model) / "config.json").is_file():
        raise ProbeError(
            f"--model: no transformers model directory at {config.model} (the hf engine loads a local "
            "model; for a served one use --engine vllm or openai)"
        )
    if config.engine != "hf" and not config.base_url:
        raise ProbeError(
            f"--engine {config.engine} needs --base-url (the server's API root, e.g. http://127.0.0.1:8001/v1)"
        )


def _tokenizer(config: ProbeConfig) -> tuple[Any, str]:
    """(tokenizer, what the report calls it)."""
    from agent.engines import load_tokenizer

    path = config.tokenizer
    if path is None and config.engine in ("hf", "vllm") and Path(config.model).is_dir():
        path = config.model
    if path is not None and not Path(path).is_dir():
        raise ProbeError(f"--tokenizer: no tokenizer directory at {path}")
    try:
        return load_tokenizer(path), str(path) if path else "bundled Qwen3 (agent.tokenizer)"
    except (OSError, ValueError) as exc:
        raise ProbeError(f"cannot load a tokenizer from {path}: {exc}") from exc


def _check_reachable(url: str) -> None:
    """Fail at once, with the address, when no server answers (the engines would retry for a while first). Any HTTP
    answer counts: some OpenAI-compatible APIs have no /models, and a key problem shows on the first request."""
    import httpx

    try:
        httpx.get(f"{url.rstrip('/')}/models", timeout=10.0)
    except httpx.TransportError as exc:
        raise ProbeError(f"no server answers at {url} ({type(exc).__name__}: {exc})") from exc


def _check_settings(pairs: list[PairRecord], tokenizer: Any, config: ProbeConfig, needs_option_ids: bool) -> None:
    """User errors the scoring would otherwise hit midway: a budget with no room for the truncation marker, a
    tokenizer whose "1" / "2" are not single option tokens."""
    try:
        longest = max(pairs, key=lambda pair: len(pair.positive) + len(pair.negative))
        prompt_text(longest, tokenizer, True, config.max_context_tokens, config.shared_prefix)
        if needs_option_ids:
            option_token_ids(tokenizer)
    except ValueError as exc:
        raise ProbeError(str(exc)) from exc


def _finite(value: Any) -> Any:
    """NaN → null: JSON has no NaN (an empty group's accuracy is undefined)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


# ------------------------------------------------------------------------------------------------------------- run


def score(config: ProbeConfig, pairs: list[PairRecord], tokenizer: Any, progress: Any = None) -> tuple[list[Any], str]:
    """(answers, scoring method) for every pair in both orders, on the configured engine."""
    from trainer.probe_scoring import score_chat, score_hf, score_vllm

    items = balanced_presentations(pairs, random.Random(0))  # both orders of every pair (the rng is unused)
    if config.engine == "hf":
        import torch
        from transformers import AutoModelForCausalLM

        # float32, as the trainer loads it: margins comparable with its held-out accuracy
        model = AutoModelForCausalLM.from_pretrained(config.model, dtype=torch.float32)
        device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
        model.to(device)  # type: ignore[arg-type]  # why: transformers wraps `to` in a decorator mypy misreads
        return score_hf(
            model, tokenizer, items, config.max_context_tokens, config.batch_size, progress, config.shared_prefix
        ), "option_logits"
    assert config.base_url  # _check_engine
    if config.engine == "vllm":
        from agent.engines.vllm import VLLMEngine

        engine: Any = VLLMEngine(config.base_url, model=config.model)
        _check_reachable(engine.base_url)
        run = score_vllm(
            engine, tokenizer, items, config.max_context_tokens, config.concurrency, progress, config.shared_prefix
        )
        method = "option_logits"
    elif config.engine == "openai":
        from agent.engines.openai import OpenAIChatEngine

        _check_reachable(config.base_url)
        engine = OpenAIChatEngine(config.base_url, config.model)
        run = score_chat(
            engine,
            tokenizer,
            items,
            config.max_context_tokens,
            config.max_answer_tokens,
            config.concurrency,
            progress,
            config.shared_prefix,
        )
        method = "answer_text"
    else:
        raise AssertionError(config.engine)  # _check_engine

    async def scored() -> list[Any]:
        try:
            return await run
        finally:
            await engine.close()

    return asyncio.run(scored()), method


def run_probe(config: ProbeConfig, show_progress: bool = True) -> dict[str, Any]:
    """Probe, write report.json, report.png and answers.jsonl to config.out, and return the report."""
    from tqdm import tqdm

    from trainer.probe_report import build_report, write_chart

    started = time.perf_counter()
    pairs = _load(config.pairs)
    _check_engine(config)
    tokenizer, tokenizer_name = _tokenizer(config)
    _check_settings(pairs, tokenizer, config, needs_option_ids=config.engine != "openai")
    with tqdm(total=2 * len(pairs), desc="presentations", unit="p", disable=not show_progress) as bar:
        answers, method = score(config, pairs, tokenizer, progress=bar.update)
    shown = {
        pair.pair_id: shown_fractions(pair, tokenizer, config.max_context_tokens, config.shared_prefix)
        for pair in pairs
    }
    report = build_report(answers, pairs, shown)
    report["run"] = {
        "probe_version": PROBE_VERSION,
        "prompt_version": PROMPT_VERSION,
        "engine": config.engine,
        "model": config.model,
        "base_url": config.base_url,
        "tokenizer": tokenizer_name,
        "scoring": method,
        "scoring_detail": SCORING[method],
        "pairs_file": str(config.pairs),
        "max_context_tokens": config.max_context_tokens,
        "shared_prefix": config.shared_prefix,
        "max_answer_tokens": config.max_answer_tokens if method == "answer_text" else None,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "elapsed_s": round(time.perf_counter() - started, 3),
    }
    report = _finite(report)
    config.out.mkdir(parents=True, exist_ok=True)
    (config.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    by_id = {pair.pair_id: pair for pair in pairs}
    with (config.out / "answers.jsonl").open("w") as handle:
        for answer in answers:
            pair = by_id[answer.pair_id]
            handle.write(
                json.dumps(
                    _finite(
                        {
                            "pair_id": answer.pair_id,
                            "positive_first": answer.positive_first,
                            "choice": answer.choice,
                            "correct": answer.correct,
                            "option_margin": answer.option_margin,
                            "reply": answer.reply,
                            "source": pair.provenance.get("source"),
                            "funnel_stage": pair.funnel_stage,
                            "shown": shown[answer.pair_id],
                        }
                    )
                )
                + "\n"
            )
    write_chart(report, config.out / "report.png")
    return report


def summary_lines(report: dict[str, Any], out: Path) -> list[str]:
    def num(value: Any) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    position = report["position"]
    lines = [
        f"accuracy {num(report['accuracy'])} (95% CI {num(report['ci']['low'])}–{num(report['ci']['high'])}) over "
        f"{report['num_pairs']} pairs × 2 orders; scored by {report['run']['scoring']}",
        f"positive as option 1: {num(position['accuracy_positive_first']['accuracy'])}, as option 2: "
        f"{num(position['accuracy_positive_second']['accuracy'])}; position bias {num(position['position_bias'])}; "
        f"answers '1': {num(position['share_answer_1'])}",
        f"unanswered: {report['unanswered']['count']}",
    ]
    for source, group in report["by_source"].items():
        lines.append(f"  source {source}: {num(group['accuracy'])} ({group['pairs']} pairs)")
    if "shown" in report:
        shown = report["shown"]
        lines.append(
            f"shown of each context, mean (min) over pairs — after the shared opening / whole "
            f"({shown['pairs_with_shared_opening']} pairs share one, {report['run']['shared_prefix']}):"
        )
        for side in ("positive", "negative"):
            rest, whole = shown[side]["rest"], shown[side]["whole"]
            lines.append(
                f"  {side}s: {num(rest['mean'])} ({num(rest['min'])}) / {num(whole['mean'])} ({num(whole['min'])})"
            )
    lines.append(f"wrote {out / 'report.json'}, {out / 'report.png'}, {out / 'answers.jsonl'}")
    return lines


# ------------------------------------------------------------------------------------------------------------- CLI

app = typer.Typer(add_completion=False)


@app.command()
def main(
    pairs: Annotated[Path, typer.Option(help="Pair records (JSONL).")],
    engine: Annotated[
        EngineKind,
        typer.Option(
            help="hf (local model directory), vllm (a vLLM server) or openai "
            "(a chat-completions API: scored by the reply's text)."
        ),
    ],
    model: Annotated[str, typer.Option(help="hf: the model directory; vllm / openai: the served model name.")],
    out: Annotated[Path, typer.Option(help="Output folder (report.json, report.png, answers.jsonl).")] = Path("probe"),
    max_context_tokens: Annotated[int, typer.Option(min=16, help="Token budget of the two contexts together.")] = 1024,
    shared_prefix: Annotated[
        SharedPrefixKind,
        typer.Option(
            help="The opening both contexts share: "
            "omit (as L_CA), once (shown before the options) or keep (in both "
            "options: prompt version 1's presentation)."
        ),
    ] = SharedPrefixKind.omit,
    base_url: Annotated[
        str | None,
        typer.Option(
            help="vllm / openai: the API root, e.g. http://HOST:8001/v1 (openai: the key comes from OPENAI_API_KEY)."
        ),
    ] = None,
    tokenizer: Annotated[
        str | None,
        typer.Option(
            help="Tokenizer directory (default: the model's own when it is "
            "a local directory, else the bundled Qwen3 tokenizer)."
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="hf: presentations per forward pass.")] = 8,
    concurrency: Annotated[int, typer.Option(min=1, help="vllm / openai: requests in flight.")] = 16,
    max_answer_tokens: Annotated[int, typer.Option(min=1, help="openai: the reply's token limit.")] = 16,
    device: Annotated[
        str | None, typer.Option(help="hf: torch device (default: cuda when available, else cpu).")
    ] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Context-selection accuracy of a model on contrastive pairs, each pair in both orders."""
    config = ProbeConfig(
        pairs=pairs,
        engine=engine.value,
        model=model,
        out=out,
        base_url=base_url,
        tokenizer=tokenizer,
        max_context_tokens=max_context_tokens,
        shared_prefix=shared_prefix.value,
        batch_size=batch_size,
        concurrency=concurrency,
        max_answer_tokens=max_answer_tokens,
        device=device,
    )
    try:
        report = run_probe(config, show_progress=not quiet)
    except (ProbeError, EngineError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    for line in summary_lines(report, out):
        typer.echo(line)


if __name__ == "__main__":
    app()
