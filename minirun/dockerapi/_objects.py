"""What the image, network and volume modules share: docker's filter matching, the
checks of a `filters` document, and a writer-to-chunks bridge for the bodies minirun's
code writes to a file (save's tar). Their events are recorded where the work is done
(the image store, the network manager, the volume functions), not here."""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Iterator
from typing import IO

from .server import ApiError


def check_filters(filters: dict[str, list[str]], known: tuple[str, ...]) -> dict:
    """docker's 400 for a filter the endpoint does not have."""
    for key in filters:
        if key not in known:
            raise ApiError(400, f"invalid filter '{key}'")
    return filters


def match(values: list[str], source: str) -> bool:
    """docker's filters.Args.Match: a value equal to `source`, or a regular expression
    found in it (`name=web` matches `proj_web_1`)."""
    for value in values:
        if value == source:
            return True
        try:
            if re.search(value, source):
                return True
        except re.error:
            pass
    return False


def match_labels(values: list[str], labels: dict | None) -> bool:
    """docker's MatchKVList: every `key` or `key=value` of the filter is in `labels`
    (the values of one filter key are ANDed for labels, as docker does)."""
    labels = labels or {}
    for value in values:
        key, eq, want = value.partition("=")
        if key not in labels or (eq and labels[key] != want):
            return False
    return True


def bool_filter(values: list[str], what: str) -> bool:
    """`dangling=true|false` (1/0 too): the one value, or a 400."""
    wanted = {v.lower() for v in values}
    if not wanted <= {"true", "false", "1", "0"} or len(wanted) != 1:
        raise ApiError(400, f"invalid filter '{what}={values[0] if values else ''}'")
    return wanted.pop() in ("true", "1")


class _PipeWriter:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
        return len(data)

    def flush(self) -> None:
        pass

    def seekable(self) -> bool:
        return False


def written_chunks(write: Callable[[IO[bytes]], None], chunk: int = 1 << 16) -> Iterator[bytes]:
    """The bytes `write(f)` writes to f, as chunks, while it writes: it runs in a thread
    (its own SQLite connections: open them inside `write`) feeding a pipe. An error after
    the first bytes cuts the stream, as docker's save does; the thread is joined before
    the generator ends, so no thread outlives the response."""
    r, w = os.pipe2(os.O_CLOEXEC)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            write(_PipeWriter(w))
        except BaseException as e:  # noqa: BLE001 - handed to the reader
            errors.append(e)
        finally:
            os.close(w)

    thread = threading.Thread(target=run, name="minirun-api-writer", daemon=True)
    thread.start()
    try:
        while True:
            data = os.read(r, chunk)
            if not data:
                break
            yield data
    finally:
        os.close(r)  # a writer still going gets EPIPE and ends
        thread.join()
    if errors:
        raise errors[0]
