"""The tables `python -m envserver validate` prints from its report: instances per repository and status, and the
instances that are not valid with their reasons (rich, imported when the command runs).
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from envserver.validation_status import STATUSES
from envserver.wire import ValidationReport

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table


def summary_table(report: ValidationReport) -> Table:
    """Instances per repository and status, with a total row."""
    from rich.table import Table

    shown = [status for status in STATUSES if report.counts.get(status)] or ["valid"]
    table = Table(title=f"Validation of {len(report.instances)} instance(s), {report.repeat} run(s) per patch")
    table.add_column("repository", no_wrap=True)
    for status in shown:
        table.add_column(status, justify="right")
    table.add_column("total", justify="right")
    per_repo: dict[str, Counter[str]] = {}
    for entry in report.instances:
        per_repo.setdefault(entry.repo, Counter())[entry.status] += 1
    for repo in sorted(per_repo):
        counts = per_repo[repo]
        table.add_row(repo, *(str(counts[s] or "") for s in shown), str(sum(counts.values())))
    table.add_section()
    table.add_row("all", *(str(report.counts.get(s, 0)) for s in shown), str(len(report.instances)))
    return table


def problems_table(report: ValidationReport) -> Table | None:
    """One row per instance that is not valid, with its reason; None when every instance is valid."""
    from rich.table import Table

    bad = [entry for entry in report.instances if entry.status != "valid"]
    if not bad:
        return None
    table = Table(title="Not valid")
    table.add_column("instance", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("reason", overflow="fold")
    for entry in bad:
        table.add_row(entry.instance_id, entry.status, entry.reason or "")
    return table


def print_report(report: ValidationReport, console: Console) -> None:
    console.print(summary_table(report))
    problems = problems_table(report)
    if problems is not None:
        console.print(problems)
