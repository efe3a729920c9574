"""`python -m trainer.pairs mine|audit …`: the contrastive pair miner (the construction: pairs/mine.py) and the
shortcut audit of a pair set (pairs/audit.py)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from trainer.pairs.mine import MineResult

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Contrastive trajectory pairs.")


@app.callback()
def _main() -> None:
    """Contrastive trajectory pairs (a callback keeps `mine` a named subcommand)."""


@app.command()
def mine(
    *,
    trajectories: Annotated[
        list[Path],
        typer.Option(
            "--trajectories",
            "-t",
            help="Trajectory file (JSON list, JSONL, .gz; SWE-smith, SWE-Gym "
            "OpenHands, SWE-agent or our own format) or a mini-swe-agent run "
            "folder (<id>/<id>.traj.json). Repeat for several.",
        ),
    ],
    results: Annotated[
        Path | None,
        typer.Option(
            help="Resolved flags for run folders: a results CSV "
            "(instance_id,resolved), an sb-cli report or a SWE-bench "
            "harness report (default: the ones found in the folder).",
        ),
    ] = None,
    allow_empty: Annotated[
        bool, typer.Option(help="Write an empty pairs file when the inputs hold no trajectory (default: an error).")
    ] = False,
    out: Annotated[Path, typer.Option("--out", "-o", help="Pairs JSONL to write.")],
    judge_url: Annotated[str | None, typer.Option(help="OpenAI-compatible endpoint of the LLM judge (…/v1).")] = None,
    judge_model: Annotated[str | None, typer.Option(help="Model name the judge endpoint serves.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of every choice (default 0).")] = None,
    report_dir: Annotated[
        Path | None, typer.Option(help="Where funnel.json / funnel.png go (default: <out stem>.report beside --out).")
    ] = None,
    config: Annotated[Path | None, typer.Option(help="YAML (or JSON) file of MinerConfig fields.")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="KEY=VALUE over the config file (repeatable); flags win.")
    ] = None,
    min_stage: Annotated[
        str | None,
        typer.Option(
            help="Stage a pair must reach: same_repo_commit, same_file, same_function or related_issue (default)."
        ),
    ] = None,
    similarity_threshold: Annotated[
        float | None,
        typer.Option(help="A fixed related_issue threshold (default: a quantile of the data's similarities)."),
    ] = None,
    pairs_per_anchor: Annotated[int | None, typer.Option(help="Pairs per anchor (default 1).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only errors.")] = False,
) -> None:
    """Mine contrastive pairs (Q, A, C+, C−) from agent trajectories through the same repo → file → function →
    related-issue cascade, patch contents masked; write the pairs and a funnel report."""
    from rich.console import Console

    from agent.engines.base import EngineError
    from trainer.pairs.mine import MinerError, load_config
    from trainer.pairs.mine import mine as run_mine

    err = Console(stderr=True)
    started = time.perf_counter()
    flags = {
        "seed": seed,
        "judge_url": judge_url,
        "judge_model": judge_model,
        "min_stage": min_stage,
        "similarity_threshold": similarity_threshold,
        "pairs_per_anchor": pairs_per_anchor,
    }
    try:
        result = run_mine(
            trajectories,
            out,
            load_config(config, set_ or [], flags),
            report_dir,
            progress=None if quiet else lambda message: err.print(f"[dim]{message}[/dim]"),
            results=results,
            allow_empty=allow_empty,
        )
    except (MinerError, EngineError) as exc:
        err.print(f"[bold red]error:[/bold red] {exc}", markup=True, highlight=False, soft_wrap=True)
        raise typer.Exit(code=2) from None
    if not quiet:
        _print_mined(result, started)


def _print_mined(result: MineResult, started: float) -> None:
    """The funnel table, the audit's verdict and where the pairs and the report went."""
    from rich.console import Console

    console = Console()
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
    pairs: Annotated[Path, typer.Option("--pairs", "-p", help="Pairs JSONL to audit (PairRecord lines).")],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Where audit.json / audit.png go (default: <pairs stem>.audit beside --pairs)."
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap resamples.")] = 0,
    fail_above: Annotated[
        float | None,
        typer.Option(
            help="Exit 1 when the best baseline's accuracy exceeds this (e.g. 0.6); the report is written either way."
        ),
    ] = None,
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
