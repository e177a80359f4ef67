"""Terminals (--console-socket and a foreground run -t) and cgroup limits seen from inside."""

import json
import os
import pty
import select
import socket
import time

import pytest

from ocitest import OCI_CMD, base_config, needs_root, oci, rootfs, wait_for  # noqa: F401
from runctest import needs_runc, run_in_pty, runc_run

pytestmark = [needs_root, pytest.mark.root]


def read_until(fd: int, needle: bytes, timeout: float = 20.0) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout
    while needle not in data and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            data += chunk
    return data


def test_console_socket_receives_pty_master(oci, rootfs, tmp_path):
    sock_path = str(tmp_path / "console.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(sock_path)
    server.listen(1)
    cfg = base_config(["sh", "-c", "tty; stty size; read line; echo got:$line; exit 4"])
    cfg["process"]["terminal"] = True
    cfg["process"]["consoleSize"] = {"height": 33, "width": 101}
    cid = oci.new_id()
    bundle = oci.bundle(cfg, rootfs)
    try:
        oci("create", "--bundle", bundle, "--console-socket", sock_path, cid, check=True)
        conn, _ = server.accept()
        _, fds, _, _ = socket.recv_fds(conn, 1024, 1)
        conn.close()
        assert len(fds) == 1
        master = fds[0]
        oci("start", cid, check=True)
        out = read_until(master, b"101")
        assert b"/dev/pts/0" in out
        assert b"33 101" in out
        os.write(master, b"hello\n")
        out = read_until(master, b"got:hello")
        assert b"got:hello" in out
        assert wait_for(lambda: oci.state(cid)["status"] == "stopped")
        os.close(master)
    finally:
        server.close()


def test_terminal_without_console_socket_refused_for_create(oci, rootfs):
    cfg = base_config(["true"])
    cfg["process"]["terminal"] = True
    cid = oci.new_id()
    proc = oci("create", "--bundle", oci.bundle(cfg, rootfs), cid)
    assert proc.returncode == 1
    assert "console-socket" in proc.stderr
    assert not os.path.exists(os.path.join(oci.root, cid))


def test_foreground_run_with_terminal(oci, rootfs):
    cfg = base_config(["sh", "-c", "tty; read x; echo echoed:$x; exit 6"])
    cfg["process"]["terminal"] = True
    cid = oci.new_id()
    bundle = oci.bundle(cfg, rootfs)
    pid, master = pty.fork()
    if pid == 0:
        os.execv(OCI_CMD[0], OCI_CMD + ["--root", oci.root, "run", "--bundle", bundle, cid])
    try:
        out = read_until(master, b"/dev/pts/")
        assert b"/dev/pts/0" in out
        os.write(master, b"abc\r")
        out = read_until(master, b"echoed:abc")
        assert b"echoed:abc" in out
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 6
    finally:
        os.close(master)
        try:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def cgroup_cfg(args, resources):
    cfg = base_config(args)
    cfg["linux"]["resources"].update(resources)
    return cfg


def v1_or_v2(v1: str, v2: str) -> str:
    """The file a container sees under /sys/fs/cgroup for this host's cgroup mode."""
    from minirun.cgroups import detect_mode
    return v2 if detect_mode() == "v2" else v1


def test_memory_limit_visible_inside(oci, rootfs):
    f = v1_or_v2("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory.max")
    proc = oci.run(cgroup_cfg(["cat", f], {"memory": {"limit": 64 * 1024 * 1024}}), rootfs)
    assert proc.stdout.strip() == str(64 * 1024 * 1024), proc.stderr


def test_memory_limit_oom_kills(oci, rootfs):
    # busybox's tail holding a big line in memory: killed by the OOM killer at 32 MiB
    cfg = cgroup_cfg(["sh", "-c", "head -c 200000000 /dev/zero | tail -c 100000000 >/dev/null;"
                      " echo status=$?"], {"memory": {"limit": 32 * 1024 * 1024}})
    proc = oci.run(cfg, rootfs)
    # The OOM killer SIGKILLs tail (the shell, pid 1, reports it) or, now and then, the
    # shell itself (the container ends with 137). Without the limit: status=0.
    assert proc.stdout.strip() == "status=137" or \
        (proc.returncode == 137 and proc.stdout == ""), (proc.returncode, proc.stdout + proc.stderr)


def test_pids_limit_stops_fork(oci, rootfs):
    cfg = cgroup_cfg(["sh", "-c", "for i in 1 2 3 4 5 6 7 8 9 10; do sleep 5 & done 2>&1; "
                      "echo done"], {"pids": {"limit": 5}})
    proc = oci.run(cfg, rootfs)
    assert "can't fork" in proc.stdout or "Resource temporarily unavailable" in proc.stdout, \
        proc.stdout + proc.stderr


def test_cpu_quota_and_shares(oci, rootfs):
    files = v1_or_v2("/sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu/cpu.cfs_period_us "
                     "/sys/fs/cgroup/cpu/cpu.shares", "/sys/fs/cgroup/cpu.max "
                     "/sys/fs/cgroup/cpu.weight")
    proc = oci.run(cgroup_cfg(["sh", "-c", f"cat {files}"],
                              {"cpu": {"quota": 50000, "period": 100000, "shares": 512}}), rootfs)
    assert proc.returncode == 0, proc.stderr
    if "cpu.max" in files:
        assert proc.stdout.split() == ["50000", "100000", str(1 + ((512 - 2) * 9999) // 262142)]
    else:
        assert proc.stdout.split() == ["50000", "100000", "512"]


def test_cgroup_lands_under_minirun_parent_and_is_removed(oci, rootfs):
    cid = oci.new_id()
    oci("run", "-d", "--bundle", oci.bundle(base_config(["sleep", "60"]), rootfs), cid,
        check=True)
    pid = oci.state(cid)["pid"]
    with open(f"/proc/{pid}/cgroup") as f:
        lines = f.read().splitlines()
    paths = {line.split(":", 2)[2] for line in lines if line.split(":")[1] != ""}
    assert paths == {f"/minirun/{cid}"}, lines
    oci("delete", "--force", cid, check=True)
    from ocitest import container_cgroup_dirs
    assert container_cgroup_dirs(f"/minirun/{cid}") == []


def test_custom_absolute_cgroups_path(oci, rootfs):
    cid = oci.new_id()
    cfg = base_config(["cat", "/proc/self/cgroup"])
    cfg["linux"]["cgroupsPath"] = f"/minirun-custom-test/{cid}"
    proc = oci.run(cfg, rootfs)
    try:
        assert f"/minirun-custom-test/{cid}" in proc.stdout
    finally:
        from ocitest import container_cgroup_dirs
        left = container_cgroup_dirs(f"/minirun-custom-test/{cid}")
        for parent in container_cgroup_dirs("/minirun-custom-test"):
            try:
                os.rmdir(parent)
            except OSError:
                pass
    assert left == []


def test_relative_cgroups_path_goes_under_minirun(oci, rootfs):
    cid = oci.new_id()
    cfg = base_config(["cat", "/proc/self/cgroup"])
    cfg["linux"]["cgroupsPath"] = f"rel/{cid}"
    proc = oci.run(cfg, rootfs)
    paths = {line.split(":", 2)[2] for line in proc.stdout.splitlines()
             if line.split(":")[1] != ""}
    assert paths == {f"/minirun/rel/{cid}"}
    from ocitest import container_cgroup_dirs
    for d in container_cgroup_dirs("/minirun/rel"):
        os.rmdir(d)


def test_pause_and_resume(oci, rootfs):
    cid = oci.new_id()
    oci("run", "-d", "--bundle", oci.bundle(base_config(["sleep", "60"]), rootfs), cid,
        check=True)
    oci("pause", cid, check=True)
    assert oci.state(cid)["status"] == "paused"
    oci("resume", cid, check=True)
    assert oci.state(cid)["status"] == "running"
    oci("pause", cid, check=True)
    oci("delete", "--force", cid, check=True)
    assert json.loads(oci("list", "--format", "json").stdout) in ([], None)



def run_on_a_tty(oci, cfg: dict, rootfs: str) -> tuple[str, int]:
    """`minirun-oci run` in the foreground on a pty of its own, as a user at a terminal:
    (what the pty showed, exit code)."""
    cid = oci.new_id()
    out, rc = run_in_pty(OCI_CMD + ["--root", oci.root, "run", "--bundle",
                                    oci.bundle(cfg, rootfs), cid])
    return out.decode(errors="replace"), rc


def runc_on_a_tty(cfg: dict, rootfs: str, tmp_path) -> tuple[str, int]:
    proc = runc_run(cfg, rootfs, tmp_path, tty=True)
    return proc.stdout, proc.returncode


@needs_runc
def test_terminal_with_read_only_dev(oci, rootfs, tmp_path):
    """As runc's dev.bats: /dev mounted "ro" with a terminal. The console (the pty bound
    onto /dev/console) is set up before /dev turns read-only; then /dev is read-only."""
    cfg = base_config(["sh", "-c", ("tty; stat -c %t,%T /dev/console; touch /dev/foo-bar; "
                                    "echo rc=$?")])
    cfg["process"]["terminal"] = True
    for m in cfg["mounts"]:
        if m["destination"] == "/dev":
            m["options"].append("ro")
    for out, rc in (run_on_a_tty(oci, cfg, rootfs), runc_on_a_tty(cfg, rootfs, tmp_path)):
        assert rc == 0, out
        lines = out.replace("\r", "").splitlines()
        assert lines[0] == "/dev/pts/0", out
        assert lines[1] == "88,0", out  # /dev/console is the pty: 136,0 (stat prints hex)
        assert "Read-only file system" in out and lines[-1] == "rc=1", out


@needs_runc
def test_terminal_belongs_to_the_process_user(oci, rootfs, tmp_path):
    """With a terminal and process.user 1000:1000, the pty slave the process holds is its
    own (as runc's fixStdioPermissions does before switching user): uid 1000 from
    inside, and the process can reopen it."""
    cfg = base_config(["sh", "-c", ("id -u; stat -c %u $(tty); ls -ln /proc/self/fd/0; "
                                    "echo reopened > $(tty) && echo ok")])
    cfg["process"]["terminal"] = True
    cfg["process"]["user"] = {"uid": 1000, "gid": 1000}
    for out, rc in (run_on_a_tty(oci, cfg, rootfs), runc_on_a_tty(cfg, rootfs, tmp_path)):
        assert rc == 0, out
        lines = out.replace("\r", "").splitlines()
        assert lines[:2] == ["1000", "1000"], out
        assert "reopened" in out and lines[-1] == "ok", out


@needs_runc
def test_stdio_belongs_to_the_process_user_without_a_terminal(oci, rootfs, tmp_path):
    """Without a terminal the same holds for the stdio the caller passed (a file here, a
    pipe under runc): a process that runs as uid 1000 can reopen its own stdout."""
    # both through the reopened fd: appended, so a file's offset does not matter
    cfg = base_config(["sh", "-c", ("echo reopened >> /proc/self/fd/1 && "
                                    "echo ok >> /proc/self/fd/1")])
    cfg["process"]["user"] = {"uid": 1000, "gid": 1000}
    for proc in (oci.run(cfg, rootfs), runc_run(cfg, rootfs, tmp_path)):
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split() == ["reopened", "ok"], proc.stdout + proc.stderr
