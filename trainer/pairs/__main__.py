"""`python -m trainer.pairs mine|audit …`: the contrastive pair miner (the construction: pairs/mine.py) and the
shortcut audit of a pair set (pairs/audit.py)."""

from __future__ import annotations

import time
from pathlib import Path

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Contrastive trajectory pairs.")


@app.callback()
def _main() -> None:
    """Contrastive trajectory pairs (a callback keeps `mine` a named subcommand)."""


@app.command()
def mine(
    trajectories: list[Path] = typer.Option(
        ...,
        "--trajectories",
        "-t",
        help="Trajectory file (JSON list, JSONL, .gz; SWE-smith, SWE-Gym "
        "OpenHands, SWE-agent or our own format) or a mini-swe-agent run "
        "folder (<id>/<id>.traj.json). Repeat for several.",
    ),
    results: Path | None = typer.Option(
        None,
        help="Resolved flags for run folders: a results CSV "
        "(instance_id,resolved), an sb-cli report or a SWE-bench "
        "harness report (default: the ones found in the folder).",
    ),
    allow_empty: bool = typer.Option(
        False, help="Write an empty pairs file when the inputs hold no trajectory (default: an error)."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Pairs JSONL to write."),
    judge_url: str | None = typer.Option(None, help="OpenAI-compatible endpoint of the LLM judge (…/v1)."),
    judge_model: str | None = typer.Option(None, help="Model name the judge endpoint serves."),
    seed: int | None = typer.Option(None, help="Seed of every choice (default 0)."),
    report_dir: Path | None = typer.Option(
        None, help="Where funnel.json / funnel.png go (default: <out stem>.report beside --out)."
    ),
    config: Path | None = typer.Option(None, help="JSON or YAML file of MinerConfig fields; flags win."),
    min_stage: str | None = typer.Option(
        None, help="Stage a pair must reach: same_repo_commit, same_file, same_function or related_issue (default)."
    ),
    similarity_threshold: float | None = typer.Option(
        None, help="A fixed related_issue threshold (default: a quantile of the data's similarities)."
    ),
    pairs_per_anchor: int | None = typer.Option(None, help="Pairs per anchor (default 1)."),
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
        settings = load_config(
            config,
            {
                "seed": seed,
                "judge_url": judge_url,
                "judge_model": judge_model,
                "min_stage": min_stage,
                "similarity_threshold": similarity_threshold,
                "pairs_per_anchor": pairs_per_anchor,
            },
        )
        result = run_mine(
            trajectories,
            out,
            settings,
            report_dir,
            progress=None if quiet else lambda message: err.print(f"[dim]{message}[/dim]"),
            results=results,
            allow_empty=allow_empty,
        )
    except (MinerError, EngineError) as exc:
        err.print(f"[bold red]error:[/bold red] {exc}", markup=True, highlight=False, soft_wrap=True)
        raise typer.Exit(code=2) from None
    if not quiet:
        console.print(result.funnel.table())
        if result.funnel.audit:
            audit = result.funnel.audit
            verdict = "passes" if audit["passes"] else "[red]a shortcut set[/red]"
            console.print(
                f"audit: best label-blind baseline {audit['best']} {audit['accuracy']:.3f} "
                f"(bound {audit['bound']:.2f}): {verdict}"
            )
        seconds = time.perf_counter() - started
        console.print(
            f"{result.funnel.stages['written']:,} pairs → {result.out}  ·  report: "
            f"{result.report['json']}, {result.report['png']}  ·  {seconds:.1f} s "
            f"({result.funnel.trajectories / max(seconds, 1e-9):,.0f} trajectories/s)",
            highlight=False,
            soft_wrap=True,
        )


@app.command()
def audit(
    pairs: Path = typer.Option(..., "--pairs", "-p", help="Pairs JSONL to audit (PairRecord lines)."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Where audit.json / audit.png go (default: <pairs stem>.audit beside --pairs)."
    ),
    seed: int = typer.Option(0, help="Seed of the bootstrap resamples."),
    fail_above: float | None = typer.Option(
        None, help="Exit 1 when the best baseline's accuracy exceeds this (e.g. 0.6); the report is written either way."
    ),
) -> None:
    """Audit a pair set against label-blind baselines (issue overlap, answer identifiers, quotes, length, masks,
    bag-of-words and feature classifiers): accuracy over both option orders with 95% bootstrap intervals."""
    from rich.console import Console

    from trainer.pairs.audit import AuditError, audit_file

    err = Console(stderr=True)
    console = Console()
    try:
        report, files = audit_file(pairs, out, seed=seed)
    except (AuditError, OSError) as exc:
        err.print(f"[bold red]error:[/bold red] {exc}", markup=True, highlight=False, soft_wrap=True)
        raise typer.Exit(code=2) from None
    console.print(report.table())
    console.print(f"report: {files['json']}, {files['png']}", highlight=False, soft_wrap=True)
    if fail_above is not None and report.best.accuracy > fail_above:
        err.print(
            f"[bold red]shortcut:[/bold red] {report.best.name} picks the positive with accuracy "
            f"{report.best.accuracy:.3f} > {fail_above}",
            markup=True,
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(code=1)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
