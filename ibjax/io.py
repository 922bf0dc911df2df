"""Small file helpers shared by training, analysis and plotting.

Records are JSON lines; files that other processes read (configs, metrics)
are replaced atomically or appended line by line with an fsync, so a crash
never leaves a torn record behind.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Iterable
from typing import Any

__all__ = ["read_jsonl", "append_jsonl", "write_jsonl", "atomic_write_text", "find_run_dirs"]


def read_jsonl(path: str | pathlib.Path) -> list[dict[str, Any]]:
    """Reads a JSON-lines file: one JSON object a line.

    Blank lines (such as the trailing one a crashed writer leaves) are skipped.

    Args:
      path: the ``.jsonl`` file.

    Returns:
      The records in file order.

    Raises:
      FileNotFoundError: ``path`` does not exist.
      ValueError: a line is not a JSON object; the message names the file and
        the 1-based line number.
    """
    path = pathlib.Path(path)
    records = []
    with path.open(encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{line_number}: malformed JSON line ({e.msg}): {line.strip()[:80]!r}") from e
            if not isinstance(record, dict):
                raise ValueError(
                    f"{path}:{line_number}: expected a JSON object, got {type(record).__name__}: {line.strip()[:80]!r}"
                )
            records.append(record)
    return records




def atomic_write_text(path: str | pathlib.Path, text: str) -> None:
    """Writes ``text`` to ``path`` through a temporary file and an atomic rename."""
    path = pathlib.Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_jsonl(path: str | pathlib.Path, records: Iterable[dict[str, Any]]) -> None:
    """Replaces ``path`` atomically with one JSON line per record."""
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))


def append_jsonl(path: str | pathlib.Path, record: dict[str, Any]) -> None:
    """Appends one JSON line and fsyncs it, so readers never see a torn line."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def find_run_dirs(paths: Iterable[str | pathlib.Path]) -> list[pathlib.Path]:
    """Expands workdirs and sweep directories into run workdirs.

    A directory holding ``metrics.jsonl`` is a run; any other directory is a
    sweep, searched recursively for run directories.

    Args:
      paths: run or sweep directories.

    Returns:
      Run directories, each once, sweeps expanded in sorted order.

    Raises:
      FileNotFoundError: a path is not a directory.
      ValueError: a sweep directory holds no run.
    """
    run_dirs: list[pathlib.Path] = []
    for path in map(pathlib.Path, paths):
        if not path.is_dir():
            raise FileNotFoundError(f"workdir {path} is not a directory")
        if (path / "metrics.jsonl").is_file():
            found = [path]
        else:
            found = sorted({p.parent for p in path.rglob("metrics.jsonl")})
            if not found:
                raise ValueError(f"workdir {path} holds no metrics.jsonl and no run directory that does")
        run_dirs.extend(d for d in found if d not in run_dirs)
    return run_dirs


