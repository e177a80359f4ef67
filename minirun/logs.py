"""Reading containers' CRI-format logs (`<RFC3339Nano> <stream> <P|F> <msg>`) back as
their original output, for `minirun logs`."""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Iterator

from .errors import InvalidArgument


def parse_line(line: str) -> tuple[str, str, str, str] | None:
    """(timestamp, stream, tag, message) of one log line, None if it is not one."""
    parts = line.rstrip("\n").split(" ", 3)
    if len(parts) < 3 or parts[1] not in ("stdout", "stderr") or parts[2] not in ("P", "F"):
        return None
    return parts[0], parts[1], parts[2], parts[3] if len(parts) == 4 else ""


def _since_cutoff(since: str | None) -> str | None:
    if since is None:
        return None
    if since.replace(".", "", 1).isdigit():
        ns = time.time_ns() - int(float(since) * 1e9)
        secs, frac = divmod(ns, 1_000_000_000)
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:09d}Z"
    if len(since) >= 19 and since[4] == "-" and since[10] == "T":
        return since
    raise InvalidArgument(f"--since {since!r}: seconds or an RFC 3339 time")


def _entries(lines) -> Iterator[tuple[str, str, str]]:
    """Join partial lines: (stream, timestamp, text with its newline)."""
    partial: dict[str, tuple[str, str]] = {}
    for line in lines:
        parsed = parse_line(line)
        if parsed is None:
            continue
        stamp, stream, tag, msg = parsed
        if tag == "P":
            partial[stream] = (partial.get(stream, ("", ""))[0] + msg, stamp)
            continue
        yield stream, stamp, partial.pop(stream, ("", ""))[0] + msg + "\n"
    # the end of the output: what the container wrote after its last newline
    for stream, (text, stamp) in partial.items():
        yield stream, stamp, text


def log_files(path: str) -> list[str]:
    """The rotated files (ctr.log.N, the oldest, ... ctr.log.1), then ctr.log."""
    n = 1
    while os.path.exists(f"{path}.{n}"):
        n += 1
    return [f"{path}.{i}" for i in range(n - 1, 0, -1)] + [path]


def follow_log(engine, cid: str, follow: bool = False, tail: int | None = None,
               since: str | None = None) -> Iterator[tuple[str, str, str]]:
    path = engine.log_path(cid)
    cutoff = _since_cutoff(since)
    lines = []
    for p in log_files(path):
        try:
            with open(p, errors="replace", newline="\n") as f:  # a tty's lone \r is data
                lines += f.readlines()
        except FileNotFoundError:
            pass
    entries = [e for e in _entries(lines) if cutoff is None or e[1] >= cutoff]
    if tail is not None:
        entries = list(deque(entries, maxlen=tail)) if tail > 0 else []
    yield from entries
    if not follow:
        return
    offset = os.path.getsize(path) if os.path.exists(path) else 0
    buf = ""
    while True:
        try:
            size = os.path.getsize(path)
        except FileNotFoundError:
            size = 0
        if size < offset:  # rotated
            offset = 0
        if size > offset:
            with open(path, errors="replace", newline="\n") as f:
                f.seek(offset)
                buf += f.read()
                offset = f.tell()
            *complete, buf = buf.split("\n")
            yield from _entries(line + "\n" for line in complete)
            continue
        if engine.get(cid)["status"] != "running":
            return
        time.sleep(0.1)
