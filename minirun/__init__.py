"""minirun: a small container runtime on Linux primitives."""

__version__ = "0.1.0"
# The newest runtime-spec release whose fields minirun knows (features' ociVersionMax,
# `--version`, `info`): each field is implemented or refused by name, never ignored.
OCI_VERSION = "1.3.0"
# MINIRUN_TRACE's values (any case): the waterfall of minirun.monitor.trace, or not
TRACE_ON = ("1", "true", "yes", "on")
TRACE_OFF = ("", "0", "false", "no", "off")
_trace_warned = False


def trace_requested(warn: bool = True) -> bool:
    """MINIRUN_TRACE asks for tracing: 1, true, yes or on. Unset, empty, 0, false, no or
    off do not; any other value does not either, and says so once on stderr (a typo must
    not look like a host where tracing shows nothing)."""
    import os

    global _trace_warned
    value = os.environ.get("MINIRUN_TRACE", "").strip().lower()
    if value in TRACE_ON:
        return True
    if value not in TRACE_OFF and warn and not _trace_warned:
        import sys

        _trace_warned = True
        sys.stderr.write(f"minirun: MINIRUN_TRACE={os.environ['MINIRUN_TRACE']!r} is not "
                         "1 or 0 (true/false, yes/no, on/off): tracing stays off\n")
    return False


def exit_without_teardown(code: int) -> None:
    """The fast launchers' end: flush, then os._exit. The interpreter's teardown (module
    and object cleanup) costs a few ms and there is nothing left to clean: files we
    wrote are closed, a container lives on its own."""
    import os
    import sys

    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    os._exit(code)
