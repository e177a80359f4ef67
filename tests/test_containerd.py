"""containerd 1.6 driving minirun-oci through its runc shim (`ctr run --runc-binary`).

The fixture starts a private containerd (root, state, sockets and the image store in a
temporary directory, the CRI plugin disabled, the overlayfs snapshotter), imports the
busybox rootfs as an OCI image archive built here, and stops the daemon by pid at the end.
Every container gets `--runc-root` and `--fifo-dir` in that directory and the cgroup
/minirun-ctr-test/<run token>/<id>. The shim calls the runtime as
`minirun-oci --root R --log <bundle>/log.json --log-format json create ...`; the first
line of that log is the error ctr shows when something fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time

import pytest
from clients import (
    build_rootfs_tarball,
    cgroup_dirs,
    format_calls,
    kill_pid,
    mounts_under,
    oci_image_archive,
    read_calls,
    remove_cgroup_tree,
    remove_empty_parent_cgroup,
    remove_tree,
    run_in_pty,
    run_token,
    runtime_wrapper,
)
from ocitest import wait_for

from minirun.cgroups import detect_mode

IMAGE = "localhost/busybox-minirun:latest"
NAMESPACE = "minirun-test"
CGROUP_TOP = "/minirun-ctr-test"
# containerd-shim-runc-v2 keeps its sockets here whatever the daemon's state dir is.
SHIM_SOCKET_DIR = "/run/containerd/s"

pytestmark = [
    pytest.mark.containerd,
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="containerd needs root"),
    pytest.mark.skipif(shutil.which("containerd") is None, reason="containerd is not installed"),
    pytest.mark.skipif(shutil.which("ctr") is None, reason="ctr is not installed"),
    pytest.mark.skipif(shutil.which("containerd-shim-runc-v2") is None,
                       reason="containerd-shim-runc-v2 is not installed"),
]

CONFIG = """\
version = 2
root = "{base}/root"
state = "{base}/state"
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
]

[grpc]
  address = "{base}/containerd.sock"

[ttrpc]
  address = "{base}/containerd.sock.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{base}/opt"
"""


class Containerd:
    """ctr against a private containerd, with minirun-oci as the runc binary."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.address = os.path.join(base, "containerd.sock")
        self.config = os.path.join(base, "config.toml")
        self.daemon_log = os.path.join(base, "containerd.log")
        self.call_log = os.path.join(base, "runtime-calls.log")
        self.runc_root = os.path.join(base, "runc-root")
        self.fifo_dir = os.path.join(base, "fifo")
        self.cgroup_parent = f"{CGROUP_TOP}/{run_token()}"
        self.runtime = runtime_wrapper(os.path.join(base, "minirun-oci"), self.call_log)
        with open(self.config, "w") as f:
            f.write(CONFIG.format(base=base))
        self.cmd = ["ctr", "--address", self.address, "--namespace", NAMESPACE]
        self.pid = 0

    def start(self) -> None:
        with open(self.daemon_log, "w") as log:
            proc = subprocess.Popen(["containerd", "--config", self.config],
                                    stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        self.pid = proc.pid
        ready = wait_for(lambda: proc.poll() is not None or (
            os.path.exists(self.address) and
            self("version", check=False, timeout=10).returncode == 0), timeout=30, interval=0.1)
        if not ready or proc.poll() is not None:
            raise AssertionError(f"containerd did not start:\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        try:
            with open(self.daemon_log) as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def __call__(self, *args: str, check: bool = True, timeout: float = 120,
                 **kw) -> subprocess.CompletedProcess:
        cmd = self.cmd + list(args)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, **kw)
        if check and proc.returncode != 0:
            raise AssertionError(f"ctr {' '.join(args)} exited {proc.returncode}: "
                                 f"{proc.stderr.strip()}\nruntime calls:\n"
                                 f"{format_calls(self.call_log)}")
        return proc

    def run_opts(self, cid: str) -> list[str]:
        return ["--runc-binary", self.runtime, "--runc-root", self.runc_root,
                "--fifo-dir", self.fifo_dir, "--cgroup", f"{self.cgroup_parent}/{cid}"]

    def run(self, cid: str, *args: str, opts: tuple[str, ...] = (), **kw
            ) -> subprocess.CompletedProcess:
        """ctr run <common options> <opts> IMAGE cid <args>"""
        return self("run", *self.run_opts(cid), *opts, IMAGE, cid, *args, **kw)

    def task_status(self, cid: str) -> str:
        for line in self("task", "ls").stdout.splitlines()[1:]:
            fields = line.split()
            if fields and fields[0] == cid:
                return fields[-1]
        return ""

    def remove_all(self) -> list[str]:
        """Force away every task and container; returns the errors."""
        errors = []
        for cid in self("task", "ls", "--quiet", check=False).stdout.split():
            self("task", "kill", "--signal", "SIGKILL", cid, check=False)
            proc = self("task", "delete", "--force", cid, check=False)
            if proc.returncode != 0:
                errors.append(f"task delete {cid}: {proc.stderr.strip()}")
        for cid in self("container", "ls", "--quiet", check=False).stdout.split():
            proc = self("container", "rm", cid, check=False)
            if proc.returncode != 0:
                errors.append(f"container rm {cid}: {proc.stderr.strip()}")
        return errors

    def leaks(self) -> list[str]:
        found = []
        ns_root = os.path.join(self.runc_root, NAMESPACE)
        if os.path.isdir(ns_root):
            found += [f"runtime state {name}" for name in os.listdir(ns_root)]
        for top in cgroup_dirs(self.cgroup_parent):
            found += [f"cgroup {os.path.join(top, name)}" for name in os.listdir(top)
                      if os.path.isdir(os.path.join(top, name))]
        found += [f"mount {m}" for m in mounts_under(os.path.join(self.base, "state"))]
        return found

    def shim_pids(self) -> list[int]:
        """containerd-shim processes serving our daemon (they outlive it if left)."""
        pids = []
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if argv and argv[0].endswith(b"containerd-shim-runc-v2") and \
                    self.address.encode() in argv:
                pids.append(int(name))
        return pids


@pytest.fixture(scope="module")
def containerd_session():
    base = tempfile.mkdtemp(prefix="minirun-ctr-")
    had_shim_dir = os.path.exists(SHIM_SOCKET_DIR)
    ctr = None
    try:
        ctr = Containerd(base)
        archive = oci_image_archive(build_rootfs_tarball(base),
                                    os.path.join(base, "busybox-oci.tar"), IMAGE)
        ctr.start()
        ctr("images", "import", archive)
        yield ctr
    finally:
        errors = []
        if ctr is not None:
            if ctr.pid:
                errors += ctr.remove_all()
                ctr("images", "rm", IMAGE, check=False)
                kill_pid(ctr.pid)
            for pid in ctr.shim_pids():
                errors.append(f"shim {pid} was still running")
                kill_pid(pid, timeout=5)
            left = remove_cgroup_tree(ctr.cgroup_parent)
            errors += [f"cgroup {d} could not be removed" for d in left]
            remove_empty_parent_cgroup(CGROUP_TOP)
            print(f"\nruntime calls made by containerd's shim:\n{format_calls(ctr.call_log)}")
        if not had_shim_dir:
            for d in (SHIM_SOCKET_DIR, os.path.dirname(SHIM_SOCKET_DIR)):
                try:
                    os.rmdir(d)
                except OSError:
                    pass
        remove_tree(base)
        assert not errors, errors


@pytest.fixture
def ctr(containerd_session):
    """The module's containerd; after each test no task or container is left, and nothing
    of them on the host (runtime state, cgroups, rootfs mounts)."""
    yield containerd_session
    errors = containerd_session.remove_all()
    wait_for(lambda: not containerd_session.leaks(), timeout=10)
    leaks = containerd_session.leaks()
    assert not errors and not leaks, f"cleanup errors: {errors}; left on the host: {leaks}"


def _new_calls(ctr: Containerd, before: int) -> list[list[str]]:
    return read_calls(ctr.call_log)[before:]


def _verb(argv: list[str]) -> str:
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("--root", "--log", "--log-format"):
            skip = True
        elif not arg.startswith("-"):
            return arg
    return ""


def test_run_echo(ctr):
    cid = f"echo-{run_token()}"
    before = len(read_calls(ctr.call_log))
    proc = ctr.run(cid, "echo", "hi", opts=("--rm",))
    assert proc.stdout == "hi\n"
    calls = _new_calls(ctr, before)
    assert [_verb(argv) for argv in calls][:2] == ["create", "start"], calls
    create = calls[0]
    assert create[create.index("--log-format") + 1] == "json"
    assert create[create.index("--root") + 1] == os.path.join(ctr.runc_root, NAMESPACE)


def test_exit_code_propagates(ctr):
    cid = f"exit-{run_token()}"
    proc = ctr.run(cid, "sh", "-c", "echo out; exit 7", opts=("--rm",), check=False)
    assert proc.returncode == 7, proc.stderr
    assert proc.stdout == "out\n"


def test_runtime_error_reaches_ctr(ctr):
    """A profile minirun refuses: its one-line error goes through log.json to ctr."""
    cid = f"seccomp-{run_token()}"
    profile = os.path.join(ctr.base, "bad-seccomp.json")
    with open(profile, "w") as f:
        json.dump({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO",
             "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_BOGUS"}]}]}, f)
    proc = ctr.run(cid, "true", opts=("--rm", "--seccomp", "--seccomp-profile", profile),
                   check=False)
    assert proc.returncode != 0
    assert "linux.seccomp.syscalls[0].args[0].op: unknown operator" in proc.stderr, \
        proc.stderr


def test_default_seccomp_profile(ctr):
    """containerd's default profile (ctr --seccomp), applied as runc applies it."""
    cid = f"seccomp-{run_token()}"
    proc = ctr.run(cid, "sh", "-c", "grep ^Seccomp: /proc/self/status; linux32 -R true",
                   opts=("--rm", "--seccomp"), check=False)
    assert proc.stdout.split() == ["Seccomp:", "2"], proc.stderr
    assert proc.returncode == 1, proc.stdout
    # Allowed unconfined; the profile allows personality() for five values only.
    assert "personality(0x40008): Operation not permitted" in proc.stderr


def test_terminal(ctr):
    cid = f"tty-{run_token()}"
    status, out = run_in_pty(ctr.cmd + ["run", *ctr.run_opts(cid), "--rm", "-t", IMAGE, cid,
                                        "sh"],
                             send=b"tty; exit 3\n", wait_for=b"# ")
    assert "/dev/pts/0" in out, out
    assert status == 3, out


def test_detached_kill_delete(ctr):
    cid = f"detached-{run_token()}"
    log = os.path.join(ctr.base, f"{cid}.log")
    script = 'trap "exit 42" TERM; echo ready; while :; do sleep 1; done'
    ctr.run(cid, "sh", "-c", script,
            opts=("--detach", "--log-uri", f"file://{log}", "--memory-limit", "67108864"))
    assert ctr.task_status(cid) == "RUNNING"
    assert wait_for(lambda: "ready" in _read(log), timeout=20)

    # The init is in the cgroup we asked for, with the memory limit we asked for.
    cgroup = f"{ctr.cgroup_parent}/{cid}"
    pid = int(ctr("task", "ls").stdout.split(cid, 1)[1].split()[0])
    with open(f"/proc/{pid}/cgroup") as f:
        assert f":{cgroup}\n" in f.read()
    if detect_mode() == "v2":
        limit_file = f"/sys/fs/cgroup{cgroup}/memory.max"
    else:
        limit_file = f"/sys/fs/cgroup/memory{cgroup}/memory.limit_in_bytes"
    with open(limit_file) as f:
        assert f.read().strip() == "67108864"

    started = time.monotonic()
    ctr("task", "kill", cid)  # SIGTERM, caught by the trap within a second
    assert wait_for(lambda: ctr.task_status(cid) == "STOPPED", timeout=10), \
        "SIGTERM did not reach the container's trap"
    assert time.monotonic() - started < 10
    proc = ctr("task", "delete", cid)
    assert "exit code 42" in proc.stderr, proc.stderr
    assert ctr.task_status(cid) == ""
    ctr("container", "rm", cid)
    assert cid not in ctr("container", "ls", "--quiet").stdout.split()
    assert not cgroup_dirs(cgroup)
    assert not ctr.leaks()


def test_kill_sigkill_sleep(ctr):
    """sleep as pid 1 ignores SIGTERM (no handler); SIGKILL stops it with 137."""
    cid = f"sleep-{run_token()}"
    ctr.run(cid, "sleep", "100", opts=("--detach",))
    assert ctr.task_status(cid) == "RUNNING"
    before = len(read_calls(ctr.call_log))
    ctr("task", "kill", "--signal", "SIGKILL", cid)
    assert wait_for(lambda: ctr.task_status(cid) == "STOPPED", timeout=10)
    kills = [argv for argv in _new_calls(ctr, before) if _verb(argv) == "kill"]
    assert kills and kills[0][-2:] == [cid, "9"], kills
    proc = ctr("task", "delete", cid)
    assert "exit code 137" in proc.stderr, proc.stderr
    ctr("container", "rm", cid)


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return ""
