"""`minirun run` end to end on the busybox image: docker's flags, checked from inside."""

import json
import os

import pytest

from enginetest import engine  # noqa: F401
from ocitest import needs_root

pytestmark = [needs_root, pytest.mark.root]


@pytest.fixture(scope="module")
def engine_root(engine):
    return engine


def minirun(env, *args, **kw):
    return env(*args, **kw)


def test_run_echo(engine_root):
    proc = minirun(engine_root, "run", "--rm", "busybox", "echo", "hi")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "hi\n"


def test_exit_statuses_like_docker(engine_root):
    assert minirun(engine_root, "run", "--rm", "busybox", "sh", "-c", "exit 3").returncode == 3
    proc = minirun(engine_root, "run", "--rm", "busybox", "no-such-command")
    assert proc.returncode == 127 and "not found" in proc.stderr
    proc = minirun(engine_root, "run", "--rm", "busybox", "/etc/passwd")
    assert proc.returncode == 126, proc.stderr
    # --pull never: the default (missing) would try docker.io first, as docker does
    proc = minirun(engine_root, "run", "--rm", "--pull", "never", "no-such-image:latest",
                   "true")
    assert proc.returncode == 125
    assert len(proc.stderr.strip().splitlines()) == 1


def test_flags_seen_from_inside(engine_root, tmp_path):
    vol = tmp_path / "vol"
    vol.mkdir()
    (vol / "in").write_text("from host\n")
    proc = minirun(engine_root, "run", "--rm", "-e", "FOO=bar", "-w", "/tmp", "-u", "app",
                   "-h", "boxname", "-v", f"{vol}:/data:ro", "--tmpfs", "/scratch",
                   "busybox", "sh", "-c",
                   "echo $FOO; pwd; id -u; hostname; cat /data/in; "
                   "touch /data/x 2>/dev/null || echo ro; grep -c scratch /proc/mounts; "
                   "grep CapEff /proc/self/status")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[:7] == ["bar", "/tmp", "1000", "boxname", "from host", "ro", "1"]
    assert lines[7].split()[1] == "0000000000000000"  # non-root: no effective caps


def test_default_caps_and_limits(engine_root):
    proc = minirun(engine_root, "run", "--rm", "-m", "64m", "--pids-limit", "50", "busybox",
                   "sh", "-c", "grep CapBnd /proc/self/status; "
                   "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max")
    assert proc.returncode == 0, proc.stderr
    bnd, mem, pids = proc.stdout.split("\n")[:3]
    assert int(bnd.split()[1], 16) == 0xa80425fb  # docker's 14 default capabilities
    assert mem == str(64 * 1024 * 1024)
    assert pids == "50"


def test_read_only_and_cap_drop(engine_root):
    proc = minirun(engine_root, "run", "--rm", "--read-only", "--cap-drop", "ALL", "busybox",
                   "sh", "-c", "touch /x 2>&1; grep CapEff /proc/self/status")
    assert "Read-only file system" in proc.stdout
    assert proc.stdout.splitlines()[-1].split()[1] == "0000000000000000"


def test_name_is_unique_and_records_survive(engine_root):
    proc = minirun(engine_root, "run", "--name", "keeper", "busybox", "sh", "-c", "exit 4")
    assert proc.returncode == 4
    proc = minirun(engine_root, "run", "--name", "keeper", "busybox", "true")
    assert proc.returncode == 125 and "already in use" in proc.stderr
    ps = [json.loads(line) for line in
          minirun(engine_root, "ps", "-a", "--format", "json").stdout.splitlines()]
    mine = [c for c in ps if c["Names"] == "keeper"]
    assert len(mine) == 1 and mine[0]["Status"].startswith("Exited (4) ")
    assert mine[0]["State"] == "exited"
    assert minirun(engine_root, "rm", "keeper").returncode == 0
    names = minirun(engine_root, "ps", "-a", "--format", "{{.Names}}").stdout.split()
    assert "keeper" not in names


def test_rm_removes_the_snapshot(engine_root):
    proc = minirun(engine_root, "run", "--rm", "busybox", "sh", "-c", "echo x > /file")
    assert proc.returncode == 0, proc.stderr
    assert os.listdir(os.path.join(engine_root.root, "containers")) == []


def test_two_containers_share_layers(engine_root):
    """The second container copies nothing: both see the same inode of /bin/busybox."""
    a = minirun(engine_root, "run", "--rm", "busybox", "stat", "-c", "%d:%i", "/bin/busybox")
    b = minirun(engine_root, "run", "--rm", "busybox", "stat", "-c", "%d:%i", "/bin/busybox")
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    assert a.stdout.split(":")[1] == b.stdout.split(":")[1]


def test_init_reaps_and_forwards(engine_root):
    """--init: tini is pid 1, the command runs under it, orphans are reaped."""
    proc = minirun(engine_root, "run", "--rm", "--init", "busybox", "sh", "-c",
                   "cat /proc/1/cmdline | tr '\\0' ' '; echo; (sleep 0.1 &); sleep 0.3; "
                   "ps -o stat,comm | grep -c Z || true")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("/sbin/minirun-init --")
    assert lines[-1].strip() == "0"  # no zombie left
