"""The runtime's own messages: warnings and errors, one line each on stderr and, when
``minirun-oci --log FILE`` asked for it, in that file in runc's format.

runc logs through logrus: ``--log`` opens the file (create, append) on every invocation,
``--log-format text`` writes logfmt lines (``time="..." level=error msg="..."``) and
``--log-format json`` one object per line with the keys ``level``, ``msg`` and ``time``.
podman's conmon and containerd's shim pass both flags and read the file back to report
why the runtime failed, so the lines follow logrus byte for byte where it matters.

The file stays open (close-on-exec) for the whole invocation: the container's init,
forked from the runtime, can still log its warnings after pivot_root, when the path no
longer resolves.
"""

from __future__ import annotations

import os
import sys
import time

_fd: int | None = None
_json_format = False

# logrus's TextFormatter leaves a value bare when it only has these characters.
_BARE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._/@^+")
_GO_ESCAPES = {'"': '\\"', "\\": "\\\\", "\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n",
               "\r": "\\r", "\t": "\\t", "\v": "\\v"}
# Go's encoding/json escapes these even when it writes UTF-8 (HTML safety, JS line breaks).
_JSON_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028",
                 "\u2029": "\\u2029"}


def open_log(path: str, json_format: bool = False) -> None:
    """Open runc's --log file for this invocation (created 0644, appended to, as runc)."""
    global _fd, _json_format
    _fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
    _json_format = json_format


def _go_quote(text: str) -> str:
    """strconv.Quote, which logrus uses for values that need quoting."""
    out = []
    for ch in text:
        if ch in _GO_ESCAPES:
            out.append(_GO_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _json_str(text: str) -> str:
    try:
        from _json import encode_basestring
    except ImportError:  # an interpreter without the accelerator
        import json

        return json.dumps(text, ensure_ascii=False)
    return encode_basestring(text)


def format_line(level: str, msg: str, now: float | None = None) -> str:
    """One log line as logrus writes it, without the newline."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
    if _json_format:
        line = (f'{{"level":{_json_str(level)},"msg":{_json_str(msg)},'
                f'"time":{_json_str(stamp)}}}')
        return "".join(_JSON_ESCAPES.get(ch, ch) for ch in line)
    value = msg if msg and set(msg) <= _BARE else _go_quote(msg)
    return f'time="{stamp}" level={level} msg={value}'


def log(level: str, msg: str) -> None:
    """Append one line to the --log file, if there is one; never fails."""
    if _fd is None:
        return
    try:
        os.write(_fd, (format_line(level, msg) + "\n").encode("utf-8", "backslashreplace"))
    except OSError:
        pass


def warn(msg: str) -> None:
    """A warning: ``minirun: warning: MSG`` on stderr, and level=warning in the log."""
    try:
        sys.stderr.write(f"minirun: warning: {msg}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    log("warning", msg)
