"""exec: a new process in a created or running container's namespaces and cgroup."""

import json
import os
import socket
import time

import pytest

from ocitest import base_config, container_cgroup_dirs, needs_root, oci, rootfs, wait_for  # noqa: F401

pytestmark = [needs_root, pytest.mark.root]

NS = ["pid", "net", "mnt", "ipc", "uts", "cgroup", "user"]


@pytest.fixture
def running(oci, rootfs):
    cfg = base_config(["sleep", "300"])
    cfg["hostname"] = "exectest"
    cfg["linux"]["namespaces"].append({"type": "cgroup"})
    cid = oci.new_id()
    oci("run", "-d", "--bundle", oci.bundle(cfg, rootfs), cid, check=True)
    return cid


def test_exec_runs_inside_and_returns_status(oci, running):
    proc = oci("exec", running, "sh", "-c", "hostname; echo $$; exit 9")
    assert proc.returncode == 9, proc.stderr
    host, pid = proc.stdout.split()
    assert host == "exectest"
    assert int(pid) > 1  # in the container's pid namespace, not its init
    assert oci.state(running)["status"] == "running"


def test_exec_joins_every_namespace_and_the_cgroup(oci, running):
    init = oci.state(running)["pid"]
    script = "; ".join(f"readlink /proc/self/ns/{n}" for n in NS) + "; cat /proc/self/cgroup"
    proc = oci("exec", running, "sh", "-c", script)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    for n, line in zip(NS, lines):
        assert line == os.readlink(f"/proc/{init}/ns/{n}"), n
    # in the container's cgroup namespace its own cgroup is the root
    assert all(line.endswith(":/") for line in lines[len(NS):]), lines


def test_exec_env_user_cwd_caps(oci, running):
    proc = oci("exec", "--env", "FOO=bar", "-e", "X=1", "--user", "1000:1000", "--cwd", "/tmp",
               "--additional-gids", "5", running, "sh", "-c",
               "echo $FOO$X; id -u; id -g; id -G; pwd; grep CapEff /proc/self/status")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[:5] == ["bar1", "1000", "1000", "1000 5", "/tmp"]
    assert lines[5].split()[1] == "0000000000000000"  # a non-root user without ambient caps
    proc = oci("exec", "--cap", "CAP_SYS_ADMIN", running, "grep", "CapEff", "/proc/self/status")
    eff = int(proc.stdout.split()[1], 16)
    assert eff & (1 << 21), proc.stdout  # CAP_SYS_ADMIN added
    assert eff & (1 << 5)  # CAP_KILL kept from the config


def test_exec_no_new_privs(oci, running):
    proc = oci("exec", "--no-new-privs", running, "grep", "NoNewPrivs", "/proc/self/status")
    assert proc.stdout.split() == ["NoNewPrivs:", "1"]


def test_exec_process_json(oci, running, tmp_path):
    process = {"args": ["sh", "-c", "echo $ONLY; pwd"], "cwd": "/etc", "env": ["ONLY=this"],
               "user": {"uid": 0, "gid": 0}, "terminal": False}
    pfile = tmp_path / "process.json"
    pfile.write_text(json.dumps(process))
    proc = oci("exec", "--process", pfile, running)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["this", "/etc"]


def test_exec_detached_with_pid_file(oci, running, tmp_path):
    pidfile = tmp_path / "exec.pid"
    proc = oci("exec", "-d", "--pid-file", pidfile, running, "sleep", "200")
    assert proc.returncode == 0, proc.stderr
    pid = int(pidfile.read_text())
    assert open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")[0] == b"sleep"
    init = oci.state(running)["pid"]
    assert os.readlink(f"/proc/{pid}/ns/pid") == os.readlink(f"/proc/{init}/ns/pid")
    # delete --force takes the exec'd process with it
    oci("delete", "--force", running, check=True)
    assert wait_for(lambda: not os.path.exists(f"/proc/{pid}/cmdline") or
                    open(f"/proc/{pid}/cmdline", "rb").read() == b"")


def test_exec_console_socket(oci, running, tmp_path):
    sock_path = str(tmp_path / "c.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(sock_path)
    server.listen(1)
    try:
        proc = oci("exec", "-t", "-d", "--console-socket", sock_path, running, "sh", "-c",
                   "tty; sleep 1")
        assert proc.returncode == 0, proc.stderr
        conn, _ = server.accept()
        _, fds, _, _ = socket.recv_fds(conn, 1024, 1)
        conn.close()
        master = fds[0]
        data = b""
        deadline = time.monotonic() + 10
        while b"/dev/pts/" not in data and time.monotonic() < deadline:
            try:
                data += os.read(master, 1024)
            except OSError:
                break
        os.close(master)
        assert b"/dev/pts/0" in data
    finally:
        server.close()


def test_exec_tty_detached_without_socket_refused(oci, running):
    proc = oci("exec", "-t", "-d", running, "true")
    assert proc.returncode == 255
    assert "console-socket" in proc.stderr


def test_exec_into_created_container(oci, rootfs):
    cid = oci.new_id()
    oci("create", "--bundle", oci.bundle(base_config(["true"]), rootfs), cid, check=True)
    proc = oci("exec", cid, "echo", "before start")
    assert proc.stdout == "before start\n", proc.stderr
    assert oci.state(cid)["status"] == "created"


def test_exec_into_stopped_missing_or_paused(oci, rootfs, running):
    cid = oci.new_id()
    oci("run", "-d", "--bundle", oci.bundle(base_config(["true"]), rootfs), cid, check=True)
    assert wait_for(lambda: oci.state(cid)["status"] == "stopped")
    proc = oci("exec", cid, "true")
    assert proc.returncode == 255 and "stopped" in proc.stderr
    proc = oci("exec", "no-such-container", "true")
    assert proc.returncode == 255 and "does not exist" in proc.stderr
    oci("pause", running, check=True)
    proc = oci("exec", running, "true")
    assert proc.returncode == 255 and "paused" in proc.stderr
    oci("resume", running, check=True)


def test_exec_missing_program_or_bad_input(oci, running, tmp_path):
    proc = oci("exec", running, "no-such-program")
    assert proc.returncode == 255
    assert "executable file not found" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    proc = oci("exec", running)
    assert proc.returncode == 255 and "command" in proc.stderr
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    proc = oci("exec", "-p", bad, running)
    assert proc.returncode == 255 and "invalid JSON" in proc.stderr
    proc = oci("exec", "--cwd", "/proc/self/fd/3", running, "true")
    assert proc.returncode == 255 and "/proc/self/fd/3" in proc.stderr
    # the container is untouched
    assert oci.state(running)["status"] == "running"
    assert container_cgroup_dirs(f"/minirun/{running}")


def test_exec_preserve_fds(oci, running, tmp_path):
    f = open(tmp_path / "data", "w+")
    f.write("through fd 3\n")
    f.flush()
    f.seek(0)
    proc = oci("exec", "--preserve-fds", "1", running, "sh", "-c", "cat <&3",
               pass_fds=(3,), preexec_fn=lambda: os.dup2(f.fileno(), 3))
    f.close()
    assert proc.stdout == "through fd 3\n", proc.stderr


def _cgroup_procs(cid: str) -> set[int]:
    procs = set()
    for d in container_cgroup_dirs(f"/minirun/{cid}"):
        with open(os.path.join(d, "cgroup.procs")) as f:
            procs.update(int(p) for p in f.read().split())
    return procs


@pytest.mark.parametrize("where", ["missing-dir", "a-directory"])
def test_exec_unwritable_pid_file_fails_and_starts_nothing(oci, running, tmp_path, where):
    if where == "missing-dir":
        pidfile = "/non-existent/dir/x"
    else:  # only found out when the pid is written: the process is killed again
        pidfile = str(tmp_path / "taken")
        os.makedirs(os.path.join(pidfile, "sub"))
    before = _cgroup_procs(running)
    proc = oci("exec", "-d", "--pid-file", pidfile, running, "sleep", "123")
    assert proc.returncode == 255
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and pidfile in lines[0], proc.stderr
    assert wait_for(lambda: _cgroup_procs(running) == before), _cgroup_procs(running)
    assert oci.state(running)["status"] == "running"


def test_create_with_pid_file_in_missing_dir_leaves_nothing(oci, rootfs):
    cid = oci.new_id()
    proc = oci("create", "--pid-file", "/non-existent/dir/x", "--bundle",
               oci.bundle(base_config(["true"]), rootfs), cid)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "minirun-oci: pid file /non-existent/dir/x: directory /non-existent/dir does not exist"]
    assert not os.path.exists(os.path.join(oci.root, cid))
    assert container_cgroup_dirs(f"/minirun/{cid}") == []


@pytest.fixture
def private_home(tmp_path):
    """A host dir owned by uid 1000, mode 0700, to bind at /home/u."""
    home = tmp_path / "home-u"
    home.mkdir()
    os.chown(home, 1000, 1000)
    home.chmod(0o700)
    return {"destination": "/home/u", "type": "bind", "source": str(home),
            "options": ["rbind", "rw"]}


@pytest.mark.parametrize("uid", [0, 1000])
def test_exec_into_a_cwd_only_its_owner_may_enter(oci, rootfs, private_home, uid):
    """As runc: uid 0 (without CAP_DAC_OVERRIDE) and the owner both get in, since the
    cwd is entered before the user changes, and again as the user if root is refused."""
    cfg = base_config(["sleep", "300"])
    cfg["mounts"].append(private_home)
    cid = oci.new_id()
    oci("run", "-d", "--bundle", oci.bundle(cfg, rootfs), cid, check=True)
    proc = oci("exec", "--user", f"{uid}:{uid}", "--cwd", "/home/u", cid, "sh", "-c",
               "id -u; pwd; grep CapEff /proc/self/status")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[:2] == [str(uid), "/home/u"]
    assert not int(lines[2].split()[1], 16) & (1 << 1)  # no CAP_DAC_OVERRIDE in there


def test_exec_paused_needs_ignore_paused_and_runs_once_resumed(oci, running):
    import subprocess

    from ocitest import OCI_CMD
    oci("pause", running, check=True)
    try:
        proc = oci("exec", running, "true")
        assert proc.returncode == 255
        assert proc.stderr.strip().splitlines() == [
            "minirun-oci: cannot exec in a paused container (use --ignore-paused to override)"]
        # as runc: the process joins the frozen cgroup and goes on when it is thawed
        waiting = subprocess.Popen(
            OCI_CMD + ["--root", oci.root, "exec", "--ignore-paused", running, "echo", "ran"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1)
        assert waiting.poll() is None
    finally:
        oci("resume", running, check=True)
    out, err = waiting.communicate(timeout=30)
    assert (waiting.returncode, out) == (0, "ran\n"), err


def _cgroup_lines(text: str) -> dict[str, str]:
    """/proc/self/cgroup as {hierarchy name: path}."""
    return {line.split(":", 2)[1]: line.split(":", 2)[2] for line in text.splitlines()}


def test_exec_cgroup_into_sub_cgroups(oci, rootfs):
    """--cgroup SUB joins SUB below the container's cgroup in every hierarchy,
    --cgroup CTRL:SUB only in that controller's (runc 1.1's forms)."""
    cfg = base_config(["sleep", "300"])
    cid = oci.new_id()
    oci("run", "-d", "--bundle", oci.bundle(cfg, rootfs), cid, check=True)
    dirs = container_cgroup_dirs(f"/minirun/{cid}")
    for d in dirs:
        os.mkdir(os.path.join(d, "sub"))
        for name in ("cpuset.cpus", "cpuset.mems"):  # a task needs both to join
            if os.path.exists(os.path.join(d, name)):
                with open(os.path.join(d, name)) as src, \
                        open(os.path.join(d, "sub", name), "w") as dst:
                    dst.write(src.read())
    memory = [d for d in dirs if d.startswith("/sys/fs/cgroup/memory/")]
    assert memory, dirs
    os.mkdir(os.path.join(memory[0], "msub"))
    base = f"/minirun/{cid}"

    proc = oci("exec", "--cgroup", "sub", cid, "cat", "/proc/self/cgroup")
    assert proc.returncode == 0, proc.stderr
    lines = _cgroup_lines(proc.stdout)
    assert lines["memory"] == lines["freezer"] == base + "/sub", lines

    proc = oci("exec", "--cgroup", "memory:msub", "--cgroup", "pids,freezer:sub", cid,
               "cat", "/proc/self/cgroup")
    assert proc.returncode == 0, proc.stderr
    lines = _cgroup_lines(proc.stdout)
    assert lines["memory"] == base + "/msub", lines
    assert lines["pids"] == lines["freezer"] == base + "/sub"
    assert lines["devices"] == base

    before = _cgroup_procs(cid)
    for bad, says in ((["--cgroup", "nope:sub"], "unknown controller 'nope'"),
                      (["--cgroup", "missing"], "missing does not exist"),
                      (["--cgroup", "../escape"], "invalid --cgroup argument"),
                      (["--cgroup", "a", "--cgroup", "b"], "missing <controller>: prefix")):
        proc = oci("exec", *bad, cid, "sleep", "100")
        assert proc.returncode == 255, bad
        assert len(proc.stderr.strip().splitlines()) == 1 and says in proc.stderr, proc.stderr
    assert _cgroup_procs(cid) == before


def test_exec_cgroup_v2_on_the_host_unified_mount(oci, rootfs, monkeypatch):
    from minirun.cgroups import _fstype
    unified = "/sys/fs/cgroup/unified"
    if _fstype(unified) != "cgroup2":
        pytest.skip(f"no cgroup2 mount at {unified}")
    monkeypatch.setenv("MINIRUN_CGROUP_DRIVER", "v2")
    monkeypatch.setenv("MINIRUN_CGROUP_ROOT", unified)
    cfg = base_config(["sleep", "300"])
    cfg["linux"]["resources"] = {}  # that mount has no controllers
    cid = oci.new_id()
    oci("run", "-d", "--bundle", oci.bundle(cfg, rootfs), cid, check=True)
    os.mkdir(f"{unified}/minirun/{cid}/sub")
    proc = oci("exec", "--cgroup", "sub", cid, "cat", "/proc/self/cgroup")
    assert proc.returncode == 0, proc.stderr
    assert _cgroup_lines(proc.stdout)[""] == f"/minirun/{cid}/sub"
    proc = oci("exec", "--cgroup", "memory:sub", "--cgroup", "pids:other", cid, "true")
    assert proc.returncode == 255
    assert "one sub-cgroup" in proc.stderr
