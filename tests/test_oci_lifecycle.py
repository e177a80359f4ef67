"""create / start / state / list / kill / delete / run, driven through the real CLI."""

import json
import os
import signal

import pytest

from ocitest import base_config, needs_root, oci, rootfs, wait_for  # noqa: F401

pytestmark = [needs_root, pytest.mark.root]


def test_run_foreground_prints_and_returns_exit_status(oci, rootfs):
    proc = oci.run(base_config(["sh", "-c", "echo hello from inside; exit 7"]), rootfs)
    assert proc.stdout == "hello from inside\n"
    assert proc.returncode == 7
    # run removes the container when it is done
    assert oci("list", "-q").stdout == ""


def test_run_killed_by_signal_exits_128_plus_signal(oci, rootfs):
    # pid 1 cannot SIGKILL itself inside its namespace: kill it from outside
    import subprocess
    from ocitest import OCI_CMD
    cid = oci.new_id()
    bundle = oci.bundle(base_config(["sleep", "100"]), rootfs)
    proc = subprocess.Popen(OCI_CMD + ["--root", oci.root, "run", "--bundle", bundle, cid])
    try:
        assert wait_for(lambda: oci("state", cid).returncode == 0 and
                        oci.state(cid)["status"] == "running")
        oci("kill", cid, "KILL", check=True)
        assert proc.wait(timeout=30) == 128 + signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_foreground_run_forwards_sigterm(oci, rootfs):
    import subprocess
    from ocitest import OCI_CMD
    cid = oci.new_id()
    bundle = oci.bundle(base_config(["sh", "-c", "trap 'exit 5' TERM; while :; do sleep 0.1; done"]),
                        rootfs)
    proc = subprocess.Popen(OCI_CMD + ["--root", oci.root, "run", "--bundle", bundle, cid])
    try:
        assert wait_for(lambda: oci("state", cid).returncode == 0 and
                        oci.state(cid)["status"] == "running")
        import time
        time.sleep(0.3)  # let sh install its trap
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 5
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_create_blocks_before_exec_until_start(oci, rootfs, tmp_path):
    cid = oci.new_id()
    bundle = oci.bundle(base_config(["sh", "-c", "echo started > /dev/shm/x; sleep 60"]), rootfs)
    pidfile = tmp_path / "pid"
    oci("create", "--bundle", bundle, "--pid-file", pidfile, cid, check=True)
    state = oci.state(cid)
    pid = int(pidfile.read_text())
    assert state["status"] == "created"
    assert state["pid"] == pid
    assert state["id"] == cid
    assert state["bundle"] == bundle
    assert state["ociVersion"]
    # the init is ours, not yet the user's program: it has not exec'd sh
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        assert b"sleep" not in f.read()
    oci("start", cid, check=True)
    assert oci.state(cid)["status"] == "running"
    assert wait_for(lambda: b"sleep" in open(f"/proc/{pid}/cmdline", "rb").read())
    # pid 1 in its own pid namespace
    with open(f"/proc/{pid}/status") as f:
        nspid = [line for line in f if line.startswith("NSpid:")][0].split()
    assert nspid[-1] == "1"
    assert os.readlink(f"/proc/{pid}/ns/pid") != os.readlink("/proc/self/ns/pid")
    oci("kill", cid, "KILL", check=True)
    assert wait_for(lambda: oci.state(cid)["status"] == "stopped")
    oci("delete", cid, check=True)
    assert oci("state", cid).returncode != 0


def test_start_twice_is_refused(oci, rootfs):
    cid = oci.new_id()
    bundle = oci.bundle(base_config(["sleep", "60"]), rootfs)
    oci("create", "--bundle", bundle, cid, check=True)
    oci("start", cid, check=True)
    proc = oci("start", cid)
    assert proc.returncode == 1
    assert "running" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_delete_running_needs_force(oci, rootfs):
    cid = oci.new_id()
    bundle = oci.bundle(base_config(["sleep", "60"]), rootfs)
    oci("run", "-d", "--bundle", bundle, cid, check=True)
    pid = oci.state(cid)["pid"]
    proc = oci("delete", cid)
    assert proc.returncode == 1
    assert "not stopped" in proc.stderr
    assert oci.state(cid)["status"] == "running"
    oci("delete", "--force", cid, check=True)
    assert not os.path.exists(f"/proc/{pid}/cmdline") or \
        open(f"/proc/{pid}/cmdline", "rb").read() == b""
    assert oci("list", "-q").stdout == ""


def test_delete_created_container_without_force(oci, rootfs):
    cid = oci.new_id()
    bundle = oci.bundle(base_config(["sleep", "60"]), rootfs)
    oci("create", "--bundle", bundle, cid, check=True)
    oci("delete", cid, check=True)
    assert oci("list", "-q").stdout == ""


def test_kill_signal_by_name_and_number(oci, rootfs):
    cfg = base_config(["sh", "-c", "trap 'exit 42' USR1; while true; do sleep 0.1; done"])
    for sig in ("USR1", "SIGUSR1", str(int(signal.SIGUSR1))):
        cid = oci.new_id()
        bundle = oci.bundle(cfg, rootfs)
        oci("run", "-d", "--bundle", bundle, cid, check=True)
        oci("kill", cid, sig, check=True)
        assert wait_for(lambda: oci.state(cid)["status"] == "stopped"), sig
        oci("delete", cid, check=True)


def test_kill_unknown_signal(oci, rootfs):
    cid = oci.new_id()
    bundle = oci.bundle(base_config(["sleep", "60"]), rootfs)
    oci("run", "-d", "--bundle", bundle, cid, check=True)
    proc = oci("kill", cid, "SIGNOPE")
    assert proc.returncode == 1
    assert "unknown signal" in proc.stderr
    assert oci.state(cid)["status"] == "running"


def test_kill_all_reaches_every_process(oci, rootfs):
    cid = oci.new_id()
    bundle = oci.bundle(base_config(["sh", "-c", "sleep 100 & sleep 100 & wait"]), rootfs)
    oci("run", "-d", "--bundle", bundle, cid, check=True)
    oci("kill", "--all", cid, "KILL", check=True)
    assert wait_for(lambda: oci.state(cid)["status"] == "stopped")


def test_list_formats(oci, rootfs):
    ids = []
    for _ in range(2):
        cid = oci.new_id()
        ids.append(cid)
        oci("create", "--bundle", oci.bundle(base_config(["sleep", "60"]), rootfs), cid,
            check=True)
    assert sorted(oci("list", "-q").stdout.split()) == sorted(ids)
    listed = json.loads(oci("list", "--format", "json").stdout)
    assert {c["id"]: c["status"] for c in listed} == {i: "created" for i in ids}
    table = oci("list").stdout.splitlines()
    assert table[0].split() == ["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"]
    assert len(table) == 3


def test_detached_run_and_exit_code_visible_as_stopped(oci, rootfs):
    cid = oci.new_id()
    bundle = oci.bundle(base_config(["sh", "-c", "exit 3"]), rootfs)
    oci("run", "-d", "--bundle", bundle, cid, check=True)
    assert wait_for(lambda: oci.state(cid)["status"] == "stopped")
    assert oci.state(cid)["pid"] == 0


def test_annotations_in_state(oci, rootfs):
    cfg = base_config(["sleep", "60"])
    cfg["annotations"] = {"org.example.key": "value"}
    cid = oci.new_id()
    oci("create", "--bundle", oci.bundle(cfg, rootfs), cid, check=True)
    assert oci.state(cid)["annotations"] == {"org.example.key": "value"}


def test_preserve_fds_and_no_other_fd_leaks(oci, rootfs, tmp_path):
    """--preserve-fds passes fd 3; nothing else of the host reaches the container
    (CVE-2024-21626)."""
    extra = open(tmp_path / "passed.txt", "w+")
    extra.write("passed through\n")
    extra.flush()
    extra.seek(0)
    leak = open(tmp_path / "not-passed.txt", "w")  # fd 4 in the child: must be closed
    r, w = os.pipe()
    cfg = base_config(["sh", "-c", "cat <&3; ls /proc/self/fd"])
    cid = oci.new_id()
    bundle = oci.bundle(cfg, rootfs)
    proc = oci("run", "--preserve-fds", "1", "--bundle", bundle, cid, pass_fds=(3, 4),
               preexec_fn=lambda: (os.dup2(extra.fileno(), 3), os.dup2(leak.fileno(), 4)))
    os.close(r)
    os.close(w)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    assert out[0] == "passed through"
    assert sorted(int(x) for x in out[1:]) == [0, 1, 2, 3, 4]  # 4: the ls's own dir fd
    extra.close()
    leak.close()


def test_cwd_env_user_hostname(oci, rootfs):
    cfg = base_config(["sh", "-c", "pwd; echo $FOO; id -u; id -g; id -G; hostname; umask"])
    cfg["process"]["cwd"] = "/tmp"
    cfg["process"]["env"].append("FOO=bar")
    cfg["process"]["user"] = {"uid": 1000, "gid": 1000, "additionalGids": [5, 65534],
                              "umask": 0o027}
    cfg["hostname"] = "box"
    proc = oci.run(cfg, rootfs)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:7] == ["/tmp", "bar", "1000", "1000", "1000 5 65534", "box",
                                           "0027"]


def test_missing_executable_fails_at_create(oci, rootfs):
    cid = oci.new_id()
    bundle = oci.bundle(base_config(["no-such-binary"]), rootfs)
    proc = oci("create", "--bundle", bundle, cid)
    assert proc.returncode == 1
    assert 'executable file not found in $PATH' in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not os.path.exists(os.path.join(oci.root, cid))


def test_log_file_json_records_error(oci, rootfs, tmp_path):
    log = tmp_path / "log.json"
    proc = oci("--log", log, "--log-format", "json", "state", "nope")
    assert proc.returncode == 1
    entry = json.loads(log.read_text().splitlines()[-1])
    assert entry["level"] == "error"
    assert "does not exist" in entry["msg"]


@pytest.mark.parametrize("flags,expect_own", [([], True), (["--no-new-keyring"], False)])
def test_session_keyring(oci, rootfs, flags, expect_own):
    """runc's default: the container gets its own session keyring, _ses.<id>."""
    cid = oci.new_id()
    cfg = base_config(["sh", "-c", f"grep -c '_ses.{cid}' /proc/keys || true"])
    cfg["linux"]["maskedPaths"].remove("/proc/keys")
    proc = oci("run", *flags, "--bundle", oci.bundle(cfg, rootfs), cid)
    assert proc.returncode == 0, proc.stderr
    assert (proc.stdout.strip() == "1") == expect_own, proc.stdout


@pytest.mark.parametrize("domain,machine", [("LINUX32", "i686"), ("LINUX", os.uname().machine)])
def test_personality(oci, rootfs, domain, machine):
    cfg = base_config(["uname", "-m"])
    cfg["linux"]["personality"] = {"domain": domain}
    proc = oci.run(cfg, rootfs)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == machine


# --- a cgroup that exists before create (runc 1.1's checks) -------------------------------

UNIFIED = "/sys/fs/cgroup/unified"


def _mounted_as(path: str, fstype: str) -> bool:
    from minirun.cgroups import _fstype
    return _fstype(path) == fstype


@pytest.fixture(params=["v1-freezer", "v2-unified"])
def foreign_cgroup(request, monkeypatch):
    """A cgroup made before minirun's create, as someone else would: (cgroup path, its
    host dir, how to freeze it). v2 runs the v2 driver on the host's unified mount."""
    import secrets

    from cgrouptest import wipe
    path = f"/minirun/pre-{secrets.token_hex(5)}"
    if request.param == "v1-freezer":
        mount = "/sys/fs/cgroup/freezer"
        if not _mounted_as(mount, "cgroup"):
            pytest.skip("no cgroup v1 freezer hierarchy on this host")
        freeze = ("freezer.state", "FROZEN")
    else:
        mount = UNIFIED
        if not _mounted_as(mount, "cgroup2"):
            pytest.skip(f"no cgroup2 mount at {mount}")
        monkeypatch.setenv("MINIRUN_CGROUP_DRIVER", "v2")
        monkeypatch.setenv("MINIRUN_CGROUP_ROOT", mount)
        freeze = ("cgroup.freeze", "1")
    directory = mount + path
    os.makedirs(directory)
    try:
        yield path, directory, freeze
    finally:
        wipe([directory])
        # and whatever minirun made in the other hierarchies (a failed test's leftovers)
        wipe([d for d in (os.path.join(os.path.dirname(mount), h) + path
                          for h in os.listdir(os.path.dirname(mount))) if os.path.isdir(d)])


def _is_frozen(directory: str) -> bool:
    state = os.path.join(directory, "freezer.state")
    if os.path.exists(state):
        return _read(state).strip() == "FROZEN"
    return "frozen 1" in _read(os.path.join(directory, "cgroup.events"))


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


@pytest.mark.parametrize("verb", ["create", "run"])
def test_frozen_cgroup_is_refused_at_once(oci, rootfs, foreign_cgroup, verb):
    from ocitest import container_cgroup_dirs
    path, directory, (name, value) = foreign_cgroup
    with open(os.path.join(directory, name), "w") as f:
        f.write(value)
    assert wait_for(lambda: _is_frozen(directory))
    cfg = base_config(["true"])
    cfg["linux"]["cgroupsPath"] = path
    cid = oci.new_id()
    flags = ["-d"] if verb == "run" else []
    proc = oci(verb, *flags, "--bundle", oci.bundle(cfg, rootfs), cid, timeout=20)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "minirun-oci: container's cgroup unexpectedly frozen"]
    assert not os.path.exists(os.path.join(oci.root, cid))
    # the cgroup is someone else's: still there, still frozen, nothing made next to it
    assert _is_frozen(directory)
    assert container_cgroup_dirs(path) == [directory]


def test_non_empty_cgroup_warns_and_is_left_as_found(oci, rootfs, foreign_cgroup):
    import subprocess

    from ocitest import container_cgroup_dirs
    path, directory, _ = foreign_cgroup
    other = subprocess.Popen(["sleep", "300"])
    try:
        with open(os.path.join(directory, "cgroup.procs"), "w") as f:
            f.write(str(other.pid))
        cfg = base_config(["sleep", "300"])
        cfg["linux"]["cgroupsPath"] = path
        cid = oci.new_id()
        proc = oci("run", "-d", "--bundle", oci.bundle(cfg, rootfs), cid)
        assert proc.returncode == 0, proc.stderr
        assert "minirun: warning: container's cgroup is not empty: 1 process(es) found" \
            in proc.stderr.splitlines(), proc.stderr
        init = oci.state(cid)["pid"]
        procs = _read(os.path.join(directory, "cgroup.procs")).split()
        assert {str(init), str(other.pid)} <= set(procs)
        oci("delete", "--force", cid, check=True)
        # as runc: the container's processes go, the other one and its cgroup stay
        assert other.poll() is None
        assert _read(os.path.join(directory, "cgroup.procs")).split() == [str(other.pid)]
        assert container_cgroup_dirs(path) == [directory]
    finally:
        other.kill()
        other.wait()


@pytest.mark.parametrize("uid", [0, 1000])
def test_init_cwd_only_its_owner_may_enter(oci, rootfs, tmp_path, uid):
    home = tmp_path / "home-u"
    home.mkdir()
    os.chown(home, 1000, 1000)
    home.chmod(0o700)
    cfg = base_config(["sh", "-c", "id -u; pwd"])
    cfg["mounts"].append({"destination": "/home/u", "type": "bind", "source": str(home),
                          "options": ["rbind", "rw"]})
    cfg["process"]["cwd"] = "/home/u"
    cfg["process"]["user"] = {"uid": uid, "gid": uid}
    proc = oci.run(cfg, rootfs)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [str(uid), "/home/u"]


def test_empty_existing_cgroup_is_the_containers(oci, rootfs, foreign_cgroup):
    """As runc: no warning, and delete removes it with the container."""
    from ocitest import container_cgroup_dirs
    path, _, _ = foreign_cgroup
    cfg = base_config(["sleep", "300"])
    cfg["linux"]["cgroupsPath"] = path
    cid = oci.new_id()
    proc = oci("run", "-d", "--bundle", oci.bundle(cfg, rootfs), cid)
    assert proc.returncode == 0, proc.stderr
    assert "not empty" not in proc.stderr
    oci("delete", "--force", cid, check=True)
    assert container_cgroup_dirs(path) == []


def test_cgroup_under_a_frozen_parent_is_refused(oci, rootfs, foreign_cgroup):
    from ocitest import container_cgroup_dirs
    path, directory, (name, value) = foreign_cgroup
    # someone else's frozen group (levels under /minirun that are left empty are pruned
    # with the container's: this one has a cgroup of its own in it)
    os.mkdir(os.path.join(directory, "theirs"))
    with open(os.path.join(directory, name), "w") as f:
        f.write(value)
    assert wait_for(lambda: _is_frozen(directory))
    cfg = base_config(["true"])
    cfg["linux"]["cgroupsPath"] = path + "/ctr"
    cid = oci.new_id()
    proc = oci("create", "--bundle", oci.bundle(cfg, rootfs), cid, timeout=20)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == \
        "minirun-oci: container's cgroup unexpectedly frozen"
    assert not os.path.exists(os.path.join(oci.root, cid))
    assert container_cgroup_dirs(path + "/ctr") == []  # what create made is gone
    assert _is_frozen(directory) and os.path.isdir(os.path.join(directory, "theirs"))
