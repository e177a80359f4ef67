"""Where a container's start time goes: a span recorder, its waterfall, its OTLP export.

Off by default; on with `minirun run --trace`, or MINIRUN_TRACE=1 for any verb of
`minirun` and `minirun-oci`. Off, each instrumented step costs one call that reads the
module flag ON, 0.1 to 0.25 us (bench/trace_cost.py); nothing is allocated.

A span is [name, start_ns, end_ns, id, parent_id, attrs]: times on CLOCK_MONOTONIC,
which every process on the host shares, so a step that begins in one process and ends in
a forked child (the fork, the init's fork) needs no conversion (a joined time namespace
with offsets would shift the init's; minirun refuses linux.timeOffsets). The wall clock
is read once (ANCHOR) to place the spans in time for OTLP. Ids are "<pid>.<n>", unique among the
processes of one start (the container's init is pid 1 in its namespace, no other is);
the exporter maps them to OTLP's 8-byte ids.

How the spans of other processes come back (only when tracing is on):
- minirun.runtime's children: C adds {"trace": [...]} to its {"pid"} message and the
  init to its {"ready"}; create adopts them (runtime.py).
- `minirun run`: the client sends {"trace": PARENT} with its run request; the daemon
  records the prepare steps, passes the same on to the keeper's start op, whose worker
  runs create and start and returns its spans after its result; every reply carries
  {"trace": [...]} back (daemon/foreground.py, daemon/keeper.py). The client prints the
  waterfall and exports: the daemon and the keeper, which fork containers, never load
  the exporter (nor start its threads).

The waterfall goes to stderr when the verb ends, after the container's own output for a
foreground run. OTLP: only when tracing is on AND OTEL_EXPORTER_OTLP_ENDPOINT (or
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is set: as OpenTelemetry's SDKs do, the endpoint
configures where spans go, it does not turn tracing on. Protocol http/protobuf only.
"""

from __future__ import annotations

import os
import time

from .. import trace_requested

ON = trace_requested(warn=False)

# (time.time_ns(), time.monotonic_ns()), read together when tracing began
ANCHOR = (time.time_ns(), time.monotonic_ns()) if ON else (0, 0)
_done: list[list] = []  # finished spans, this process's and the ones it adopted
_open: list[list] = []  # the spans begun and not ended, innermost last
# this process's pid, read when tracing begins and in child(): end() makes no system
# call, for the init ends a span after its seccomp filter is loaded
_pid = os.getpid() if ON else 0
_ids = 0
_remote_parent: str | None = None  # the parent of this process's outermost spans
_root: list | None = None
# a process traced for long (a server started with MINIRUN_TRACE=1) keeps at most these
MAX_SPANS = 10_000


def enable(remote_parent: str | None = None) -> None:
    """Tracing on in this process (and the children it forks from now on)."""
    global ON, ANCHOR, _remote_parent, _pid
    _pid = os.getpid()
    if ANCHOR == (0, 0):
        ANCHOR = (time.time_ns(), time.monotonic_ns())
    ON = True
    if remote_parent is not None:
        _remote_parent = remote_parent


def disable() -> None:
    """Tracing off again, and everything recorded dropped (the daemon, after a request)."""
    global ON, _remote_parent, _root
    ON = False
    _remote_parent = _root = None
    _done.clear()
    _open.clear()


def child(fork: list | None = None) -> None:
    """First thing in a forked child (when tracing): what the parent finished is the
    parent's to send; `fork`, the span the parent began around the fork, ends here. A
    plain os.fork's at-fork hooks would miss minirun's clone3 (cgroups' fork)."""
    global _pid
    if ON:
        _pid = os.getpid()
        _done.clear()
        end(fork)


def begin(name: str, **attrs) -> list | None:
    """Start a span under the innermost open one; None when tracing is off."""
    if not ON:
        return None
    global _ids
    _ids += 1
    parent = _open[-1][3] if _open else _remote_parent
    span = [name, time.monotonic_ns(), 0, f"{_pid}.{_ids}", parent, attrs]
    _open.append(span)
    return span


def end(span: list | None, **attrs) -> None:
    """End a span begun here or, for a span that spans a fork, in the parent."""
    if span is None:
        return
    span[2] = time.monotonic_ns()
    if attrs:
        span[5] = {**span[5], **attrs}
    if span in _open:
        _open.remove(span)
    if len(_done) < MAX_SPANS:
        _done.append(span)


def forget(span: list | None) -> None:
    """The parent's side of a span its forked child ends (child()): no longer open here."""
    if span is not None and span in _open:
        _open.remove(span)


class _Span:
    __slots__ = ("attrs", "name", "span")

    def __init__(self, name: str, attrs: dict) -> None:
        self.name, self.attrs, self.span = name, attrs, None

    def __enter__(self):
        self.span = begin(self.name, **self.attrs)
        return self.span

    def __exit__(self, kind, value, tb) -> None:
        if kind is not None and self.span is not None:
            self.span[5] = {**self.span[5], "error": kind.__name__}
        end(self.span)


class _Off:
    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, value, tb) -> None:
        return None


_OFF = _Off()


def span(name: str, **attrs):
    """`with span("mounts"):` a span around a block; a shared no-op when tracing is off."""
    return _Span(name, attrs) if ON else _OFF


def take() -> list[list]:
    """The spans finished in (or adopted by) this process, to send on; the list is emptied."""
    spans = list(_done)
    _done.clear()
    return spans


def adopt(spans: list | None) -> None:
    """Spans another process recorded, with this process's."""
    if spans:
        _done.extend(list(s) for s in spans)


class serving:
    """`with serving(msg.get("trace")):` a request in a process that serves many (the
    daemon): recorded when the caller traces (the value is the caller's span id, parent
    of ours), and everything dropped after. Such a process starts with tracing off
    (serving(None) there), whatever MINIRUN_TRACE it inherited."""

    __slots__ = ("parent",)

    def __init__(self, parent: str | None) -> None:
        self.parent = parent

    def __enter__(self) -> None:
        if self.parent:
            enable(self.parent)

    def __exit__(self, kind, value, tb) -> None:
        if self.parent or ON:
            disable()


def parent_id() -> str | None:
    """The id a span begun now would have as parent: for another process's spans."""
    return _open[-1][3] if _open else _remote_parent


def start_root(name: str, **attrs) -> None:
    """The verb's own span, which every other one of this process nests under."""
    global _root
    if ON and _root is None:
        _root = begin(name, **attrs)


def end_root(**attrs) -> None:
    """End the verb's span where what it times ends (a foreground run: at the start, not
    when the container exits); finish() ends it otherwise."""
    if _root is not None and not _root[2]:
        end(_root, **attrs)


def finish(stream=None) -> list[list]:
    """At the verb's end: the waterfall on stderr and, when an endpoint is set, OTLP.
    Returns the spans (empty when tracing is off)."""
    global _root
    if not ON or _root is None:
        return []
    end_root()
    _root = None
    spans = take()
    write = stream.write if stream is not None else _write_stderr
    write(waterfall(spans))
    if os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or \
            os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        from .otlp import export

        try:
            export(spans, ANCHOR)
        except Exception as e:  # noqa: BLE001 - the export never fails the verb
            _write_stderr(f"minirun: trace: OTLP export failed: {type(e).__name__}: {e}\n")
    return spans


def _write_stderr(text: str) -> None:
    data = text.encode()
    while data:
        try:
            data = data[os.write(2, data):]
        except InterruptedError:
            continue
        except OSError:
            return


# --- the waterfall -----------------------------------------------------------------------

BAR_WIDTH = 40


def ordered(spans: list[list]) -> list[tuple[int, list]]:
    """(depth, span) in display order: each span after its parent, siblings by start.
    A span whose parent is not among them (the outermost) is at depth 0."""
    ids = {s[3] for s in spans}
    children: dict[str | None, list[list]] = {}
    for s in spans:
        children.setdefault(s[4] if s[4] in ids else None, []).append(s)
    out: list[tuple[int, list]] = []

    def walk(parent: str | None, depth: int) -> None:
        for s in sorted(children.get(parent, ()), key=lambda s: (s[1], -s[2])):
            out.append((depth, s))
            walk(s[3], depth + 1)

    walk(None, 0)
    return out


def waterfall(spans: list[list], width: int = BAR_WIDTH) -> str:
    """One line per span: the name indented by depth, its duration in ms, and a bar placed
    and sized on the scale of the whole (from the first start to the last end)."""
    rows = ordered(spans)
    if not rows:
        return ""
    t0 = min(s[1] for s in spans)
    total = max(max(s[2] for s in spans) - t0, 1)
    name_w = max(2 * depth + len(s[0]) for depth, s in rows)
    lines = []
    for depth, s in rows:
        ms = (s[2] - s[1]) / 1e6
        label = ("  " * depth + s[0]).ljust(name_w)
        if depth == 0:
            lines.append(f"{label}  {ms:8.2f} ms")
            continue
        at = round((s[1] - t0) * width / total)
        size = max(1, round((s[2] - s[1]) * width / total))
        lines.append(f"{label}  {ms:8.2f} ms |{' ' * min(at, width - 1)}{'#' * size}")
    return "\n".join(lines) + "\n"
