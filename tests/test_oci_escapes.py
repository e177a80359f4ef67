"""Regression tests for the container escapes that hit runc, each reproducing the attack
against minirun-oci and checking, from inside the container and from the host, that it
is blocked. Each test's docstring names the CVE."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile

import pytest

from ocitest import (  # noqa: F401 - fixtures are used by name
    OCI_CMD, base_config, container_cgroup_dirs, mounts_mentioning, needs_root, oci,
    processes_rooted_in, rootfs, wait_for)
from runctest import needs_runc, runc_run

pytestmark = [needs_root, pytest.mark.root]

LEAKED_FDS = (5, 6, 7, 8, 9)

# Opens host paths at the given fd numbers without O_CLOEXEC, then execs the rest of
# argv: what a careless caller (a shim, a CI runner) hands the runtime.
_LEAK_FDS = """
import os, sys
for item in sys.argv[1].split(","):
    num, path = item.split("=", 1)
    flags = os.O_RDONLY | (os.O_DIRECTORY if os.path.isdir(path) else 0)
    fd = os.open(path, flags)
    if fd == int(num):
        os.set_inheritable(fd, True)
    else:
        os.dup2(fd, int(num), inheritable=True)
        os.close(fd)
os.execvp(sys.argv[2], sys.argv[2:])
"""


def own_rootfs(rootfs: str, tmp_path) -> str:
    """A private copy of the busybox rootfs to plant symlinks in (cp -a keeps the applets'
    hard links: 2 MB rather than a copy of busybox per applet)."""
    dest = str(tmp_path / "own-rootfs")
    subprocess.run(["cp", "-a", rootfs, dest], check=True)
    return dest


def oci_with_fds(oci, fds: dict[int, str], *args, timeout: float = 60):
    """minirun-oci with host paths open at the fd numbers of `fds` (inheritable)."""
    spec = ",".join(f"{num}={path}" for num, path in fds.items())
    cmd = [sys.executable, "-c", _LEAK_FDS, spec] + OCI_CMD + ["--root", oci.root] + \
        [str(a) for a in args]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        rc = subprocess.run(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                            timeout=timeout, check=False).returncode
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(cmd, rc, out.read(), err.read())


@pytest.fixture
def leaked_dirs(tmp_path) -> dict[int, str]:
    """Host directories, one per leaked fd number, each holding a secret file."""
    dirs = {}
    for num in LEAKED_FDS:
        d = tmp_path / f"leaked-host-dir-{num}"
        d.mkdir()
        (d / "host-secret").write_text("not for containers\n")
        dirs[num] = str(d)
    return dirs


def assert_refused_cleanly(oci, proc, cid: str, rootfs: str, *words: str) -> None:
    """Exit 1, one line naming the problem, and nothing left on the host."""
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for w in words:
        assert w in lines[0], lines[0]
    assert not os.path.exists(os.path.join(oci.root, cid))
    assert container_cgroup_dirs(f"/minirun/{cid}") == []
    assert processes_rooted_in(rootfs) == []
    assert mounts_mentioning(rootfs) == []


def fd_table(ls_output: str) -> dict[int, str]:
    """`ls -l /proc/PID/fd` as {fd: target}."""
    table = {}
    for line in ls_output.splitlines():
        if " -> " in line:
            left, target = line.split(" -> ", 1)
            table[int(left.split()[-1])] = target
    return table


def join_pid_namespace_of(cfg: dict, pid: int) -> dict:
    for ns in cfg["linux"]["namespaces"]:
        if ns["type"] == "pid":
            ns["path"] = f"/proc/{pid}/ns/pid"
    return cfg


# --- CVE-2019-5736: overwriting the runtime through /proc/<pid>/exe ------------------------

# the write attempt appends nothing even if the open succeeds
PROBE_INIT_EXE = ("ls -l /proc/1/exe 2>&1; cat /proc/1/exe >/dev/null 2>&1 && echo read-ok; "
                  "(: >>/proc/1/exe) 2>&1 && echo write-ok; readlink /proc/1/root || echo no-root;"
                  "grep CapEff /proc/self/status")
CAP_SYS_PTRACE = 19


@pytest.mark.parametrize("uid", [0, 1000])
def test_created_init_exe_is_out_of_reach_of_other_containers(oci, rootfs, uid):
    """CVE-2019-5736: while a container is `created` its init is still the host's Python,
    blocked before execve. A process in another container sharing its pid namespace (root
    without CAP_SYS_PTRACE, or a plain user) must not resolve, read or open for writing
    /proc/<init>/exe: the init is non-dumpable until it execs the user's program. After
    start, the same probe reaches the user's program (busybox), which shows it was the
    dumpable flag, not the probe, that refused."""
    victim = oci.new_id()
    oci("create", "--bundle", oci.bundle(base_config(["sleep", "60"]), rootfs), victim,
        check=True)
    pid = oci.state(victim)["pid"]
    python = os.readlink(f"/proc/{pid}/exe")
    assert "python" in os.path.basename(python), python  # the window this test is about
    before = os.stat(python)

    attacker = join_pid_namespace_of(base_config(["sh", "-c", PROBE_INIT_EXE]), pid)
    attacker["process"]["user"] = {"uid": uid, "gid": uid}
    proc = oci.run(attacker, rootfs)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "cannot read link: Permission denied" in out, out
    assert "can't create /proc/1/exe: Permission denied" in out, out
    assert "read-ok" not in out and "write-ok" not in out, out
    assert "no-root" in out, out
    cap_eff = int(out.split("CapEff:")[1].split()[0], 16)
    assert not cap_eff & (1 << CAP_SYS_PTRACE)

    after = os.stat(python)
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert oci.state(victim)["status"] == "created"

    oci("start", victim, check=True)
    wait_for(lambda: "python" not in os.readlink(f"/proc/{pid}/exe"))
    control = join_pid_namespace_of(
        base_config(["sh", "-c", "readlink /proc/1/exe; cat /proc/1/exe >/dev/null && echo ok"]),
        pid)
    proc = oci.run(control, rootfs)
    assert proc.stdout.split() == ["/bin/sleep", "ok"], (proc.stdout, proc.stderr)


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def test_started_init_is_the_users_program_not_the_runtime(oci, rootfs):
    """CVE-2019-5736: the runtime never re-executes itself or Python inside the
    container: after start, the init's executable is the rootfs's busybox (same device
    and inode) and nothing of the interpreter is mapped in it."""
    cid = oci.new_id()
    oci("create", "--bundle", oci.bundle(base_config(["sleep", "60"]), rootfs), cid, check=True)
    pid = oci.state(cid)["pid"]
    busybox = os.stat(os.path.join(rootfs, "bin", "busybox"))
    assert not _same_file(os.stat(f"/proc/{pid}/exe"), busybox)
    oci("start", cid, check=True)
    assert wait_for(lambda: _same_file(os.stat(f"/proc/{pid}/exe"), busybox))
    with open(f"/proc/{pid}/maps") as f:
        maps = f.read()
    assert "python" not in maps and "libpython" not in maps, maps


def test_exec_process_is_the_users_program_and_sees_no_host_fd(oci, rootfs, leaked_dirs,
                                                               tmp_path):
    """CVE-2019-5736 and CVE-2024-21626 on the exec path: a process started with `exec`
    is the user's program (busybox, not the runtime), and fds the caller leaked do not
    reach it."""
    cid = oci.new_id()
    oci("run", "-d", "--bundle", oci.bundle(base_config(["sleep", "60"]), rootfs), cid,
        check=True)
    pid_file = tmp_path / "exec.pid"
    proc = oci_with_fds(oci, leaked_dirs, "exec", "-d", "--pid-file", pid_file, cid,
                        "sleep", "60")
    assert proc.returncode == 0, proc.stderr
    pid = int(pid_file.read_text())
    busybox = os.stat(os.path.join(rootfs, "bin", "busybox"))
    assert _same_file(os.stat(f"/proc/{pid}/exe"), busybox)
    assert sorted(int(fd) for fd in os.listdir(f"/proc/{pid}/fd")) == [0, 1, 2]

    proc = oci_with_fds(oci, leaked_dirs, "exec", cid, "sh", "-c", "ls -l /proc/$$/fd")
    assert proc.returncode == 0, proc.stderr
    assert sorted(fd_table(proc.stdout)) == [0, 1, 2], proc.stdout
    assert "leaked-host-dir" not in proc.stdout


# --- CVE-2024-21626: leaked host fds and a cwd through /proc/self/fd -----------------------

def test_leaked_host_fds_do_not_reach_the_container(oci, rootfs, leaked_dirs):
    """CVE-2024-21626: directory fds of the host that the caller leaked (fds 5..9, not
    close-on-exec) are closed before the user's program runs: its fd table is 0, 1, 2
    and names no host directory."""
    cid = oci.new_id()
    script = "ls -l /proc/$$/fd; ls /proc/1/fd/5/ || echo no-fd-5"
    bundle = oci.bundle(base_config(["sh", "-c", script]), rootfs)
    proc = oci_with_fds(oci, leaked_dirs, "run", "--bundle", bundle, cid)
    assert proc.returncode == 0, proc.stderr
    assert sorted(fd_table(proc.stdout)) == [0, 1, 2], proc.stdout
    assert "leaked-host-dir" not in proc.stdout
    assert "host-secret" not in proc.stdout
    assert proc.stdout.splitlines()[-1] == "no-fd-5"


def test_preserve_fds_passes_exactly_the_asked_fds(oci, rootfs, leaked_dirs, tmp_path):
    """CVE-2024-21626: with --preserve-fds 2 the container gets fds 3 and 4 as the caller
    passed them, and none of the leaked ones above."""
    passed = {}
    for num in (3, 4):
        f = tmp_path / f"passed-on-purpose-{num}"
        f.write_text(f"fd {num}\n")
        passed[num] = str(f)
    cid = oci.new_id()
    bundle = oci.bundle(base_config(["sh", "-c", "ls -l /proc/$$/fd; cat <&3; cat <&4"]),
                        rootfs)
    proc = oci_with_fds(oci, {**passed, **leaked_dirs}, "run", "--preserve-fds", "2",
                        "--bundle", bundle, cid)
    assert proc.returncode == 0, proc.stderr
    table = fd_table(proc.stdout)
    assert sorted(table) == [0, 1, 2, 3, 4], proc.stdout
    assert table[3].endswith("passed-on-purpose-3") and table[4].endswith("passed-on-purpose-4")
    assert proc.stdout.splitlines()[-2:] == ["fd 3", "fd 4"]
    assert "leaked-host-dir" not in proc.stdout


@pytest.mark.parametrize("cwd", [
    "/proc/self/fd/5",
    "/proc/1/fd/5",
    "/proc/thread-self/fd/7",
    "/proc/self/task/1/fd/5",            # not caught by the path pattern
    "/proc/1/task/1/fd/9",
    "/proc/self/fd/5/../..",             # normalizes to /proc/self
    "/proc/self/task/1/fd/6/made-by-container",
])
def test_cwd_through_a_leaked_fd_is_refused(oci, rootfs, leaked_dirs, cwd):
    """CVE-2024-21626: process.cwd naming a leaked host directory through /proc/*/fd
    (directly, through a task, or with ".." after it) is refused with one line and
    leaves nothing; no directory is made on the host."""
    before = {num: sorted(os.listdir(d)) for num, d in leaked_dirs.items()}
    cfg = base_config(["sh", "-c", "pwd; ls"])
    cfg["process"]["cwd"] = cwd
    cid = oci.new_id()
    proc = oci_with_fds(oci, leaked_dirs, "run", "--bundle", oci.bundle(cfg, rootfs), cid)
    assert_refused_cleanly(oci, proc, cid, rootfs, "process.cwd")
    assert "host-secret" not in proc.stdout
    assert {num: sorted(os.listdir(d)) for num, d in leaked_dirs.items()} == before


@pytest.mark.parametrize("link,cwd", [
    ("/proc/self/fd/5", "/fdlink"),
    ("/proc/self/fd/5", "/fdlink/made-by-container"),
    ("/proc/1/task/1/fd/8/", "/fdlink/a/b"),
])
def test_cwd_symlink_to_a_leaked_fd_is_refused(oci, rootfs, leaked_dirs, tmp_path, link, cwd):
    """CVE-2024-21626: a symlink in the rootfs pointing at /proc/self/fd/N, used as (or
    under) process.cwd, passes any check of the cwd string; it must still be refused
    without making anything in the leaked host directory."""
    own = own_rootfs(rootfs, tmp_path)
    os.symlink(link, os.path.join(own, "fdlink"))
    before = {num: sorted(os.listdir(d)) for num, d in leaked_dirs.items()}
    cfg = base_config(["sh", "-c", "pwd; ls"])
    cfg["root"] = {"path": own, "readonly": True}
    cfg["process"]["cwd"] = cwd
    cid = oci.new_id()
    proc = oci_with_fds(oci, leaked_dirs, "run", "--bundle", oci.bundle(cfg, rootfs), cid)
    assert_refused_cleanly(oci, proc, cid, own, "process.cwd")
    assert {num: sorted(os.listdir(d)) for num, d in leaked_dirs.items()} == before


def test_exec_cwd_symlink_to_a_leaked_fd_is_refused(oci, rootfs, leaked_dirs, tmp_path):
    """CVE-2024-21626 on the exec path: `exec --cwd` through a rootfs symlink to a leaked
    fd is refused and makes nothing on the host; the container keeps running."""
    own = own_rootfs(rootfs, tmp_path)
    os.symlink("/proc/self/fd/5", os.path.join(own, "fdlink"))
    cfg = base_config(["sleep", "60"])
    cfg["root"] = {"path": own, "readonly": True}
    cid = oci.new_id()
    oci("run", "-d", "--bundle", oci.bundle(cfg, rootfs), cid, check=True)
    before = sorted(os.listdir(leaked_dirs[5]))
    for cwd in ("/fdlink", "/fdlink/made-by-exec"):
        proc = oci_with_fds(oci, leaked_dirs, "exec", "--cwd", cwd, cid, "ls")
        assert proc.returncode == 255, (proc.stdout, proc.stderr)  # runc's exec failure
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert "process.cwd" in proc.stderr
        assert "host-secret" not in proc.stdout
    assert sorted(os.listdir(leaked_dirs[5])) == before
    assert oci.state(cid)["status"] == "running"


@pytest.mark.parametrize("target", ["/..", "../../../../..", "/up2/..", "../up2/bin/../.."])
def test_cwd_symlink_climbing_out_ends_inside(oci, rootfs, tmp_path, target):
    """CVE-2024-21626 (and its ancestor, a cwd outside the root): a cwd that is a symlink
    climbing with ".." stops at the container's root."""
    own = own_rootfs(rootfs, tmp_path)
    open(os.path.join(own, "inside-marker"), "w").close()
    os.symlink("../../../../..", os.path.join(own, "up2"))
    os.symlink(target, os.path.join(own, "up"))
    cfg = base_config(["sh", "-c", "pwd -P; ls"])
    cfg["root"] = {"path": own, "readonly": True}
    cfg["process"]["cwd"] = "/up"
    proc = oci.run(cfg, rootfs)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "/"
    assert "inside-marker" in lines[1:]


# --- CVE-2021-30465 family: mount destinations through symlinks ----------------------------

def test_mount_under_a_parent_symlink_to_the_host_lands_inside(oci, rootfs, tmp_path):
    """CVE-2021-30465: a destination whose parent is a symlink to an absolute host path
    (/a -> <existing host dir>, destination /a/b) is mounted inside the rootfs; the
    host directory gets no mount point and no mount."""
    own = own_rootfs(rootfs, tmp_path)
    host_dir = tmp_path / "host-victim"
    host_dir.mkdir()
    (host_dir / "host-file").write_text("host\n")
    os.symlink(str(host_dir), os.path.join(own, "a"))
    src = tmp_path / "src"
    src.mkdir()
    (src / "marker").write_text("mounted\n")
    script = "cat /a/b/marker; grep -c \" $(readlink /a)/t \" /proc/self/mountinfo"
    cfg = base_config(["sh", "-c", script])
    cfg["root"] = {"path": own, "readonly": False}
    cfg["mounts"] += [
        {"destination": "/a/b", "type": "bind", "source": str(src), "options": ["bind"]},
        {"destination": "/a/t", "type": "tmpfs", "source": "tmpfs"},
    ]
    proc = oci.run(cfg, rootfs)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["mounted", "1"], proc.stdout
    assert sorted(os.listdir(host_dir)) == ["host-file"]
    assert mounts_mentioning(str(host_dir)) == []
    inside = os.path.join(own, str(host_dir).lstrip("/"))
    assert os.path.isdir(os.path.join(inside, "b")) and os.path.isdir(os.path.join(inside, "t"))


def test_mount_through_a_relative_symlink_chain_with_dotdot_lands_inside(oci, rootfs, tmp_path):
    """CVE-2021-30465: a destination reached through a chain of relative symlinks with
    "..": /c1 -> sub/../c2, /c2 -> ../../(...)/<host dir>/../<host dir>, destination
    /c1/victim. Resolved on the host the chain names the host directory; minirun follows
    it inside the rootfs (as runc does) and the host directory stays empty."""
    own = own_rootfs(rootfs, tmp_path)
    host_dir = tmp_path / "host-victim"
    host_dir.mkdir()
    os.mkdir(os.path.join(own, "sub"))
    os.symlink("sub/../c2", os.path.join(own, "c1"))
    os.symlink("../" * 16 + str(host_dir).lstrip("/") + "/../" + host_dir.name,
               os.path.join(own, "c2"))
    src = tmp_path / "src"
    src.mkdir()
    (src / "marker").write_text("mounted\n")
    cfg = base_config(["cat", "/c1/victim/marker", f"{host_dir}/victim/marker"])
    cfg["root"] = {"path": own, "readonly": False}
    cfg["mounts"].append({"destination": "/c1/victim", "type": "bind", "source": str(src),
                          "options": ["bind"]})
    proc = oci.run(cfg, rootfs)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "mounted\nmounted\n"
    assert os.listdir(host_dir) == []
    assert mounts_mentioning(str(host_dir)) == []
    assert os.path.isdir(os.path.join(own, str(host_dir).lstrip("/"), "victim"))


def _host_proc_mounts() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f
                if line.split()[4] == "/proc" or line.split()[4].startswith("/proc/")]


def test_tmpfs_on_a_symlink_to_proc_before_proc_stays_inside(oci, rootfs, tmp_path):
    """CVE-2021-30465 family: a tmpfs whose destination is a symlink to /proc lands on
    the container's /proc (under the proc mounted after it), never on the host's."""
    own = own_rootfs(rootfs, tmp_path)
    os.symlink("/proc", os.path.join(own, "evilproc"))
    host_before = _host_proc_mounts()
    script = "awk '$5 == \"/proc\" {print $9}' /proc/self/mountinfo; ls /proc/self/status"
    cfg = base_config(["sh", "-c", script])
    cfg["root"] = {"path": own, "readonly": False}
    cfg["mounts"].insert(0, {"destination": "/evilproc", "type": "tmpfs", "source": "tmpfs"})
    proc = oci.run(cfg, rootfs)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["tmpfs", "proc", "/proc/self/status"], proc.stdout
    assert _host_proc_mounts() == host_before


def test_tmpfs_on_a_symlink_to_proc_over_proc_never_reaches_the_host(oci, rootfs, tmp_path):
    """CVE-2021-30465 family (and CVE-2019-19921): a tmpfs on a symlink to /proc after
    proc is mounted would hide the container's /proc. Refusing it (as runc 1.1 ends up
    doing, with an error of its own) or keeping it inside are both safe; the host's /proc
    must be untouched and nothing left."""
    own = own_rootfs(rootfs, tmp_path)
    os.symlink("/proc", os.path.join(own, "evilproc"))
    host_before = _host_proc_mounts()
    cfg = base_config(["sh", "-c", "awk '$5 == \"/proc\" {print $9}' /proc/self/mountinfo"])
    cfg["root"] = {"path": own, "readonly": False}
    cfg["mounts"].append({"destination": "/evilproc", "type": "tmpfs", "source": "tmpfs"})
    cid = oci.new_id()
    proc = oci("run", "--bundle", oci.bundle(cfg, rootfs), cid)
    if proc.returncode == 0:
        assert proc.stdout.splitlines() == ["proc", "tmpfs"], proc.stdout
    else:
        assert_refused_cleanly(oci, proc, cid, own)
    assert _host_proc_mounts() == host_before
    assert os.path.isfile("/proc/self/status")


def test_mount_under_a_symlink_through_proc_self_root_is_refused(oci, rootfs, tmp_path):
    """CVE-2021-30465 family: a destination under a symlink to /proc/self/root/<host dir>
    would, resolved through the magic link of the process doing the mount, name the
    host. It is refused (openat2 RESOLVE_NO_MAGICLINKS) and the host dir is unchanged."""
    own = own_rootfs(rootfs, tmp_path)
    host_dir = tmp_path / "host-victim"
    host_dir.mkdir()
    os.symlink(f"/proc/self/root{host_dir}", os.path.join(own, "viaroot"))
    cfg = base_config(["true"])
    cfg["root"] = {"path": own, "readonly": False}
    cfg["mounts"].append({"destination": "/viaroot/t", "type": "tmpfs", "source": "tmpfs"})
    cid = oci.new_id()
    proc = oci("run", "--bundle", oci.bundle(cfg, rootfs), cid)
    assert_refused_cleanly(oci, proc, cid, own, "viaroot/t")
    assert os.listdir(host_dir) == []
    assert mounts_mentioning(str(host_dir)) == []


# --- CVE-2019-19921, CVE-2023-27561, CVE-2023-28642: /proc or /sys as a symlink -----------

@needs_runc
@pytest.mark.parametrize("dest,plant", [
    ("/proc", ("symlink", "/evil")),
    ("/sys", ("symlink", "../../../../../../../../../sys")),
    ("/proc", ("file", "")),
])
def test_proc_or_sys_that_is_not_a_directory_is_refused(oci, rootfs, tmp_path, dest, plant):
    """CVE-2019-19921, CVE-2023-27561, CVE-2023-28642: a rootfs whose /proc or /sys is a
    symlink (inside the rootfs, or written to look like the host's path) or a file would
    have procfs or sysfs mounted where masks and read-only paths do not apply. Refused
    with one line (runc 1.1.5 too), nothing created in the rootfs nor left on the host."""
    own = own_rootfs(rootfs, tmp_path)
    target = os.path.join(own, dest.lstrip("/"))
    os.rmdir(target)
    kind, link = plant
    if kind == "symlink":
        os.symlink(link, target)
    else:
        open(target, "w").close()
    before = sorted(os.listdir(own))
    cfg = base_config(["true"])
    cfg["root"] = {"path": own, "readonly": True}
    cid = oci.new_id()
    proc = oci("run", "--bundle", oci.bundle(cfg, rootfs), cid)
    fs = "proc" if dest == "/proc" else "sysfs"
    assert_refused_cleanly(oci, proc, cid, own, fs, dest,
                           "a symlink" if kind == "symlink" else "not a directory")
    assert sorted(os.listdir(own)) == before
    assert not os.path.exists(os.path.join(own, "evil"))
    witness = runc_run(cfg, own, tmp_path)
    assert witness.returncode == 1 and "ordinary directory" in witness.stderr, witness.stderr


# --- --no-pivot: the host's /proc must not let a nested user namespace mount procfs -------

def _userns_available() -> bool:
    try:
        with open("/proc/sys/user/max_user_namespaces") as f:
            return int(f.read()) > 0
    except OSError:
        return False


@needs_runc
@pytest.mark.skipif(not _userns_available(), reason="user namespaces are disabled")
@pytest.mark.parametrize("flags", [["--no-pivot"], []])
def test_nested_userns_cannot_mount_a_fresh_proc(oci, rootfs, tmp_path, flags):
    """With --no-pivot the host's /proc and /sys used to stay in the container's mount
    namespace under the moved root, fully visible to the kernel, which then lets a nested
    user namespace mount a new procfs with none of the masked paths (runc's no_pivot.bats,
    fixed in runc by unmounting them before the move). The nested namespace is made (the
    echo shows it), only the mount is refused; the same with pivot_root."""
    cfg = base_config(["unshare", "-mrpf", "sh", "-c",
                       "echo in-userns; mount -t proc none /proc && echo mounted"])
    for kind in ("bounding", "permitted", "effective"):
        cfg["process"]["capabilities"][kind].append("CAP_SETFCAP")  # to map root (-r)
    cid = oci.new_id()
    proc = oci("run", *flags, "--bundle", oci.bundle(cfg, rootfs), cid)
    assert proc.stdout.split() == ["in-userns"], proc.stdout + proc.stderr
    assert "permission denied" in proc.stderr, proc.stderr
    assert proc.returncode == 1
    witness = runc_run(cfg, rootfs, tmp_path, *flags)
    assert witness.returncode == 1 and "mounted" not in witness.stdout, witness.stdout


# --- bind-mounted host data survives a killed container ------------------------------------

def _host_data(tmp_path):
    data = tmp_path / "host-data"
    (data / "nested").mkdir(parents=True)
    (data / "precious").write_text("keep me\n")
    (data / "nested" / "deep").write_text("me too\n")
    return data


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def mounts_in(pid: int, text: str) -> list[str]:
    """Lines of a process's mountinfo (its mount namespace) mentioning `text`."""
    with open(f"/proc/{pid}/mountinfo") as f:
        return [line for line in f if text in line]


def _snapshot(path) -> dict[str, str]:
    found = {}
    for dirpath, _, files in os.walk(path):
        for name in files:
            p = os.path.join(dirpath, name)
            with open(p) as f:
                found[os.path.relpath(p, path)] = f.read()
    return found


def test_bind_source_survives_delete_force_of_a_killed_container(oci, rootfs, tmp_path):
    """A rw bind-mounted host directory keeps its files when the container's init is
    killed with SIGKILL from the host mid-run and the container is force-deleted (runc
    has had cleanup paths that removed what was mounted into the rootfs)."""
    data = _host_data(tmp_path)
    cfg = base_config(["sh", "-c", "echo from-container > /data/written; exec sleep 60"])
    cfg["mounts"].append({"destination": "/data", "type": "bind", "source": str(data),
                          "options": ["rbind", "rw"]})
    cid = oci.new_id()
    oci("run", "-d", "--bundle", oci.bundle(cfg, rootfs), cid, check=True)
    assert wait_for(lambda: (data / "written").exists())
    pid = oci.state(cid)["pid"]
    os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: oci.state(cid)["status"] == "stopped")
    proc = oci("delete", "--force", cid)
    assert proc.returncode == 0, proc.stderr
    assert _snapshot(data) == {"precious": "keep me\n", "nested/deep": "me too\n",
                               "written": "from-container\n"}
    assert mounts_mentioning(str(data)) == []
    assert processes_rooted_in(rootfs) == []
    assert not os.path.exists(os.path.join(oci.root, cid))


def test_bind_source_survives_delete_force_after_create_is_killed(oci, rootfs, tmp_path):
    """The same when the create process itself is killed with SIGKILL mid-create: the
    bind mount is in place (createRuntime hooks run after the mounts) and a hook is
    running. delete --force cleans up and the host directory is intact."""
    data = _host_data(tmp_path)
    hook_started = tmp_path / "hook-started"
    cfg = base_config(["sleep", "60"])
    cfg["mounts"].append({"destination": "/data", "type": "bind", "source": str(data),
                          "options": ["rbind", "rw"]})
    cfg["hooks"] = {"createRuntime": [{"path": "/bin/sh", "args": [
        "sh", "-c", f"echo $$ > {hook_started}; exec sleep 60"]}]}
    cid = oci.new_id()
    bundle = oci.bundle(cfg, rootfs)
    create = subprocess.Popen(OCI_CMD + ["--root", oci.root, "create", "--bundle", bundle, cid],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: hook_started.exists() and hook_started.read_text(), 30)
        hook_pid = int(hook_started.read_text())
        with open(os.path.join(oci.root, cid, "state.json")) as f:
            init_pid = json.load(f)["pid"]
        assert init_pid > 0  # the init is there, its mounts done
        assert mounts_in(init_pid, f" {rootfs}/data ")
    finally:
        create.kill()
        create.wait()
    proc = oci("delete", "--force", cid)
    assert proc.returncode == 0, proc.stderr
    assert _snapshot(data) == {"precious": "keep me\n", "nested/deep": "me too\n"}
    assert wait_for(lambda: not alive(init_pid) and not alive(hook_pid), 5)
    assert mounts_mentioning(str(data)) == []
    assert not os.path.exists(os.path.join(oci.root, cid))
    assert container_cgroup_dirs(f"/minirun/{cid}") == []
