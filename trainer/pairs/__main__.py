"""`python -m trainer.pairs mine …`: the contrastive pair miner's command line (the construction: pairs/mine.py)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Contrastive trajectory pairs.")


@app.callback()
def _main() -> None:
    """Contrastive trajectory pairs (a callback keeps `mine` a named subcommand)."""


@app.command()
def mine(
    trajectories: list[Path] = typer.Option(..., "--trajectories", "-t",
                                            help="Trajectory file (JSON list, JSONL, .gz; SWE-smith, SWE-Gym "
                                                 "OpenHands, SWE-agent or our own format). Repeat for several."),
    out: Path = typer.Option(..., "--out", "-o", help="Pairs JSONL to write."),
    judge_url: Optional[str] = typer.Option(None, help="OpenAI-compatible endpoint of the LLM judge (…/v1)."),
    judge_model: Optional[str] = typer.Option(None, help="Model name the judge endpoint serves."),
    seed: Optional[int] = typer.Option(None, help="Seed of every choice (default 0)."),
    report_dir: Optional[Path] = typer.Option(None, help="Where funnel.json / funnel.png go (default: "
                                                         "<out stem>.report beside --out)."),
    config: Optional[Path] = typer.Option(None, help="JSON or YAML file of MinerConfig fields; flags win."),
    min_stage: Optional[str] = typer.Option(None, help="Stage a pair must reach: same_repo_commit, same_file, "
                                                       "same_function or related_issue (default)."),
    similarity_threshold: Optional[float] = typer.Option(None, help="related_issue threshold (default 0.2)."),
    pairs_per_anchor: Optional[int] = typer.Option(None, help="Pairs per anchor (default 1)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only errors."),
) -> None:
    """Mine contrastive pairs (Q, A, C+, C−) from agent trajectories through the same repo → file → function →
    related-issue cascade, patch contents masked; write the pairs and a funnel report."""
    from rich.console import Console

    from agent.engines.base import EngineError
    from trainer.pairs.mine import MinerError, load_config
    from trainer.pairs.mine import mine as run_mine

    err = Console(stderr=True)
    console = Console()
    started = time.perf_counter()
    try:
        settings = load_config(config, {"seed": seed, "judge_url": judge_url, "judge_model": judge_model,
                                        "min_stage": min_stage, "similarity_threshold": similarity_threshold,
                                        "pairs_per_anchor": pairs_per_anchor})
        result = run_mine(trajectories, out, settings, report_dir,
                          progress=None if quiet else lambda message: err.print(f"[dim]{message}[/dim]"))
    except (MinerError, EngineError) as exc:
        err.print(f"[bold red]error:[/bold red] {exc}", markup=True, highlight=False, soft_wrap=True)
        raise typer.Exit(code=2) from None
    if not quiet:
        console.print(result.funnel.table())
        seconds = time.perf_counter() - started
        console.print(f"{result.funnel.stages['written']:,} pairs → {result.out}  ·  report: "
                      f"{result.report['json']}, {result.report['png']}  ·  {seconds:.1f} s "
                      f"({result.funnel.trajectories / max(seconds, 1e-9):,.0f} trajectories/s)", highlight=False,
                      soft_wrap=True)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
