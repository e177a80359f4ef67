"""The daemon's own log (JSON lines with ECS names) and the containers' CRI logs, read the
way Filebeat reads them with the configuration in README's "Logs for ELK".

No Filebeat runs here: neither Debian nor PyPI ships Filebeat or another implementation of
its `container` and `ndjson` parsers. So filebeat_cri() and filebeat_ndjson() below follow
the rules of Filebeat's own source, and say where each comes from:
- the container parser, format cri (libbeat/reader/readjson/docker_json.go, parseCRILog
  with CRI flags, and Next): a line splits on " " into four: the time (Go's
  time.RFC3339Nano), the stream, the tags (":"-separated; "P" is partial) and the content;
  a partial line's content loses its newline and the NEXT LINE OF THE SAME FILE, whatever
  its stream, is appended, until a line that is not partial;
- the ndjson parser with target "", overwrite_keys and expand_keys
  (libbeat/reader/readjson/json.go, libbeat/common/jsontransform/jsonhelper.go and
  expand.go): one JSON object a line; `message` a string; @timestamp parsed as RFC 3339 or
  ISO 8601 or the event is flagged; dotted keys expanded into objects, a clash an error;
- filestream's file identity (native: device and inode) over the glob in `paths`: a file
  renamed by rotation is the same file, read on from where its reader was; a new inode is
  a new file, read from its start.
The ECS field names are checked against ecs-logging (Elastic's Python library): its
formatter's output for the same fields.
"""

from __future__ import annotations

import glob
import json
import os
import re
import signal
import time
from datetime import datetime

from enginetest import engine  # noqa: F401 - the module's fixture
from ocitest import needs_root

pytestmark = needs_root

# Go's time.RFC3339Nano / RFC3339 when parsing: fractional seconds optional, Z or an offset
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)")


def parse_rfc3339(text: str) -> datetime:
    assert RFC3339.fullmatch(text), text
    head, _, frac = text.rstrip("Z").partition(".")
    return datetime.strptime(head, "%Y-%m-%dT%H:%M:%S").replace(
        microsecond=int((frac or "0")[:6].ljust(6, "0")))


def filebeat_cri(lines: list[bytes]) -> tuple[list[dict], bytes | None]:
    """Filebeat's container parser (format cri) over the lines of one file: the events
    (time, stream, message without its newline) and the content of a partial line still
    waiting for its next line at the end of the file (None if none)."""
    events: list[dict] = []
    pending: dict | None = None
    for raw in lines:
        parts = raw.split(b" ", 3)
        assert len(parts) == 4, f"invalid CRI log format: {raw[:80]!r}"
        stamp, stream, tags, content = parts
        parse_rfc3339(stamp.decode())
        partial = any(t == b"P" for t in tags.split(b":"))
        if partial:
            content = content.rstrip(b"\n")  # stripNewLine, for partial lines only
        if pending is None:
            pending = {"time": stamp.decode(), "stream": stream.decode(), "message": content}
        else:  # appended to the partial before it, whatever its stream
            pending["message"] += content
        if not partial:
            pending["message"] = pending["message"].rstrip(b"\n")  # the line reader's newline
            events.append(pending)
            pending = None
    return events, (pending["message"] if pending else None)


def expand_keys(doc: dict) -> dict:
    """jsontransform.expandFields: "a.b": 1 becomes {"a": {"b": 1}}; a clash with a value
    that is not an object is an error."""
    out: dict = {}
    for key, value in doc.items():
        if isinstance(value, dict):
            value = expand_keys(value)
        *path, last = key.split(".")
        node = out
        for part in path:
            node = node.setdefault(part, {})
            assert isinstance(node, dict), f"cannot expand {key!r}: clash"
        if last in node:
            assert isinstance(node[last], dict) and isinstance(value, dict), f"clash at {key!r}"
            node[last].update(value)
        else:
            node[last] = value
    return out


def filebeat_ndjson(line: str) -> dict:
    """The ndjson parser (target "", overwrite_keys, expand_keys) over one line: the
    event's fields; fails where Filebeat would flag the event with an error key."""
    doc = json.loads(line)
    assert isinstance(doc, dict)
    assert isinstance(doc.get("message"), str)
    assert isinstance(doc.get("@timestamp"), str)
    parse_rfc3339(doc["@timestamp"])  # else "@timestamp not overwritten (parse error ...)"
    return expand_keys(doc)


def flat(doc: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in doc.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def wait_for(predicate, timeout: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def exited(engine, name: str) -> bool:  # noqa: F811
    proc = engine("inspect", "-f", "{{.State.Status}}", name)
    return proc.stdout.strip() == "exited"


def daemon_log(engine) -> list[str]:  # noqa: F811
    with open(os.path.join(engine.run_root, "daemon.log")) as f:
        return f.read().splitlines()


# --- the daemon's log ------------------------------------------------------------------------

def test_daemon_log_is_ecs_json_for_filebeat(engine):  # noqa: F811
    import ecs_logging

    cid = engine("run", "-d", "--name", "ecsweb", "busybox", "sh", "-c", "exit 3",
                 check=True).stdout.strip()
    try:
        wait_for(lambda: exited(engine, "ecsweb"), what=engine.daemon_logs())
        wait_for(lambda: any(cid in line and '"die"' in line for line in daemon_log(engine)),
                 what=engine.daemon_logs())
        lines = [line for line in daemon_log(engine) if line.startswith("{")]
        events = [filebeat_ndjson(line) for line in lines]  # every line, not only ours
        ours = {e["event"]["action"]: e for e in events
                if e.get("container", {}).get("id") == cid}
        start, die = ours["start"], ours["die"]
        image = engine("inspect", "-f", "{{.Config.Image}}", "ecsweb").stdout.strip()
        for e in (start, die):
            assert e["container"] == {"id": cid, "name": "ecsweb", "image": {"name": image}}
            assert e["log"]["level"] == "info" and e["ecs"]["version"]
            assert e["process"]["pid"] == engine.pid_of("daemon")
        assert die["message"] == "ecsweb exited with code 3"
        # the first keys as the ECS logging spec orders them, dotted at the top
        assert list(json.loads(lines[0]))[:4] == ["@timestamp", "log.level", "message",
                                                   "ecs.version"]

        # ecs-logging's own formatter, given the same fields: the same names and layout
        import logging

        record = logging.LogRecord("minirun", logging.INFO, __file__, 1, die["message"],
                                   None, None)
        record.__dict__.update({"container.id": cid, "container.name": "ecsweb",
                                "container.image.name": image, "event.action": "die"})
        reference = json.loads(ecs_logging.StdlibFormatter().format(record))
        raw = json.loads(next(line for line in lines if cid in line and '"die"' in line))
        assert set(flat(raw)) <= set(flat(reference)), set(flat(raw)) - set(flat(reference))
        assert {k for k in raw if "." in k} == {k for k in reference if "." in k}
        assert raw["ecs.version"] == reference["ecs.version"]
    finally:
        engine("rm", "-f", "ecsweb")


def test_text_log_format_for_a_daemon_started_on_demand(engine):  # noqa: F811
    """MINIRUN_LOG_FORMAT=text reaches the daemon `run -d` starts, and the keeper starts
    the next one (after a SIGKILL) with the same format. The module's daemon is stopped
    first and again at the end (the next daemon started on demand writes JSON again)."""
    engine.stop_process("keeper")
    engine.stop_process("daemon")
    wait_for(lambda: engine.pid_of("daemon") is None or not os.path.exists(
        f"/proc/{engine.pid_of('daemon')}"))
    log = os.path.join(engine.run_root, "daemon.log")
    os.unlink(log)
    env = dict(engine.env, MINIRUN_LOG_FORMAT="text")
    saved, engine.env = engine.env, env
    try:
        engine("run", "-d", "--name", "texty", "busybox", "sleep", "600", check=True)
        pid = engine.pid_of("daemon")
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            assert b"\0--log-format\0text" in f.read()
        with open(log) as f:
            lines = f.read().splitlines()
        assert lines and not any(line.startswith("{") for line in lines)
        assert any(" info container=texty started " in line for line in lines), lines
        parse_rfc3339(lines[-1].split()[0])
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: engine.pid_of("daemon") not in (None, pid) and
                 os.path.exists(f"/proc/{engine.pid_of('daemon')}"), what=engine.daemon_logs())
        with open(f"/proc/{engine.pid_of('daemon')}/cmdline", "rb") as f:
            assert b"\0--log-format\0text" in f.read()
        engine.stop_process("keeper")
        engine.stop_process("daemon")
        # a daemon that `run` would start with a format it does not know: one line, and
        # nothing is made
        engine.env = dict(saved, MINIRUN_LOG_FORMAT="xml")
        bad = engine("run", "-d", "--name", "never", "busybox", "true")
        assert bad.returncode == 125
        assert bad.stderr == "minirun: error: MINIRUN_LOG_FORMAT='xml': want json or text\n"
        engine.env = saved
        assert "never" not in engine("ps", "-a").stdout
    finally:
        engine.env = saved
        engine("rm", "-f", "texty")
        engine.stop_process("keeper")
        engine.stop_process("daemon")


# --- the containers' logs --------------------------------------------------------------------

LONG = 20000  # more than the daemon's 16 KiB partial lines


def test_container_log_read_by_filebeat_cri_rules(engine):  # noqa: F811
    """A real container's log: how its long line is cut into P lines depends on how the
    daemon's reads fall, so the events are checked, not the cut."""
    script = (f"echo first; head -c {LONG} /dev/zero | tr '\\0' a; sleep 0.1; "
              f"head -c {LONG} /dev/zero | tr '\\0' b; echo; echo last; "
              "printf 'no newline at the end'")
    cid = engine("run", "-d", "--name", "crilog", "busybox", "sh", "-c", script,
                 check=True).stdout.strip()
    try:
        wait_for(lambda: exited(engine, "crilog"))  # its output is all written by then
        with open(os.path.join(engine.root, "containers", cid, "ctr.log"), "rb") as f:
            raw = f.read().splitlines(keepends=True)
        events, waiting = filebeat_cri(raw)
        assert [(e["stream"], e["message"]) for e in events] == [
            ("stdout", b"first"), ("stdout", b"a" * LONG + b"b" * LONG), ("stdout", b"last")]
        # output without a final newline is a partial line (as containerd writes it):
        # Filebeat holds it until a next line comes (the container's next run)
        assert waiting == b"no newline at the end"
    finally:
        engine("rm", "-f", "crilog")


def test_cri_writer_partial_lines_read_by_filebeat_rules(tmp_path):
    """The daemon's writer (CriLog) fed in pieces as the daemon's reads would: 16 KiB of
    a line not ended yet is written as a P line; Filebeat's rule joins them back."""
    from minirun.daemon.server import PARTIAL_AT, CriLog

    log = CriLog(str(tmp_path / "ctr.log"))
    log.write("stdout", b"one\ntw")
    log.write("stderr", b"oops\n")
    log.write("stdout", b"o\n" + b"x" * (PARTIAL_AT + 10))
    log.write("stdout", b"y" * (PARTIAL_AT * 2) + b"\nz")
    log.close()
    with open(tmp_path / "ctr.log", "rb") as f:
        raw = f.read().splitlines(keepends=True)
    # (a whole line that comes in one read is written whole, however long)
    assert [line.split(b" ")[1:3] for line in raw] == [
        [b"stdout", b"F"], [b"stderr", b"F"], [b"stdout", b"F"], [b"stdout", b"P"],
        [b"stdout", b"F"], [b"stdout", b"P"]]
    events, waiting = filebeat_cri(raw)
    assert [(e["stream"], e["message"]) for e in events] == [
        ("stdout", b"one"), ("stderr", b"oops"), ("stdout", b"two"),
        ("stdout", b"x" * (PARTIAL_AT + 10) + b"y" * (PARTIAL_AT * 2))]
    assert waiting == b"z"
    times = [parse_rfc3339(e["time"]) for e in events]
    assert times == sorted(times)


def test_rotated_logs_read_by_filestream_identity(engine):  # noqa: F811
    """Rotation renames (the inode goes with the name): a reader following inodes over
    the glob ctr.log* gets every line once, and no file ends inside a partial line."""
    n = 120
    script = (f"i=0; while [ $i -lt {n} ]; do i=$((i+1)); "
              "if [ $((i % 20)) -eq 0 ]; then head -c 20000 /dev/zero | tr '\\0' x; echo \" $i\"; "
              "else echo \"line $i of the rotation test, padded to about a hundred bytes "
              "..................................\"; fi; usleep 2000; done")
    cid = engine("run", "-d", "--name", "rotlog", "--log-opt", "max-size=4k", "--log-opt",
                 "max-file=100", "busybox", "sh", "-c", script, check=True).stdout.strip()
    base = os.path.join(engine.root, "containers", cid, "ctr.log")
    files: dict[tuple[int, int], list] = {}  # (dev, ino) -> [fd, bytes read]
    try:
        def poll() -> None:
            for path in glob.glob(base + "*"):
                try:
                    st = os.stat(path)
                except FileNotFoundError:
                    continue
                key = (st.st_dev, st.st_ino)
                if key not in files:
                    files[key] = [os.open(path, os.O_RDONLY), b""]
            for entry in files.values():
                while chunk := os.read(entry[0], 1 << 16):
                    entry[1] += chunk

        def done() -> bool:
            poll()
            return exited(engine, "rotlog")

        wait_for(done, timeout=120)
        poll()
        assert len(files) > 5  # it did rotate, several times
        messages = []
        for fd, data in files.values():
            lines = data.splitlines(keepends=True)
            if not lines:
                continue  # the file begun by the last rotation
            assert lines[-1].split(b" ")[2] == b"F"
            events, waiting = filebeat_cri(lines)
            assert waiting is None
            messages += [e["message"].decode() for e in events]
        long_ones = sorted(m for m in messages if m.startswith("x"))
        short = [m for m in messages if not m.startswith("x")]
        assert sorted(int(m.split()[1]) for m in short) == \
            [i for i in range(1, n + 1) if i % 20]
        assert sorted(int(m.split()[-1]) for m in long_ones) == list(range(20, n + 1, 20))
        assert all(m.split()[0] == "x" * 20000 for m in long_ones)
    finally:
        for fd, _ in files.values():
            os.close(fd)
        engine("rm", "-f", "rotlog")
