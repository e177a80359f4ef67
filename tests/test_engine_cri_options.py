"""The engine's container options for the CRI (issue 11): busybox containers started
through Engine.run_detached and the daemon, each option checked from inside the
container (or, for cgroup files and mounts, in the kernel's own files), and bad values
refused with nothing left behind."""

import os
import re
import subprocess
import time

import pytest
from enginetest import engine  # noqa: F401
from ocitest import needs_root

from minirun.engine import Engine, RunOptions
from minirun.errors import ContainerStateError, InvalidArgument
from minirun.logs import follow_log

pytestmark = [needs_root, pytest.mark.root]

CRI_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z (stdout|stderr) [PF] ")


@pytest.fixture(scope="module")
def eng(engine):  # noqa: F811
    return Engine(engine.root, engine.run_root)


def start(eng, *cmd, **kw) -> str:
    return eng.run_detached("busybox:latest",
                            RunOptions(command=list(cmd), detach=True, **kw))


def output(eng, cid: str) -> str:
    return "".join(text for _, _, text in follow_log(eng, cid))


def wait_handled(eng, cid: str, timeout: float = 60) -> dict:
    """Until the daemon has recorded the container's exit (its stopped event: its
    output is all in the log then); its record."""
    assert eng.wait_exit(cid, timeout), "the container did not exit"
    wait_for(lambda: any(e["type"] == "stopped" and e["container"] == cid
                         for e in eng.events_after(0, limit=1 << 30)),
             what="the daemon's record of the exit")
    return eng.get(cid)


def run(eng, *cmd, **kw) -> tuple[dict, str]:
    """Run to its end: (its record, its output)."""
    cid = start(eng, *cmd, **kw)
    try:
        return wait_handled(eng, cid), output(eng, cid)
    finally:
        eng.remove(cid, force=True)


def sh(eng, script: str, **kw) -> str:
    rec, out = run(eng, "sh", "-c", script, **kw)
    assert rec["exit_code"] == 0, out
    return out


def wait_for(predicate, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


# --- host objects the tests make, always removed ------------------------------------------

@pytest.fixture
def netns():
    name = f"minirun-test-{os.urandom(4).hex()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    yield f"/run/netns/{name}"
    subprocess.run(["ip", "netns", "del", name], check=False)


def own_mount(path, propagation: str):
    """`path` made its own mount, with `propagation` (private: nsfs files can be bound
    there; shared: mounts made below it propagate); unmounted by the caller."""
    path.mkdir()
    subprocess.run(["mount", "--bind", str(path), str(path)], check=True)
    subprocess.run(["mount", f"--make-{propagation}", str(path)], check=True)
    return path


@pytest.fixture
def private_dir(tmp_path):
    yield own_mount(tmp_path / "priv", "private")
    subprocess.run(["umount", "-R", "-l", str(tmp_path / "priv")], check=False)


@pytest.fixture
def shared_dir(tmp_path):
    yield own_mount(tmp_path / "shared", "shared")
    subprocess.run(["umount", "-R", "-l", str(tmp_path / "shared")], check=False)


@pytest.fixture
def cgroup_parent():
    parent = f"/minirun/test-{os.urandom(4).hex()}"
    yield parent
    for path in cgroup_dirs(parent):
        for sub in sorted((os.path.join(d, n) for d, dirs, _ in os.walk(path)
                           for n in dirs), reverse=True):
            os.rmdir(sub)
        os.rmdir(path)


def cgroup_dirs(path: str) -> list[str]:
    """The directories of cgroup `path` in this host's hierarchies (v1 and v2)."""
    out = []
    for base in ["/sys/fs/cgroup"] + [os.path.join("/sys/fs/cgroup", h)
                                      for h in ("memory", "pids", "cpu", "unified")]:
        d = base + path
        if os.path.isdir(d):
            out.append(d)
    return out


# --- namespaces --------------------------------------------------------------------------

def test_joins_a_network_namespace_by_path(eng, netns, tmp_path):
    pod = tmp_path / "pod"
    pod.mkdir()
    (pod / "hosts").write_text("127.0.0.1\tlocalhost\n10.1.2.3\tpodpeer\n")
    (pod / "hostname").write_text("podhost\n")
    (pod / "resolv.conf").write_text("nameserver 10.9.9.9\n")
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 10.8.8.8\n")
    out = sh(eng, "readlink /proc/self/ns/net; ls /sys/class/net; cat /etc/hosts "
                  "/etc/hostname /etc/resolv.conf",
             network=f"ns:{netns}", pod_files=str(pod),
             mounts=[{"destination": "/etc/resolv.conf", "type": "bind",
                      "source": str(resolv), "options": ["rbind", "ro"]}])
    lines = out.split()
    assert lines[0] == f"net:[{os.stat(netns).st_ino}]"
    assert lines[1] == "lo"  # joined as made: nothing wired by the engine
    assert "10.1.2.3\tpodpeer" in out and "podhost" in out
    # a mount for /etc/resolv.conf replaces the pod's file as well as the engine's
    assert "nameserver 10.8.8.8" in out and "10.9.9.9" not in out


def test_joins_ipc_and_uts_namespaces_by_path(eng, private_dir):
    ipc, uts = private_dir / "ipc", private_dir / "uts"
    ipc.touch()
    uts.touch()
    subprocess.run(["unshare", f"--ipc={ipc}", f"--uts={uts}", "hostname",
                    "minirun-utstest"], check=True)
    out = sh(eng, "readlink /proc/self/ns/ipc; readlink /proc/self/ns/uts; hostname",
             ipc=f"ns:{ipc}", uts=f"ns:{uts}")
    assert out.split() == [f"ipc:[{os.stat(ipc).st_ino}]", f"uts:[{os.stat(uts).st_ino}]",
                           "minirun-utstest"]
    # and a new one by default
    out = sh(eng, "readlink /proc/self/ns/ipc")
    assert out.strip() not in (f"ipc:[{os.stat(ipc).st_ino}]", os.readlink("/proc/self/ns/ipc"))


def test_host_pid_namespace(eng):
    out = sh(eng, "readlink /proc/self/ns/pid; cat /proc/1/comm", pid="host")
    assert out.split()[0] == os.readlink("/proc/self/ns/pid")
    with open("/proc/1/comm") as f:
        assert out.split()[1] == f.read().strip()
    assert sh(eng, "readlink /proc/self/ns/pid").strip() != os.readlink("/proc/self/ns/pid")


def test_host_ipc_and_uts(eng):
    marker = f"/dev/shm/minirun-test-{os.urandom(4).hex()}"
    open(marker, "w").close()
    try:
        out = sh(eng, f"readlink /proc/self/ns/ipc; readlink /proc/self/ns/uts; hostname; "
                      f"ls {marker}", ipc="host", uts="host")
    finally:
        os.unlink(marker)
    assert out.split() == [os.readlink("/proc/self/ns/ipc"), os.readlink("/proc/self/ns/uts"),
                           os.uname().nodename, marker]


def test_joins_another_containers_pid_namespace(eng):
    holder = start(eng, "sleep", "60")
    try:
        pid = eng.get(holder)["pid"]
        out = sh(eng, "readlink /proc/self/ns/pid", pid=f"container:{holder}")
        assert out.strip() == os.readlink(f"/proc/{pid}/ns/pid")
    finally:
        eng.remove(holder, force=True)


def test_sysctl_in_own_ipc_namespace(eng):
    out = sh(eng, "cat /proc/sys/kernel/shmmax", sysctls={"kernel.shmmax": "12345678"})
    assert out.strip() == "12345678"
    with open("/proc/sys/kernel/shmmax") as f:
        assert f.read().strip() != "12345678"


# --- mounts and devices --------------------------------------------------------------------

def test_read_only_bind_mount(eng, tmp_path):
    src = tmp_path / "data"
    src.mkdir()
    (src / "f").write_text("from the host\n")
    out = sh(eng, "cat /data/f; touch /data/new 2>&1; echo rc=$?",
             mounts=[{"destination": "/data", "type": "bind", "source": str(src),
                      "options": ["rbind", "ro"]}])
    assert "from the host" in out and "Read-only file system" in out and "rc=1" in out
    assert not (src / "new").exists()


def propagation_seen(eng, shared_dir, tmp_path, propagation: str) -> str:
    """Start a container with `shared_dir` at /mnt (with `propagation`), mount a tmpfs
    below it on the host, then let the container look."""
    flag = tmp_path / f"flag-{propagation}"
    flag.mkdir()
    script = ("while [ ! -e /flag/go ]; do sleep 0.05; done; "
              "if [ -e /mnt/sub/marker ]; then echo seen; else echo unseen; fi")
    cid = start(eng, "sh", "-c", script,
                mounts=[{"destination": "/mnt", "type": "bind", "source": str(shared_dir),
                         "options": ["rbind", propagation]},
                        {"destination": "/flag", "type": "bind", "source": str(flag),
                         "options": ["rbind"]}])
    sub = shared_dir / "sub"
    sub.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(sub)], check=True)
    try:
        (sub / "marker").touch()
        (flag / "go").touch()
        wait_handled(eng, cid)
        return output(eng, cid).strip()
    finally:
        subprocess.run(["umount", "-l", str(sub)], check=False)
        eng.remove(cid, force=True)


def test_mount_propagation_from_the_host(eng, shared_dir, tmp_path):
    assert propagation_seen(eng, shared_dir, tmp_path, "rslave") == "seen"
    assert propagation_seen(eng, shared_dir, tmp_path, "rshared") == "seen"
    assert propagation_seen(eng, shared_dir, tmp_path, "rprivate") == "unseen"


def test_rshared_mount_reaches_the_host(eng, shared_dir):
    (shared_dir / "in").mkdir()
    cid = start(eng, "sh", "-c", "mount -t tmpfs tmpfs /mnt/in && touch /mnt/in/made && "
                                 "sleep 30",
                cap_add=["SYS_ADMIN"], security_opt=["seccomp=unconfined"],
                mounts=[{"destination": "/mnt", "type": "bind", "source": str(shared_dir),
                         "options": ["rbind", "rshared"]}])
    try:
        wait_for(lambda: (shared_dir / "in" / "made").exists(), what="the container's mount")
    finally:
        eng.remove(cid, force=True)
        subprocess.run(["umount", "-l", str(shared_dir / "in")], check=False)


def test_propagation_needs_a_shared_host_mount(eng, private_dir):
    for propagation in ("rslave", "rshared"):
        with pytest.raises(InvalidArgument) as e:
            start(eng, "true", mounts=[{"destination": "/mnt", "type": "bind",
                                        "source": str(private_dir),
                                        "options": ["rbind", propagation]}])
        assert f"{private_dir} is" in str(e.value) and "--make-rshared" in str(e.value)


def test_device_node(eng):
    st = os.stat("/dev/loop-control")
    out = sh(eng, "stat -c '%F %t %T' /dev/xloop; exec 3</dev/xloop && echo opened",
             devices=[{"host": "/dev/loop-control", "container": "/dev/xloop",
                       "permissions": "rwm"}])
    assert out.split("\n")[0] == \
        f"character special file {os.major(st.st_rdev):x} {os.minor(st.st_rdev):x}"
    assert "opened" in out
    # without the device's rule the cgroup refuses the same node
    out = sh(eng, f"mknod /tmp/x c {os.major(st.st_rdev)} {os.minor(st.st_rdev)} 2>&1; "
                  "(exec 3</tmp/x) 2>&1 || echo refused")
    assert "refused" in out


def test_device_directory(eng, private_dir):
    st = os.stat("/dev/loop-control")
    (private_dir / "sub").mkdir()
    subprocess.run(["mknod", str(private_dir / "sub" / "ctl"), "c", str(os.major(st.st_rdev)),
                    str(os.minor(st.st_rdev))], check=True)
    (private_dir / "not-a-device").touch()
    out = sh(eng, "stat -c '%t %T' /dev/mine/sub/ctl; ls /dev/mine",
             devices=[{"host": str(private_dir), "container": "/dev/mine",
                       "permissions": "rw"}])
    assert out.split() == [f"{os.major(st.st_rdev):x}", f"{os.minor(st.st_rdev):x}", "sub"]


def test_masked_and_readonly_paths_cleared(eng):
    script = ("grep -c ' /proc/keys ' /proc/self/mountinfo; "
              "grep -c ' /proc/sys ' /proc/self/mountinfo; true")
    assert sh(eng, script).split() == ["1", "1"]
    assert sh(eng, script, masked_paths=[], readonly_paths=[]).split() == ["0", "0"]
    assert sh(eng, script, masked_paths=["/proc/keys"], readonly_paths=[]).split() == \
        ["1", "0"]


# --- security ------------------------------------------------------------------------------

def test_seccomp_runtime_default_unconfined_and_a_profile(eng, tmp_path):
    if not os.path.exists("/usr/share/containers/seccomp.json"):
        pytest.skip("no default seccomp profile on this host (containers-common)")
    script = "grep '^Seccomp:' /proc/self/status; mkdir /tmp/d 2>&1; echo rc=$?"
    # containers-common's profile lets unshare and mkdir through: the kernel's own
    # record of a filter is the witness for the default
    out = sh(eng, script, security_opt=["seccomp=runtime/default"])
    assert out.split()[:2] == ["Seccomp:", "2"] and "rc=0" in out
    out = sh(eng, script, security_opt=["seccomp=unconfined"])
    assert out.split()[:2] == ["Seccomp:", "0"] and "rc=0" in out
    profile = tmp_path / "no-mkdir.json"
    profile.write_text('{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": '
                       '["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}]}')
    out = sh(eng, script, security_opt=[f"seccomp={profile}"])
    assert "Operation not permitted" in out and "rc=1" in out


def test_no_new_privileges(eng):
    assert sh(eng, "grep ^NoNewPrivs: /proc/self/status").split() == ["NoNewPrivs:", "0"]
    assert sh(eng, "grep ^NoNewPrivs: /proc/self/status",
              no_new_privileges=True).split() == ["NoNewPrivs:", "1"]


def test_run_as_group_and_group_add(eng):
    out = sh(eng, "id -u; id -g; id -G", user="1000", group="app",
             group_add=["nogroup", "4242"])
    uid, gid, groups = out.strip().split("\n")
    assert (uid, gid) == ("1000", "1000")
    assert {"4242", "65534"} <= set(groups.split())
    assert sh(eng, "id -g", user="1000", group="4343").strip() == "4343"


def test_ulimits(eng):
    out = sh(eng, "grep 'Max open files' /proc/self/limits; "
                  "grep 'Max core file size' /proc/self/limits",
             ulimits=["nofile=1024:2048", {"type": "RLIMIT_CORE", "soft": 0, "hard": 0}])
    nofile, core = out.strip().split("\n")
    assert nofile.split()[3:5] == ["1024", "2048"]
    assert core.split()[4:6] == ["0", "0"]


def test_oom_score_adj(eng, capfd):
    assert sh(eng, "cat /proc/self/oom_score_adj", oom_score_adj=500).strip() == "500"
    with open("/proc/self/status") as f:
        bounding = int(next(ln.split()[1] for ln in f if ln.startswith("CapBnd:")), 16)
    capfd.readouterr()
    out = sh(eng, "cat /proc/self/oom_score_adj", oom_score_adj=-500)
    err = capfd.readouterr().err
    if bounding & (1 << 24):  # CAP_SYS_RESOURCE: the host lets it be lowered
        assert out.strip() == "-500"
    else:
        assert out.strip() != "-500"
        assert "oom_score_adj -500 dropped" in err and "CAP_SYS_RESOURCE" in err


# --- cgroups, resources, logs, OOM, events ----------------------------------------------------

def test_cgroup_parent(eng, cgroup_parent):
    cid = start(eng, "sh", "-c", "cat /proc/self/cgroup; sleep 30",
                cgroup_parent=cgroup_parent)
    try:
        wait_for(lambda: output(eng, cid), what="the container's output")
        lines = output(eng, cid).splitlines()
        memory = next(ln for ln in lines if ":memory:" in ln or ln.startswith("0::"))
        assert memory.split(":", 2)[2] == f"{cgroup_parent}/{cid}"
        assert any(os.path.isdir(os.path.join(d, cid)) for d in cgroup_dirs(cgroup_parent))
    finally:
        eng.remove(cid, force=True)
    assert not any(os.path.isdir(os.path.join(d, cid)) for d in cgroup_dirs(cgroup_parent))


def memory_limit_file(cid: str, parent: str = "/minirun") -> str:
    v1 = f"/sys/fs/cgroup/memory{parent}/{cid}/memory.limit_in_bytes"
    return v1 if os.path.exists(v1) else f"/sys/fs/cgroup{parent}/{cid}/memory.max"


def test_resources_and_update(eng):
    cid = start(eng, "sleep", "60", memory_bytes=64 << 20, cpu_shares=512)
    try:
        with open(memory_limit_file(cid)) as f:
            assert int(f.read()) == 64 << 20
        eng.update_resources(cid, {"memory_bytes": 96 << 20, "cpu_quota": 50000,
                                   "cpu_period": 100000})
        with open(memory_limit_file(cid)) as f:
            assert int(f.read()) == 96 << 20
        quota = f"/sys/fs/cgroup/cpu/minirun/{cid}/cpu.cfs_quota_us"
        if os.path.exists(quota):
            with open(quota) as f:
                assert int(f.read()) == 50000
        with pytest.raises(InvalidArgument, match="memory_bytes"):
            eng.update_resources(cid, {"memory_bytes": "lots"})
    finally:
        eng.remove(cid, force=True)


def test_log_path_and_reopen(eng, tmp_path):
    log = tmp_path / "pods" / "ns_pod_uid" / "ctr" / "0.log"  # made by the daemon
    flag = tmp_path / "flag"
    flag.mkdir()
    cid = start(eng, "sh", "-c", "echo one; echo err >&2; "
                                 "while [ ! -e /flag/go ]; do sleep 0.05; done; echo two",
                log_path=str(log),
                mounts=[{"destination": "/flag", "type": "bind", "source": str(flag),
                         "options": ["rbind"]}])
    try:
        wait_for(lambda: log.exists() and "err" in log.read_text(), what="the log")
        os.rename(log, f"{log}.1")
        eng.reopen_log(cid)
        (flag / "go").touch()
        wait_handled(eng, cid)
        old, new = (log.parent / "0.log.1").read_text(), log.read_text()
        assert all(CRI_LINE.match(line) for line in (old + new).splitlines())
        assert old.splitlines()[0].endswith(" stdout F one")
        assert any(line.endswith(" stderr F err") for line in old.splitlines())
        assert new.splitlines() == [new.splitlines()[0]] and \
            new.endswith(" stdout F two\n")
        assert not os.path.exists(os.path.join(eng.root, "containers", cid, "ctr.log"))
        # `minirun logs` reads it too, the rotated file first
        assert sorted(output(eng, cid).split()) == ["err", "one", "two"]
        with pytest.raises(ContainerStateError):
            eng.reopen_log(cid)
    finally:
        eng.remove(cid, force=True)


def test_exited_only_once_the_log_is_whole(eng, tmp_path):
    """Whoever sees the container exited (kubelet, critest: they read the log once,
    right then) finds all its output in the log: a reader's reconcile waits for the
    daemon, which records the exit after draining the pipes."""
    for i in range(8):
        log = tmp_path / f"{i}.log"
        cid = start(eng, "sh", "-c", "echo out; echo err >&2", log_path=str(log))
        try:
            assert wait_for(lambda: eng.get(cid)["status"] == "exited", what="its exit")
            lines = log.read_text().splitlines()
            assert sorted(line.split(" ", 1)[1] for line in lines) == \
                ["stderr F err", "stdout F out"], (i, lines)
        finally:
            eng.remove(cid, force=True)


def test_oom_killed_is_recorded(eng):
    kw = {"memory_bytes": 16 << 20}
    with open("/proc/swaps") as f:
        if len(f.read().splitlines()) > 1:
            kw["memory_swap"] = 16 << 20
    rec, _ = run(eng, "sh", "-c", "head -c 64m /dev/zero | tail", **kw)
    assert rec["reason"] == "OOMKilled"
    assert rec["exit_code"] == 137
    rec, _ = run(eng, "sh", "-c", "exit 3", **kw)
    assert (rec["reason"], rec["exit_code"]) == ("", 3)


def test_events_in_order(eng):
    last = eng.events_after(0, limit=100000)
    seq = last[-1]["seq"] if last else 0
    cid = start(eng, "sh", "-c", "exit 2", pod="a" * 64)
    wait_handled(eng, cid)
    eng.remove(cid)
    mine = [e for e in eng.events_after(seq) if e["container"] == cid]
    assert [e["type"] for e in mine] == ["created", "started", "stopped", "deleted"]
    assert mine[2]["attrs"] == {"exit_code": 2, "reason": ""}
    assert all(e["pod"] == "a" * 64 for e in mine)
    assert [e["seq"] for e in mine] == sorted(e["seq"] for e in mine)


def test_stop_timeout(eng):
    cid = start(eng, "sh", "-c", "trap '' TERM; while true; do sleep 0.1; done",
                stop_timeout=1)
    try:
        begun = time.monotonic()
        eng.stop(cid)
        assert time.monotonic() - begun < 8
        assert eng.get(cid)["exit_code"] == 137
    finally:
        eng.remove(cid, force=True)


# --- bad values: refused, nothing made -------------------------------------------------------

def host_state(eng, top: str, parent: str) -> tuple:
    with open("/proc/self/mountinfo") as f:
        mounts = sorted(line.split()[4] for line in f if top in line)
    containers = os.path.join(eng.root, "containers")
    return (sorted(r["id"] for r in eng.records()),
            sorted(os.listdir(containers)) if os.path.isdir(containers) else [],
            mounts, cgroup_dirs(parent), eng.events_after(0, limit=1 << 30)[-1:])


BAD = [
    ({"mounts": [{"destination": "/x", "type": "bind", "source": "/no/such/dir",
                  "options": ["rbind"]}]}, "/no/such/dir"),
    ({"mounts": [{"destination": "x", "type": "bind", "source": "/tmp"}]}, "absolute"),
    ({"mounts": [{"destination": "/x", "type": "bind", "source": "/tmp",
                  "options": ["rbind", "rslave", "rshared"]}]}, "more than one propagation"),
    ({"devices": [{"host": "/dev/no-such-device", "container": "/dev/x",
                   "permissions": "rwm"}]}, "/dev/no-such-device"),
    ({"devices": [{"host": "/etc/passwd", "container": "/dev/x"}]}, "not a device"),
    ({"pid": "bogus"}, "--pid mode 'bogus'"),
    ({"ipc": "ns:/no/such/ns"}, "/no/such/ns"),
    ({"uts": "ns:/proc/self/ns/net"}, "not a uts namespace"),
    ({"network": "ns:/no/such/netns"}, "/no/such/netns"),
    ({"ulimits": ["nofile=10:5"]}, "soft limit exceeds"),
    ({"ulimits": ["nofiles=10"]}, "nofiles"),
    ({"sysctls": {"kernel.hostname": "x"}}, "kernel.hostname"),
    ({"sysctls": {"kernel.shmmax": "1"}, "ipc": "host"}, "ipc namespace"),
    ({"oom_score_adj": 2000}, "-1000 to 1000"),
    ({"cgroup_parent": "/minirun/../x"}, "cgroup"),
    ({"masked_paths": ["proc/kcore"]}, "masked_paths"),
    ({"cpu_shares": "many"}, "cpu_shares"),
    ({"log_path": "relative.log"}, "log path"),
    ({"apparmor": "localhost/k8s-nginx"}, "no AppArmor support"),
    ({"unified": {"../memory.high": "64M"}}, "unified"),
    ({"pod_files": "/no/such/pod"}, "/no/such/pod"),
    # found wrong only in the image's files, once its snapshot is made: undone
    ({"group": "no-such-group"}, "no-such-group"),
    ({"group_add": ["root", "nogroupx"]}, "nogroupx"),
]


@pytest.mark.parametrize("options,named", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_values_refused_with_nothing_left(eng, engine, cgroup_parent,  # noqa: F811
                                              options, named):
    kw = {"cgroup_parent": cgroup_parent, **options}
    before = host_state(eng, engine.top, cgroup_parent)
    with pytest.raises(InvalidArgument) as e:
        start(eng, "true", **kw)
    message = str(e.value)
    assert named in message and "\n" not in message
    assert host_state(eng, engine.top, cgroup_parent) == before
    assert not cgroup_dirs(cgroup_parent)


# --- records ---------------------------------------------------------------------------------

def test_labels_and_annotations(eng):
    import json

    cid = start(eng, "true", labels={"app": "web"},
                annotations={"io.kubernetes.pod.name": "web-0"})
    try:
        with open(os.path.join(eng.root, "containers", cid, "config.json")) as f:
            annotations = json.load(f)["annotations"]
        assert annotations == {"io.kubernetes.pod.name": "web-0", "io.minirun.id": cid}
        opts = json.loads(eng.get(cid)["options"])
        assert opts["labels"] == {"app": "web"}
    finally:
        eng.remove(cid, force=True)


def test_old_database_gets_the_reason_column(tmp_path):
    import sqlite3

    root = tmp_path / "old"
    root.mkdir()
    db = sqlite3.connect(root / "engine.db")
    db.execute("""CREATE TABLE containers (
        id TEXT PRIMARY KEY, name TEXT UNIQUE NOT NULL, image TEXT NOT NULL,
        image_id TEXT NOT NULL, command TEXT NOT NULL, created REAL NOT NULL,
        status TEXT NOT NULL, exit_code INTEGER, started REAL, finished REAL,
        pid INTEGER, options TEXT NOT NULL, restart_count INTEGER DEFAULT 0,
        stop_signal TEXT DEFAULT '', user_stopped INTEGER DEFAULT 0)""")
    db.execute("INSERT INTO containers (id, name, image, image_id, command, created, status,"
               " options) VALUES ('c1', 'old', 'busybox', 'x', '[]', 0, 'exited', '{}')")
    db.commit()
    db.close()
    old = Engine(str(root), str(tmp_path / "run"))
    assert old.records()[0]["reason"] == ""
    assert old.events_after(0) == []


def test_events_are_pruned(tmp_path, monkeypatch):
    import minirun.engine as engine_module

    monkeypatch.setattr(engine_module, "EVENTS_KEEP", 5)
    monkeypatch.setattr(engine_module, "EVENTS_PRUNE_EVERY", 10)
    e = Engine(str(tmp_path / "lib"), str(tmp_path / "run"))
    for i in range(25):
        e.record_event("created", f"c{i}", n=i)
    left = e.events_after(0)
    # cut at the 10th and 20th: the last 5 of the first 20, then 21..25
    assert [ev["attrs"]["n"] for ev in left] == list(range(15, 25))
    assert [ev["seq"] for ev in e.events_after(left[-3]["seq"])] == \
        [left[-2]["seq"], left[-1]["seq"]]


def test_events_of_a_forced_removal(eng):
    last = eng.events_after(0, limit=1 << 30)
    seq = last[-1]["seq"] if last else 0
    cid = start(eng, "sleep", "60")
    eng.remove(cid, force=True)
    time.sleep(1)  # the daemon handles the exit after the removal: it must add nothing
    mine = [e["type"] for e in eng.events_after(seq) if e["container"] == cid]
    assert mine == ["created", "started", "stopped", "deleted"]
