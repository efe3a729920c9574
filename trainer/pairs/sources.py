"""The miner's inputs: a trajectory file (any format `agent.readers` knows, or our own JSONL) or a mini-swe-agent run
folder, checked and streamed record by record (pass 1 reads all, pass 2 only the wanted records)."""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.readers import FORMATS, ReaderError, convert_record, mini_swe_agent, sniff_format
from agent.readers.common import iter_records
from agent.readers.mini_swe_agent import RunFolder
from agent.trajectory import Trajectory
from trainer.pairs.mine_config import OWN_FORMAT, MinerError


@dataclass(frozen=True)
class Source:
    path: Path
    format: str
    run: RunFolder | None = None
    """A mini-swe-agent run folder's files and resolved flags (the source is a directory)."""


READ_ERRORS = (ReaderError, UnicodeDecodeError, OSError, EOFError, zlib.error)
"""What reading a (possibly gzipped) file raises when the file is bad: a truncated `.gz` raises EOFError, a corrupt
one zlib.error or gzip.BadGzipFile (an OSError)."""


def _read_error(path: Path, exc: BaseException) -> MinerError:
    if isinstance(exc, ReaderError):
        return MinerError(str(exc))
    cause = "the compressed file is truncated or corrupt" if isinstance(exc, (EOFError, zlib.error)) else "cannot read"
    return MinerError(f"{path}: {cause}: {exc}")


def open_source(path: str | Path, results: str | Path | None = None) -> Source:
    """Check the file (or run folder) and tell its format from the first record. A directory is a mini-swe-agent run
    folder; `results` gives its resolved flags (else its own results files do)."""
    path = Path(path)
    if not path.exists():
        raise MinerError(f"{path}: no such file or directory")
    if path.is_dir() or path.name.endswith(mini_swe_agent.TRAJ_SUFFIX):
        try:
            run = (
                mini_swe_agent.scan_run(path, results)
                if path.is_dir()
                else mini_swe_agent.RunFolder(
                    root=path.parent, files=[path], results=mini_swe_agent.read_results(results) if results else {}
                )
            )
        except READ_ERRORS as exc:
            raise _read_error(path, exc) from None
        return Source(path, mini_swe_agent.SOURCE, run)
    if not path.is_file():
        raise MinerError(f"{path}: not a file")
    try:
        first = next(iter_records(path), None)
    except READ_ERRORS as exc:
        raise _read_error(path, exc) from None
    if first is None:
        return Source(path, OWN_FORMAT)
    record = first[1]
    if isinstance(record, dict) and "task_id" in record and "messages" in record:
        return Source(path, OWN_FORMAT)
    name = sniff_format(record) if isinstance(record, dict) else None
    if name is None:
        keys = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise MinerError(
            f"{path}: record 0: not a trajectory of any known format (keys {keys}); known: "
            f"{OWN_FORMAT}, {', '.join(sorted(FORMATS))}"
        )
    return Source(path, name)


def _convert(source: Source, index: int, record: Any) -> Trajectory:
    try:
        if not isinstance(record, dict):
            raise ValueError(f"expected a JSON object, found {type(record).__name__}")
        if source.format == OWN_FORMAT:
            return Trajectory.model_validate(record)
        return convert_record(record, source.format)
    except (KeyError, TypeError, ValueError) as exc:
        label = record.get("instance_id") or record.get("task_id") if isinstance(record, dict) else None
        where = f"record {index}" + (f" ({label})" if isinstance(label, str) else "")
        reason = f"missing field {exc}" if isinstance(exc, KeyError) else " ".join(str(exc).split())[:500]
        path = source.run.files[index] if source.run is not None else source.path
        raise MinerError(f"{path}: {where}: not a readable trajectory: {reason}") from None


def iter_source(source: Source, wanted: set[int] | None = None) -> Iterator[tuple[int, Trajectory]]:
    """(record index, trajectory) for every record, or only the `wanted` ones (the others are parsed as JSON but not
    converted; reading stops after the last wanted one)."""
    last = max(wanted) if wanted else None
    if source.run is not None:
        records = mini_swe_agent.iter_run(source.run, wanted)
    else:
        records = iter_records(source.path)
    try:
        for index, record in records:
            if wanted is None or index in wanted:
                yield index, _convert(source, index, record)
            if last is not None and index >= last:
                return
    except READ_ERRORS as exc:
        raise _read_error(source.path, exc) from None
