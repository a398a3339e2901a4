"""Call records on disk: one JSON line per call in ``calls-YYYY-MM-DD.jsonl`` (UTC date).

Each record is written with a single ``write`` on a file opened with ``O_APPEND``: lines of
concurrent writers never interleave, and a process that dies (even killed) leaves either the
whole line or none of it, so the file stays valid JSON lines. The write is flushed to the
kernel at once (no buffering in the process); the caller runs it in a worker thread, so the
event loop never waits for the disk. Readers skip a line that does not parse (a disk that
filled up mid-write) and say so.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger("relay.records")
PATTERN = "calls-*.jsonl"


def file_for(directory: Path, when: dt.datetime) -> Path:
    return directory / f"calls-{when.astimezone(dt.UTC):%Y-%m-%d}.jsonl"


class RecordLog:
    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def append(self, record: dict[str, Any], *, now: dt.datetime | None = None) -> Path:
        """Append one record to today's file (blocking: call it from a worker thread).

        Raises:
            OSError: the directory or file cannot be written.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        path = file_for(self.directory, now or dt.datetime.now(dt.UTC))
        line = orjson.dumps(record) + b"\n"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            written = os.write(fd, line)
            while written < len(line):  # only on a full disk or a signal: finish the line
                written += os.write(fd, line[written:])
        finally:
            os.close(fd)
        return path


def record_files(directory: str | Path) -> list[Path]:
    return sorted(Path(directory).glob(PATTERN))


def iter_records(directory: str | Path) -> Iterator[dict[str, Any]]:
    """Every record in the directory, oldest file first; unparsable lines are skipped."""
    for path in record_files(directory):
        with path.open("rb") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = orjson.loads(line)
                except orjson.JSONDecodeError:
                    log.warning("%s:%d: not a JSON record; skipped", path.name, number)
                    continue
                if isinstance(record, dict):
                    yield record


def read_records(directory: str | Path, *, limit: int | None = None) -> list[dict[str, Any]]:
    """The last ``limit`` records (all with None), oldest first."""
    if not Path(directory).is_dir():
        return []
    if limit is None:
        return list(iter_records(directory))
    return list(deque(iter_records(directory), maxlen=limit))
