"""Call records on disk: one JSON line per call in ``calls-YYYY-MM-DD.jsonl`` (UTC date).

Each record is written with a single ``write`` on a file opened with ``O_APPEND``, under an
exclusive ``flock``, so lines of concurrent writers (several workers) never interleave. The
write goes to the kernel at once (no buffering in the process); the caller runs it in a worker
thread, so the event loop never waits for the disk. A process killed in the middle of a long
write can leave the last line cut short (the kernel stops a write to a file between pages
when the process gets SIGKILL): the next writer, holding the lock, and start-up cut such a
torn tail back to the last whole line, so the file is valid JSON lines again and only the
record being written at the crash is lost. Readers skip a line that does not parse.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import logging
import os
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
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            _cut_torn_tail(fd, path)
            written = os.write(fd, line)
            while written < len(line):  # only on a full disk or a signal: finish the line
                written += os.write(fd, line[written:])
        finally:
            os.close(fd)  # and the lock with it
        return path

    def repair(self) -> int:
        """Cut every file's torn tail (a writer killed mid-line); how many files were cut."""
        cut = 0
        for path in record_files(self.directory):
            fd = os.open(path, os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                cut += _cut_torn_tail(fd, path)
            finally:
                os.close(fd)
        return cut


def _cut_torn_tail(fd: int, path: Path) -> bool:
    """Truncate an open record file after its last newline, if it does not end with one."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return False
    end = size
    while end > 0:
        start = max(0, end - 65536)
        found = os.pread(fd, end - start, start).rfind(b"\n")
        if found >= 0:
            os.ftruncate(fd, start + found + 1)
            break
        end = start
    else:
        os.ftruncate(fd, 0)
    log.warning("%s ended in a torn line (a crash while writing): cut back", path.name)
    return True


def record_files(directory: str | Path) -> list[Path]:
    return sorted(Path(directory).glob(PATTERN))


def iter_records(directory: str | Path) -> Iterator[dict[str, Any]]:
    """Every record in the directory, oldest file first; unparsable lines are skipped."""
    for path in record_files(directory):
        yield from _records_of(path)


def _records_of(path: Path) -> Iterator[dict[str, Any]]:
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
    days: list[list[dict[str, Any]]] = []
    for path in reversed(record_files(directory)):  # newest day first, only as far as needed
        days.append(list(_records_of(path)))
        if sum(map(len, days)) >= limit:
            break
    newest = [record for day in reversed(days) for record in day]
    return newest[-limit:] if limit else []
