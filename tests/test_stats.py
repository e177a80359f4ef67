"""`minirun stats` on this host (cgroup v1) with busybox containers: the numbers a user
reads, checked against the kernel's own files and /proc (independent witnesses), and
docker's output shapes (table, --format json, templates, errors). Nothing timed is
asserted: CPU % only above zero for a busy loop, sizes as lower bounds."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from cgrouptest import loop_device  # noqa: F401 - a fixture
from enginetest import engine  # noqa: F401 - the module's fixture
from ocitest import needs_root

pytestmark = needs_root

HEADER = ["CONTAINER ID", "NAME", "CPU %", "MEM USAGE / LIMIT", "MEM %", "NET I/O",
          "BLOCK I/O", "PIDS"]
UNITS = {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12,
         "KiB": 1024, "MiB": 1024 ** 2, "GiB": 1024 ** 3, "TiB": 1024 ** 4}


def size(text: str) -> float:
    m = re.fullmatch(r"([0-9.e+]+)([A-Za-z]+)", text.strip())
    assert m, text
    return float(m.group(1)) * UNITS[m.group(2)]


def pair(text: str) -> tuple[float, float]:
    a, b = text.split(" / ")
    return size(a), size(b)


def stats_json(engine, *names: str) -> dict[str, dict]:  # noqa: F811
    proc = engine("stats", "--no-stream", "--format", "json", *names)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    return {r["Name"]: r for r in rows}


def host_mem_total() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no MemTotal")


def run_d(engine, name: str, *args: str) -> str:  # noqa: F811
    proc = engine("run", "-d", "--name", name, *args)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def remove(engine, *names: str) -> None:  # noqa: F811
    engine("rm", "-f", *names)


def test_no_containers_prints_the_header_only(engine):  # noqa: F811
    proc = engine("stats", "--no-stream")
    assert proc.returncode == 0, proc.stderr
    assert re.split(r"\s{2,}", proc.stdout.strip()) == HEADER
    assert engine("stats", "--no-stream", "--format", "json").stdout == ""


def test_unknown_container_is_docker_s_error(engine):  # noqa: F811
    run_d(engine, "known", "busybox", "sleep", "600")
    try:
        proc = engine("stats", "--no-stream", "known", "nosuch")
        assert proc.returncode == 1
        assert proc.stderr.strip() == "Error response from daemon: No such container: nosuch"
        assert proc.stdout == ""
    finally:
        remove(engine, "known")


def test_limit_cpu_pids_and_table(engine):  # noqa: F811
    cid = run_d(engine, "hog", "-m", "64m", "busybox", "sh", "-c",
                "sleep 600 & while :; do :; done")
    run_d(engine, "idle", "busybox", "sleep", "600")
    try:
        rows = stats_json(engine)
        hog, idle = rows["hog"], rows["idle"]
        assert sorted(hog) == ["BlockIO", "CPUPerc", "Container", "ID", "MemPerc",
                               "MemUsage", "Name", "NetIO", "PIDs"]
        assert hog["ID"] == cid[:12] and hog["Container"] == cid
        used, limit = pair(hog["MemUsage"])
        assert hog["MemUsage"].endswith(" / 64MiB") and limit == 64 * 1024 ** 2
        assert 0 < used < limit
        # without a limit: the host's memory, as docker shows it
        assert abs(pair(idle["MemUsage"])[1] - host_mem_total()) / host_mem_total() < 0.001
        assert float(hog["CPUPerc"].rstrip("%")) > 0
        # sh, the busy loop is sh itself, and sleep: the cgroup's pids.current
        with open(f"/sys/fs/cgroup/pids/minirun/{cid}/pids.current") as f:
            assert int(hog["PIDs"]) == int(f.read()) == 2
        assert float(hog["MemPerc"].rstrip("%")) == pytest.approx(used / limit * 100, abs=0.5)

        table = engine("stats", "--no-stream", "--no-trunc", "hog").stdout.splitlines()
        assert re.split(r"\s{2,}", table[0].strip()) == HEADER
        assert len(table) == 2 and table[1].startswith(cid + " ")
        assert table[1].split()[1] == "hog"

        tmpl = engine("stats", "--no-stream", "--format", "{{.Name}}:{{.PIDs}}", "hog")
        assert tmpl.stdout == "hog:2\n", tmpl.stderr
    finally:
        remove(engine, "hog", "idle")


def test_stopped_containers_with_all(engine):  # noqa: F811
    run_d(engine, "done", "busybox", "true")
    try:
        deadline = time.monotonic() + 30
        while engine("ps", "-q", "-f", "name=done").stdout.strip():
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert "done" not in stats_json(engine)
        row = stats_json(engine, "done")["done"]  # named: shown, zeros, as docker
        row_all = {r["Name"]: r for r in map(json.loads, engine(
            "stats", "-a", "--no-stream", "--format", "json").stdout.splitlines())}["done"]
        for r in (row, row_all):
            assert (r["CPUPerc"], r["MemUsage"], r["MemPerc"], r["NetIO"], r["BlockIO"],
                    r["PIDs"]) == ("0.00%", "0B / 0B", "0.00%", "0B / 0B", "0B / 0B", "0")
    finally:
        remove(engine, "done")


def test_net_io_from_the_container_netns(engine):  # noqa: F811
    run_d(engine, "pinger", "busybox", "sleep", "600")
    run_d(engine, "hostnet", "--network", "host", "busybox", "sleep", "600")
    try:
        gateway = engine("inspect", "-f", "{{.NetworkSettings.Gateway}}", "pinger").stdout.strip()
        assert gateway
        before = pair(stats_json(engine, "pinger")["pinger"]["NetIO"])
        # the gateway is this test engine's own bridge (mr...b0): 5 x 1000-byte echoes
        ping = engine("exec", "pinger", "ping", "-c", "5", "-i", "0.2", "-s", "1000", "-W", "3",
                      gateway)
        assert ping.returncode == 0, ping.stdout + ping.stderr
        rows = stats_json(engine, "pinger", "hostnet")
        rx, tx = pair(rows["pinger"]["NetIO"])
        assert tx - before[1] >= 5000 and rx - before[0] >= 5000, (before, rx, tx)
        # a ping to loopback stays in lo, which docker leaves out
        engine("exec", "pinger", "ping", "-c", "3", "-i", "0.2", "-s", "10000", "127.0.0.1")
        # (30 kB each way if lo were counted)
        tx2 = pair(stats_json(engine, "pinger")["pinger"]["NetIO"])[1]
        assert tx2 - tx < 10000
        assert rows["hostnet"]["NetIO"] == "0B / 0B"
    finally:
        remove(engine, "pinger", "hostnet")


def blkio_kernel(cid: str, op: str) -> int:
    total = 0
    with open(f"/sys/fs/cgroup/blkio/minirun/{cid}/blkio.throttle.io_service_bytes_recursive") as f:
        for line in f:
            fields = line.split()
            if len(fields) == 3 and fields[1] == op:
                total += int(fields[2])
    return total


def test_block_io_of_direct_writes_and_reads(engine, loop_device):  # noqa: F811
    """O_DIRECT writes and reads on a block device given with --device: the v1 blkio
    throttle counters account them to the container's cgroup (buffered writes would be
    the flusher thread's), and BLOCK I/O shows them."""
    cid = run_d(engine, "writer", "--device", f"{loop_device}:/dev/xvdz", "busybox", "sh", "-c",
                "dd if=/dev/zero of=/dev/xvdz bs=1M count=8 oflag=direct && "
                "dd if=/dev/xvdz of=/dev/null bs=1M count=4 iflag=direct && "
                "touch /tmp/done && sleep 600")
    try:
        deadline = time.monotonic() + 60
        while engine("exec", "writer", "test", "-e", "/tmp/done").returncode != 0:
            assert time.monotonic() < deadline, engine("logs", "writer").stderr
            time.sleep(0.3)
        assert blkio_kernel(cid, "Write") >= 8 << 20
        read, written = pair(stats_json(engine, "writer")["writer"]["BlockIO"])
        # shown with three digits ("8.39MB"): equal to the kernel's count within 1 %
        assert written == pytest.approx(blkio_kernel(cid, "Write"), rel=0.01)
        assert read == pytest.approx(blkio_kernel(cid, "Read"), rel=0.01)
        assert written > 0.99 * (8 << 20) and read > 0.99 * (4 << 20)
    finally:
        remove(engine, "writer")


@contextlib.contextmanager
def streaming(engine, name: str):  # noqa: F811
    """`minirun stats NAME` streaming into a pipe; killed if still there at the end."""
    proc = subprocess.Popen([sys.executable, "-m", "minirun.cli", "stats", name],
                            env=engine.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        remove(engine, name)


def test_streaming_without_a_tty_prints_frames(engine):  # noqa: F811
    run_d(engine, "streamed", "busybox", "sleep", "600")
    with streaming(engine, "streamed") as proc:
        headers = 0
        deadline = time.monotonic() + 60
        while headers < 3:
            line = proc.stdout.readline()
            assert line and time.monotonic() < deadline, proc.stderr.read()
            assert "\033" not in line
            headers += line.startswith("CONTAINER ID")
            if not line.startswith("CONTAINER ID"):
                assert line.split()[1] == "streamed"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 130


def test_streaming_ends_when_the_named_container_goes(engine):  # noqa: F811
    run_d(engine, "brief", "busybox", "sleep", "600")
    with streaming(engine, "brief") as proc:
        assert proc.stdout.readline().startswith("CONTAINER ID")
        remove(engine, "brief")
        assert proc.wait(timeout=30) == 0, proc.stderr.read()


def test_streaming_on_a_terminal_redraws_in_place(engine):  # noqa: F811
    """On a tty: terminfo's clear for the first frame, then home, each line ended with el
    (erase to its end) and ed after the last, so a shorter frame leaves nothing behind."""
    import curses
    import pty

    run_d(engine, "onscreen", "busybox", "sleep", "600")
    env = dict(engine.env, TERM="xterm")
    pid, fd = pty.fork()
    if pid == 0:
        os.execve(sys.executable, [sys.executable, "-m", "minirun.cli", "stats", "onscreen"],
                  env)
    try:
        curses.setupterm("xterm", fd)
        home, el = curses.tigetstr("home"), curses.tigetstr("el")
        out = b""
        deadline = time.monotonic() + 60
        while out.count(home) < 3:
            assert time.monotonic() < deadline, out
            try:
                out += os.read(fd, 4096)
            except OSError:
                break
        clear = curses.tigetstr("clear")  # xterm's starts with home too
        assert out.startswith(clear)
        frames = out[len(clear):].split(home)  # the first, the second, the third begun
        lines = frames[1].split(b"\r\n")
        assert lines[0].startswith(b"CONTAINER ID") and lines[0].endswith(el)
        assert lines[1].split()[1] == b"onscreen" and lines[1].endswith(el)
        assert lines[2] == curses.tigetstr("ed")
    finally:
        os.kill(pid, signal.SIGINT)
        os.waitpid(pid, 0)
        os.close(fd)
        remove(engine, "onscreen")
