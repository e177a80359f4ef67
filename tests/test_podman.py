"""podman 4 driving minirun-oci as its OCI runtime (`podman --runtime <minirun-oci>`).

podman is isolated from the host: its storage (vfs), run root, tmpdir, file locks and
events log live in a temporary directory, CONTAINERS_CONF and CONTAINERS_STORAGE_CONF
point at files written there, every container runs with `--network none` and under the
cgroup parent /minirun-podman-test/<run token> (never under this process's own cgroup).

podman's default seccomp profile (containers-common's, sent as linux.seccomp) applies as
under runc: no `--security-opt seccomp=unconfined`.

One option every `podman run` here needs, and why:
- `--ulimit nofile=1024:1024 --ulimit nproc=1024:1024`, only on hosts where root lacks
  CAP_SYS_RESOURCE (this VM): podman asks for RLIMIT_NOFILE 1048576, above the host's hard
  limit, and raising a hard limit needs that capability; runc fails the same way there
  ("error setting rlimit type 7: operation not permitted").
"""

from __future__ import annotations

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
    has_cap_sys_resource,
    mounts_under,
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

IMAGE = "localhost/busybox-minirun"
CGROUP_TOP = "/minirun-podman-test"

pytestmark = [
    pytest.mark.podman,
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="podman with a rootful runtime needs root"),
    pytest.mark.skipif(shutil.which("podman") is None, reason="podman is not installed"),
    pytest.mark.skipif(shutil.which("conmon") is None, reason="conmon is not installed"),
]

CONTAINERS_CONF = """\
[containers]
log_driver = "k8s-file"

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
lock_type = "file"
"""


class Podman:
    """podman against private storage, with minirun-oci as the runtime."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.storage = os.path.join(base, "storage")
        self.runroot = os.path.join(base, "run")
        self.tmpdir = os.path.join(base, "tmp")
        self.oci_root = os.path.join(base, "oci-state")
        self.call_log = os.path.join(base, "runtime-calls.log")
        self.cgroup_parent = f"{CGROUP_TOP}/{run_token()}"
        self.runtime = runtime_wrapper(os.path.join(base, "minirun-oci"), self.call_log,
                                       default_root=self.oci_root)
        conf = os.path.join(base, "containers.conf")
        with open(conf, "w") as f:
            f.write(CONTAINERS_CONF)
        storage_conf = os.path.join(base, "storage.conf")
        with open(storage_conf, "w") as f:
            f.write(f'[storage]\ndriver = "vfs"\ngraphroot = "{self.storage}"\n'
                    f'runroot = "{self.runroot}"\n')
        self.env = dict(os.environ, CONTAINERS_CONF=conf, CONTAINERS_STORAGE_CONF=storage_conf)
        self.cmd = ["podman", "--root", self.storage, "--runroot", self.runroot,
                    "--storage-driver", "vfs", "--tmpdir", self.tmpdir,
                    "--cgroup-manager", "cgroupfs", "--events-backend", "file",
                    "--runtime", self.runtime]
        self.run_opts = ["--network", "none", "--pull", "never",
                         "--cgroup-parent", self.cgroup_parent]
        if not has_cap_sys_resource():
            self.run_opts += ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]

    def __call__(self, *args: str, check: bool = True, timeout: float = 120,
                 **kw) -> subprocess.CompletedProcess:
        cmd = self.cmd + list(args)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False,
                              env=self.env, **kw)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(args)} exited {proc.returncode}: "
                                 f"{proc.stderr.strip()}\nruntime calls:\n"
                                 f"{format_calls(self.call_log)}")
        return proc

    def run(self, *args: str, **kw) -> subprocess.CompletedProcess:
        """podman run <common options> <args>"""
        return self("run", *self.run_opts, *args, **kw)

    def leaks(self) -> list[str]:
        """What the containers run so far left behind once podman removed them."""
        found = []
        if os.path.isdir(self.oci_root):
            found += [f"runtime state {name}" for name in os.listdir(self.oci_root)]
        for top in cgroup_dirs(self.cgroup_parent):
            found += [f"cgroup {os.path.join(top, name)}" for name in os.listdir(top)
                      if name.startswith("libpod-")]
        found += [f"mount {m}" for m in mounts_under(self.storage)]
        return found


@pytest.fixture(scope="module")
def podman_session():
    base = tempfile.mkdtemp(prefix="minirun-podman-")
    pm = None
    try:
        pm = Podman(base)
        tarball = build_rootfs_tarball(base)
        pm("import", tarball, IMAGE)
        yield pm
    finally:
        errors = []
        if pm is not None:
            for args in (("rm", "--all", "--force", "--time", "0"), ("rmi", "--all", "--force")):
                proc = pm(*args, check=False)
                if proc.returncode != 0:
                    errors.append(f"podman {' '.join(args)}: {proc.stderr.strip()}")
            left = remove_cgroup_tree(pm.cgroup_parent)
            errors += [f"cgroup {d} could not be removed" for d in left]
            remove_empty_parent_cgroup(CGROUP_TOP)
            print(f"\nruntime calls made by podman:\n{format_calls(pm.call_log)}")
        remove_tree(base)
        assert not errors, errors


@pytest.fixture
def podman(podman_session):
    """The module's podman; after each test no container is left and nothing of them is
    left on the host (runtime state, libpod-* cgroups, mounts)."""
    yield podman_session
    podman_session("rm", "--all", "--force", "--time", "0", check=False)
    wait_for(lambda: not podman_session.leaks(), timeout=10)
    leaks = podman_session.leaks()
    assert not leaks, f"left on the host: {leaks}"


def test_run_echo(podman):
    before = len(_calls(podman))
    proc = podman.run("--rm", IMAGE, "echo", "hi")
    assert proc.stdout == "hi\n"
    verbs = [_verb(argv) for argv in _calls(podman)[before:]]
    assert verbs[:2] == ["create", "start"], verbs


def test_exit_code_propagates(podman):
    proc = podman.run("--rm", IMAGE, "sh", "-c", "echo out; echo err >&2; exit 7", check=False)
    assert proc.returncode == 7, proc.stderr
    assert proc.stdout == "out\n"
    assert "err" in proc.stderr


def test_missing_command_is_reported(podman):
    proc = podman.run("--rm", IMAGE, "/no/such/program", check=False)
    assert proc.returncode == 127, proc.stderr
    assert "/no/such/program" in proc.stderr


def test_interactive_terminal(podman):
    status, out = run_in_pty(podman.cmd + ["run", "--rm", "-it", *podman.run_opts, IMAGE, "sh"],
                             send=b"tty; exit 3\n", wait_for=b"# ", env=podman.env)
    assert "/dev/pts/0" in out, out
    assert status == 3, out


def test_default_seccomp_profile_applies(podman):
    """podman's profile allows personality() for five values only; everything it does
    not allow gets its defaultErrnoRet, ENOSYS (linux32 -R asks PER_LINUX32 with
    ADDR_NO_RANDOMIZE). Unconfined, the same call succeeds."""
    script = "grep ^Seccomp: /proc/self/status; linux32 -R true"
    proc = podman.run("--rm", IMAGE, "sh", "-c", script, check=False)
    assert proc.stdout.split() == ["Seccomp:", "2"], proc.stderr
    assert proc.returncode == 1
    assert "personality(0x40008): Function not implemented" in proc.stderr, proc.stderr
    proc = podman.run("--rm", "--security-opt", "seccomp=unconfined", IMAGE, "sh", "-c",
                      script)
    assert proc.stdout.split() == ["Seccomp:", "0"], proc.stderr


def test_memory_limit_visible_inside(podman):
    if detect_mode() == "v2":
        limit_file = "/sys/fs/cgroup/memory.max"
    else:
        limit_file = "/sys/fs/cgroup/memory/memory.limit_in_bytes"
    proc = podman.run("--rm", "--memory", "64m", IMAGE, "sh", "-c",
                      f"cat /proc/self/cgroup; echo limit=$(cat {limit_file})")
    lines = proc.stdout.splitlines()
    assert "limit=67108864" in lines, proc.stdout
    # The container sits under the cgroup parent we gave, at the hierarchy root.
    memory_line = next(line for line in lines
                       if line.split(":")[1] in ("memory", "") and "libpod-" in line)
    assert memory_line.split(":", 2)[2].startswith(podman.cgroup_parent + "/libpod-"), lines


def test_detached_stop_delivers_sigterm(podman):
    name = f"term-{run_token()}"
    script = 'trap "exit 42" TERM; echo ready; while :; do sleep 1; done'
    cid = podman.run("-d", "--name", name, IMAGE, "sh", "-c", script).stdout.strip()
    assert _inspect(podman, name, "{{.State.Status}}") == "running"
    assert wait_for(lambda: "ready" in podman("logs", name).stdout, timeout=20)
    # The init runs in the container's cgroup on the host, below our parent.
    pid = int(_inspect(podman, name, "{{.State.Pid}}"))
    with open(f"/proc/{pid}/cgroup") as f:
        assert f"{podman.cgroup_parent}/libpod-{cid}" in f.read()

    started = time.monotonic()
    podman("stop", "--time", "10", name)
    assert time.monotonic() - started < 8, "SIGTERM did not reach the container's trap"
    assert _inspect(podman, name, "{{.State.ExitCode}}") == "42"
    assert _ps_status(podman, name).startswith("Exited (42)")
    podman("rm", name)
    assert _ps_status(podman, name) == ""
    assert not podman.leaks()


def test_detached_stop_escalates_to_sigkill(podman):
    """sleep as pid 1 has no SIGTERM handler, so the kernel ignores SIGTERM: podman must
    fall back to SIGKILL after the timeout (as with runc)."""
    name = f"sleep-{run_token()}"
    podman.run("-d", "--name", name, IMAGE, "sleep", "100")
    assert _ps_status(podman, name).startswith("Up")
    before = len(_calls(podman))
    podman("stop", "--time", "2", name)
    assert _ps_status(podman, name).startswith("Exited (137)")
    kills = [argv[-1] for argv in _calls(podman)[before:] if _verb(argv) == "kill"]
    assert kills[-2:] == ["15", "9"], kills
    podman("rm", name)
    assert _ps_status(podman, name) == ""


def _inspect(podman: Podman, name: str, fmt: str) -> str:
    return podman("inspect", "--format", fmt, name).stdout.strip()


def _ps_status(podman: Podman, name: str) -> str:
    out = podman("ps", "--all", "--format", "{{.Names}}\t{{.Status}}").stdout
    for line in out.splitlines():
        got, _, status = line.partition("\t")
        if got == name:
            return status
    return ""


def _calls(podman: Podman) -> list[list[str]]:
    return read_calls(podman.call_log)


_GLOBAL_WITH_VALUE = {"--root", "--log", "--log-format", "--criu", "--rootless"}


def _verb(argv: list[str]) -> str:
    """The subcommand of a minirun-oci command line (after runc-style global options)."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in _GLOBAL_WITH_VALUE:
            skip = True
        elif not arg.startswith("-"):
            return arg
    return ""


def test_read_only_root_with_tmpfs_keeps_the_image_files(podman):
    """podman --read-only and --tmpfs send tmpfs mounts with runc's tmpcopyup option: the
    image's files under /etc stay visible and become writable; the root stays read-only."""
    script = ("head -1 /etc/passwd; echo x > /etc/new && cat /etc/new; "
              "echo y > /tmp/y && cat /tmp/y; touch /bin/nope 2>/dev/null || echo ro")
    proc = podman.run("--rm", "--read-only", "--tmpfs", "/etc", IMAGE, "sh", "-c", script,
                      check=False)
    assert proc.returncode == 0, proc.stderr
    # the first line of the /etc/passwd that rootfs/build.sh writes
    assert proc.stdout == "root:x:0:0:root:/root:/bin/sh\nx\ny\nro\n"
