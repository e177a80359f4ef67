"""docker's verbs, run/create flags and messages (issue 12, dk-verbs' part), with real
containers under a private root (enginetest's fixture); where podman 4 is installed the
same command lines go through podman (runc, private storage, cgroupfs under /minirun,
network none) and the exit codes and the shape of the output are compared.

Known differences from podman, each asserted where it shows: podman's `diff` lists
/etc for the files it mounts (minirun and docker leave the engine's own mount points
out); podman's `top` of a stopped container exits 125 (docker and minirun: 1); podman
refuses `-m 1k` only when runc fails to set it, with runc's message (docker and minirun
name the 6MB minimum).
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import socket
import subprocess
import tarfile
import tempfile
import time

import pytest
from clients import (
    build_rootfs_tarball,
    has_cap_sys_resource,
    mounts_under,
    remove_cgroup_tree,
    remove_tree,
    run_token,
)
from enginetest import engine  # noqa: F401 - the module's engine fixture
from ocitest import wait_for

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="containers need root")]

NAME_RE = re.compile(r"^[a-z]+_[a-z]+[0-9]?$")
V2 = os.path.exists("/sys/fs/cgroup/cgroup.controllers")
# inside a container: its own cgroup's files (v1: each controller's mount; v2: one dir)
CG_SCRIPT = ("cd /sys/fs/cgroup; if [ -e cgroup.controllers ]; then "
             "cat memory.max memory.swap.max memory.low cpu.weight cpuset.cpus pids.max; "
             "else cat memory/memory.limit_in_bytes memory/memory.memsw.limit_in_bytes "
             "memory/memory.soft_limit_in_bytes cpu/cpu.shares cpuset/cpuset.cpus "
             "pids/pids.max; fi")
MiB = 1024 * 1024


def _swap_accounting() -> bool:
    if V2:
        return any(os.path.exists(os.path.join("/sys/fs/cgroup", d, "memory.swap.max"))
                   for d in ("minirun", "init.scope", "system.slice"))
    return os.path.exists("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- podman, for comparison -------------------------------------------------------------------

CONTAINERS_CONF = """\
[containers]
log_driver = "k8s-file"

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
lock_type = "file"
"""


class Podman:
    """podman 4 with runc, its storage, run root and events in a temporary directory,
    its containers under /minirun/<token> and without a network."""

    def __init__(self, base: str) -> None:
        self.base = base
        storage, runroot = os.path.join(base, "storage"), os.path.join(base, "run")
        conf = os.path.join(base, "containers.conf")
        with open(conf, "w") as f:
            f.write(CONTAINERS_CONF)
        storage_conf = os.path.join(base, "storage.conf")
        with open(storage_conf, "w") as f:
            f.write(f'[storage]\ndriver = "vfs"\ngraphroot = "{storage}"\n'
                    f'runroot = "{runroot}"\n')
        self.storage = storage
        self.env = dict(os.environ, CONTAINERS_CONF=conf, CONTAINERS_STORAGE_CONF=storage_conf)
        self.cmd = ["podman", "--root", storage, "--runroot", runroot, "--storage-driver",
                    "vfs", "--tmpdir", os.path.join(base, "tmp"), "--cgroup-manager",
                    "cgroupfs", "--events-backend", "file", "--runtime", "runc"]
        self.cgroup_parent = f"/minirun/dkverbs-podman-{run_token()}"
        self.run_opts = ["--network", "none", "--pull", "never",
                         "--cgroup-parent", self.cgroup_parent]
        if not has_cap_sys_resource():  # podman asks for rlimits above this host's
            self.run_opts += ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]

    def __call__(self, *args: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
        args = list(args)
        # run/create get the options this host needs, right after the verb
        for verb in ("run", "create"):
            if args[:1] == [verb]:
                args = [verb] + self.run_opts + args[1:]
        return subprocess.run(self.cmd + args, capture_output=True, text=True,
                              timeout=timeout, env=self.env, check=False, **kw)


@pytest.fixture(scope="module")
def podman():
    if shutil.which("podman") is None or shutil.which("runc") is None:
        pytest.skip("podman or runc is not installed: no comparison on this host")
    base = tempfile.mkdtemp(prefix="minirun-dkverbs-podman-")
    pm = Podman(base)
    try:
        tar = build_rootfs_tarball(base)
        proc = pm("import", tar, "busybox")
        assert proc.returncode == 0, proc.stderr
        yield pm
    finally:
        pm("rm", "--all", "--force", "--time", "0")
        pm("volume", "prune", "--force")
        pm("rmi", "--all", "--force")
        left = remove_cgroup_tree(pm.cgroup_parent)
        for point in reversed(mounts_under(base)):
            subprocess.run(["umount", "-l", point], check=False)
        remove_tree(base)
        assert not left, f"cgroups left: {left}"


# --- helpers ------------------------------------------------------------------------------------

def mr(engine, *args, **kw) -> subprocess.CompletedProcess:  # noqa: F811
    """minirun with the engine's roots; run/create without a network unless given."""
    args = list(args)
    for verb in ("run", "create"):
        if args[:1] == [verb] and "--network" not in args and "-p" not in args:
            args = [verb, "--network", "none"] + args[1:]
    return engine(*args, **kw)


def both(engine, podman, *args, **kw):  # noqa: F811
    return mr(engine, *args, **kw), podman(*args, **kw)


def one_line_error(proc) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def inspect(engine, name: str) -> dict:  # noqa: F811
    proc = mr(engine, "inspect", name, check=True)
    return json.loads(proc.stdout)[0]


def labels_of(info: dict) -> dict:
    """Config.Labels (docker's place) or the record's labels (before inspect is
    docker-shaped)."""
    return (info.get("Config") or {}).get("Labels") or \
        (info.get("HostConfig") or {}).get("labels") or {}


def cgroup_values(engine, *flags) -> list[str]:  # noqa: F811
    proc = mr(engine, "run", "--rm", *flags, "busybox", "sh", "-c", CG_SCRIPT)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


@pytest.fixture
def sleeper(engine):  # noqa: F811
    """A running container's name; removed after the test."""
    name = f"sl{os.urandom(4).hex()}"
    mr(engine, "run", "-d", "--name", name, "busybox", "sleep", "300", check=True)
    yield name
    engine("rm", "-f", name)


# --- verbs ----------------------------------------------------------------------------------------

def test_version_has_client_and_server(engine, podman):  # noqa: F811
    ours, theirs = both(engine, podman, "version")
    assert ours.returncode == theirs.returncode == 0, (ours.stderr, theirs.stderr)
    assert re.search(r"^Client:", ours.stdout, re.MULTILINE) and re.search(r"^Server:", ours.stdout,
                                                                   re.MULTILINE), ours.stdout
    for proc in (ours, theirs):
        assert re.search(r"^\s*Version:\s+\S+", proc.stdout, re.MULTILINE), proc.stdout
        assert re.search(r"OS/Arch:\s+linux/\w+", proc.stdout), proc.stdout
    data = json.loads(mr(engine, "version", "--format", "json").stdout)
    assert data["Client"]["Version"] == data["Server"]["Version"]
    assert [c["Name"] for c in data["Server"]["Components"]] == ["Engine", "minirun-oci"]


def test_port_lists_published_ports(engine):  # noqa: F811
    tcp, udp = free_port(), free_port()
    name = f"pt{os.urandom(3).hex()}"
    proc = mr(engine, "run", "-d", "--name", name, "-p", f"127.0.0.1:{tcp}:80",
              "-p", f"{udp}:81/udp", "busybox", "sleep", "300")
    assert proc.returncode == 0, proc.stderr
    try:
        out = mr(engine, "port", name, check=True).stdout.splitlines()
        assert out == [f"80/tcp -> 127.0.0.1:{tcp}", f"81/udp -> 0.0.0.0:{udp}"]
        assert mr(engine, "port", name, "80").stdout == f"127.0.0.1:{tcp}\n"
        assert mr(engine, "port", name, "81/udp").stdout == f"0.0.0.0:{udp}\n"
        missing = mr(engine, "port", name, "82")
        assert missing.returncode == 1
        assert "No public port '82/tcp' published for" in one_line_error(missing)
        # a port conflict names the other container, never the one being made
        clash = mr(engine, "run", "-d", "-p", f"127.0.0.1:{tcp}:80", "busybox", "true")
        assert clash.returncode == 125
        theirs = inspect(engine, name)["Id"][:12]
        assert f"published by container {theirs}" in one_line_error(clash)
        twice = free_port()
        clash = mr(engine, "run", "-d", "-p", f"{twice}:80", "-p", f"{twice}:81",
                   "busybox", "true")
        assert clash.returncode == 125
        assert "given twice" in one_line_error(clash)
        assert mr(engine, "ps", "-aq").stdout.split() == [theirs]  # nothing left over
    finally:
        engine("rm", "-f", name)


def _tar_names(data: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name.rstrip("/"): m for m in tar.getmembers()}


@pytest.mark.parametrize("tool", ["minirun", "podman"])
def test_cp_both_directions(engine, podman, tool, tmp_path):  # noqa: F811
    cli = (lambda *a, **kw: mr(engine, *a, **kw)) if tool == "minirun" else podman
    name = f"cp{tool}{os.urandom(3).hex()}"
    assert cli("run", "-d", "--name", name, "busybox", "sleep", "300").returncode == 0
    try:
        host = tmp_path / "h"
        (host / "d" / "sub").mkdir(parents=True)
        (host / "f").write_text("one\n")
        (host / "d" / "sub" / "g").write_text("two\n")
        os.symlink("/etc/passwd", host / "d" / "link")
        # host -> container: a file into a directory, a directory as a new name, its
        # contents with /., a tar archive on stdin
        assert cli("cp", str(host / "f"), f"{name}:/tmp/").returncode == 0
        assert cli("cp", str(host / "d"), f"{name}:/tmp/newd").returncode == 0
        assert cli("cp", str(host / "d") + "/.", f"{name}:/tmp/").returncode == 0
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo("fromtar")
            info.size = 4
            tar.addfile(info, io.BytesIO(b"tar\n"))
        proc = cli("cp", "-", f"{name}:/tmp", input=buf.getvalue().decode())
        assert proc.returncode == 0, proc.stderr
        ls = cli("exec", name, "sh", "-c", "cat /tmp/f /tmp/newd/sub/g /tmp/sub/g "
                 "/tmp/fromtar; readlink /tmp/newd/link")
        assert ls.stdout == "one\ntwo\ntwo\ntar\n/etc/passwd\n", ls.stderr
        # container -> host: a file to a new name, a directory, a tar on stdout
        cli("exec", name, "sh", "-c", "echo hi > /tmp/x; ln -s / /tmp/escape")
        assert cli("cp", f"{name}:/tmp/x", str(tmp_path / "x_out")).returncode == 0
        assert (tmp_path / "x_out").read_text() == "hi\n"
        assert cli("cp", f"{name}:/tmp/newd", str(tmp_path / "got")).returncode == 0
        assert (tmp_path / "got" / "sub" / "g").read_text() == "two\n"
        assert os.readlink(tmp_path / "got" / "link") == "/etc/passwd"
        out = raw(engine, podman, tool, "cp", f"{name}:/tmp/x", "-")
        assert out.returncode == 0
        names = _tar_names(out.stdout)
        assert list(names) == ["x"] and names["x"].size == 3
        # a symlink in the container resolves inside its root, never to the host's
        esc = cli("cp", f"{name}:/tmp/escape/etc/hostname", str(tmp_path / "hn"))
        with open("/etc/hostname") as f:
            host_name = f.read()
        assert esc.returncode != 0 or (tmp_path / "hn").read_text() != host_name or \
            host_name.strip() == ""
        bad = cli("cp", f"{name}:/no/such", str(tmp_path / "n"))
        assert bad.returncode != 0 and not (tmp_path / "n").exists()
        bad = cli("cp", f"{name}:/tmp/x", str(tmp_path / "no" / "dir" / "x"))
        assert bad.returncode != 0 and not (tmp_path / "no").exists()
        bad = cli("cp", str(host / "f"), f"{name}:/no/such/dir/x")
        assert bad.returncode != 0
    finally:
        cli("rm", "-f", name)


def raw(engine, podman, tool: str, *args: str) -> subprocess.CompletedProcess:  # noqa: F811
    """The command's output as bytes (a tar on stdout)."""
    import sys

    if tool == "podman":
        return subprocess.run(podman.cmd + list(args), capture_output=True, env=podman.env,
                              check=False)
    return subprocess.run([sys.executable, "-m", "minirun.cli", *args], capture_output=True,
                          env=engine.env, check=False)


def test_cp_into_a_symlink_stays_in_the_root(engine, sleeper, tmp_path):  # noqa: F811
    """A destination through a symlink to / lands in the container's /, never the host's."""
    mr(engine, "exec", sleeper, "sh", "-c", f"ln -s / /tmp/up; mkdir -p {tmp_path}",
       check=True)
    src = tmp_path / "evil"
    src.write_text("x\n")
    proc = mr(engine, "cp", str(src), f"{sleeper}:/tmp/up{tmp_path}/marker")
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "marker").exists()
    assert mr(engine, "exec", sleeper, "cat", f"{tmp_path}/marker").stdout == "x\n"
    # and a tar whose entries climb out is refused
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("../../../../../../../../tmp/climbed")
        tar.addfile(info)
    out = mr(engine, "cp", "-", f"{sleeper}:/tmp", input=buf.getvalue().decode())
    assert out.returncode == 1 and not os.path.exists("/tmp/climbed")


def test_cp_keeps_hard_links(engine, sleeper, tmp_path):  # noqa: F811
    """A directory with hard links, both ways (podman 4.3 fails this one into a new
    name: `link ... no such file or directory`)."""
    src = tmp_path / "hl"
    src.mkdir()
    (src / "a").write_text("data\n")
    os.link(src / "a", src / "b")
    assert mr(engine, "cp", str(src), f"{sleeper}:/tmp/copied").returncode == 0
    inodes = mr(engine, "exec", sleeper, "stat", "-c", "%i %h", "/tmp/copied/a",
                "/tmp/copied/b").stdout.splitlines()
    assert len(inodes) == 2 and inodes[0] == inodes[1] and inodes[0].endswith(" 2"), inodes
    back = tmp_path / "back"
    proc = mr(engine, "cp", f"{sleeper}:/tmp/copied", str(back))
    assert proc.returncode == 0, proc.stderr
    assert os.stat(back / "a").st_ino == os.stat(back / "b").st_ino
    assert (back / "b").read_text() == "data\n"


def test_pause_and_unpause(engine, podman, tmp_path):  # noqa: F811
    out = tmp_path / "count"
    out.mkdir()
    name = f"pa{os.urandom(3).hex()}"
    mr(engine, "run", "-d", "--name", name, "-v", f"{out}:/out", "busybox", "sh", "-c",
       "i=0; while true; do i=$((i+1)); echo $i > /out/n; sleep 0.05; done", check=True)
    try:
        wait_for(lambda: (out / "n").exists() and (out / "n").read_text().strip())
        assert mr(engine, "pause", name).stdout == f"{name}\n"
        time.sleep(0.2)
        frozen = (out / "n").read_text()
        time.sleep(0.5)
        assert (out / "n").read_text() == frozen, "a paused container kept running"
        again = mr(engine, "pause", name)
        assert again.returncode == 1 and "already paused" in one_line_error(again)
        # what docker shows of a paused container
        ps = mr(engine, "ps", "--filter", f"name={name}", "--format", "{{.Status}}|{{.State}}")
        assert re.fullmatch(r"Up .* \(Paused\)\|paused\n", ps.stdout), ps.stdout
        state = mr(engine, "inspect", "-f", "{{.State.Status}} {{.State.Paused}}", name)
        assert state.stdout == "paused true\n"
        listed = mr(engine, "ps", "-q", "--filter", "status=paused", "--no-trunc")
        assert listed.stdout.startswith(mr(engine, "inspect", "-f", "{{.Id}}", name).stdout[:12])
        assert mr(engine, "unpause", name).returncode == 0
        wait_for(lambda: (out / "n").read_text() != frozen, timeout=5)
        not_paused = mr(engine, "unpause", name)
        assert not_paused.returncode == 1 and "not paused" in one_line_error(not_paused)
    finally:
        engine("rm", "-f", name)
    # podman: the same exit codes for the same sequence
    pname = f"ppa{os.urandom(3).hex()}"
    assert podman("run", "-d", "--name", pname, "busybox", "sleep", "300").returncode == 0
    try:
        assert podman("pause", pname).returncode == 0
        assert podman("pause", pname).returncode != 0
        assert podman("unpause", pname).returncode == 0
        assert podman("unpause", pname).returncode != 0
    finally:
        podman("rm", "-f", "-t", "0", pname)
    stopped = mr(engine, "pause", "nosuchcontainer")
    assert stopped.returncode == 1


def test_create_then_start(engine, podman):  # noqa: F811
    name = f"cr{os.urandom(3).hex()}"
    ours = mr(engine, "create", "--name", name, "busybox", "echo", "created-and-started")
    theirs = podman("create", "--name", name, "busybox", "echo", "created-and-started")
    try:
        for proc in (ours, theirs):
            assert proc.returncode == 0, proc.stderr
            assert re.fullmatch(r"[0-9a-f]{64}\n", proc.stdout), proc.stdout
        assert "Created" in mr(engine, "ps", "-a").stdout
        assert mr(engine, "logs", name).stdout == ""
        assert mr(engine, "start", name).returncode == 0
        assert mr(engine, "wait", name).stdout == "0\n"
        assert mr(engine, "logs", name).stdout == "created-and-started\n"
        # start -a: its output from this start on, and its exit status
        att = f"at{os.urandom(3).hex()}"
        for cli in (lambda *a: mr(engine, *a), podman):
            cli("create", "--name", att, "busybox", "sh", "-c", "echo out; echo err >&2; exit 4")
            for _ in range(2):
                proc = cli("start", "-a", att)
                assert (proc.returncode, proc.stdout, proc.stderr) == (4, "out\n", "err\n")
            cli("rm", "-f", att)
        # create takes run's flags and checks them as run does
        bad = mr(engine, "create", "-m", "1k", "busybox", "true")
        assert bad.returncode == 125 and "6MB" in one_line_error(bad)
    finally:
        engine("rm", "-f", name)
        podman("rm", "-f", name)


def test_rename(engine, podman, sleeper):  # noqa: F811
    new = sleeper + "-renamed"
    assert mr(engine, "rename", sleeper, new).returncode == 0
    try:
        assert inspect(engine, new)["Name"].lstrip("/") == new
        assert mr(engine, "inspect", sleeper).returncode != 0
        other = f"o{os.urandom(3).hex()}"
        mr(engine, "create", "--name", other, "busybox", "true", check=True)
        taken = mr(engine, "rename", new, other)
        assert taken.returncode == 1 and "already in use" in one_line_error(taken)
        engine("rm", "-f", other)
        bad = mr(engine, "rename", new, "bad/name")
        assert bad.returncode == 1 and "invalid container name" in one_line_error(bad)
    finally:
        mr(engine, "rename", new, sleeper)
    a, b = f"pa{os.urandom(3).hex()}", f"pb{os.urandom(3).hex()}"
    podman("create", "--name", a, "busybox", "true")
    podman("create", "--name", b, "busybox", "true")
    try:
        assert podman("rename", a, b).returncode != 0
        assert podman("rename", a, a + "x").returncode == 0
    finally:
        podman("rm", "-f", a + "x", b)


def test_update_limits_of_running_and_stopped(engine, sleeper):  # noqa: F811
    proc = mr(engine, "update", "--memory", "96m", "--pids-limit", "55", "--cpu-shares",
              "256", "--cpuset-cpus", "0", "--restart", "on-failure:3", sleeper)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"{sleeper}\n"
    values = mr(engine, "exec", sleeper, "sh", "-c", CG_SCRIPT).stdout.split()
    assert values[0] == str(96 * MiB) and values[5] == "55"
    assert values[3] in ("256", "10")  # v1 shares; v2 weight from 256 shares
    assert values[4] == "0"
    assert "on-failure:3" in json.dumps(inspect(engine, sleeper))
    bad = mr(engine, "update", "--cpus", "0.001", sleeper)
    assert bad.returncode == 1 and "0.01" in one_line_error(bad)
    bad = mr(engine, "update", "--cpuset-cpus", "x", sleeper)
    assert bad.returncode == 1 and "--cpuset-cpus" in one_line_error(bad)
    none = mr(engine, "update", sleeper)
    assert none.returncode == 1 and "one or more flags" in one_line_error(none)
    # a stopped container has the new limit when it starts again
    mr(engine, "stop", "-t", "0", sleeper, check=True)
    assert mr(engine, "update", "--pids-limit", "66", sleeper).returncode == 0
    mr(engine, "start", sleeper, check=True)
    assert mr(engine, "exec", sleeper, "sh", "-c", CG_SCRIPT).stdout.split()[5] == "66"


def test_diff(engine, podman):  # noqa: F811
    script = "echo x > /tmp/added; rm /bin/vi; mkdir -p /newdir/sub; echo y > /etc/motd2"
    name = f"df{os.urandom(3).hex()}"
    results = {}
    for tool, cli in (("minirun", lambda *a: mr(engine, *a)), ("podman", podman)):
        assert cli("run", "--name", name, "busybox", "sh", "-c", script).returncode == 0
        proc = cli("diff", name)
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.splitlines()
        assert all(re.fullmatch(r"[ACD] /\S*", ln) for ln in lines), lines
        results[tool] = set(lines)
        cli("rm", "-f", name)
    expected = {"C /tmp", "A /tmp/added", "C /bin", "D /bin/vi", "A /newdir",
                "A /newdir/sub", "C /etc", "A /etc/motd2"}
    assert expected <= results["podman"], results["podman"]
    assert results["minirun"] == expected, results["minirun"]
    # the mount points podman lists (/etc/hosts, /etc/resolv.conf, ...) are its own
    assert all(ln.startswith(("C /etc", "A /etc/", "A /run", "C /run", "A /dev", "C /dev"))
               for ln in results["podman"] - expected), results["podman"] - expected


def test_export(engine, podman, tmp_path):  # noqa: F811
    name = f"ex{os.urandom(3).hex()}"
    got = {}
    for tool, cli, env in (("minirun", lambda *a, **k: mr(engine, *a, **k), engine.env),
                           ("podman", podman, podman.env)):
        assert cli("run", "--name", name, "busybox", "sh", "-c",
                   "echo exported > /root-file; ln -s /etc/passwd /lnk").returncode == 0
        out = raw(engine, podman, tool, "export", name)
        assert out.returncode == 0, out.stderr
        names = _tar_names(out.stdout)
        assert "root-file" in names and "bin/busybox" in names
        assert names["lnk"].issym() and names["lnk"].linkname == "/etc/passwd"
        target = tmp_path / f"{tool}.tar"
        assert cli("export", "-o", str(target), name).returncode == 0
        got[tool] = set(_tar_names(target.read_bytes()))
        cli("rm", "-f", name)
    assert {"root-file", "lnk", "bin/busybox", "etc/passwd"} <= got["minirun"] & got["podman"]


def test_commit_and_history(engine, podman):  # noqa: F811
    name = f"cm{os.urandom(3).hex()}"
    ref = f"committed{os.urandom(2).hex()}:v1"
    for tool, cli in (("minirun", lambda *a: mr(engine, *a)), ("podman", podman)):
        assert cli("run", "--name", name, "busybox", "sh", "-c",
                   "echo layer > /greeting; rm /bin/vi").returncode == 0
        # podman keeps a message only in docker's image format
        fmt = ["-f", "docker"] if tool == "podman" else []
        proc = cli("commit", *fmt, "-c", 'CMD ["sh", "-c", "cat /greeting; echo $GREET"]',
                   "-c", "ENV GREET=hello", "-m", "a message", "-a", "someone", name, ref)
        assert proc.returncode == 0, (tool, proc.stderr)
        assert re.search(r"[0-9a-f]{64}", proc.stdout), proc.stdout
        out = cli("run", "--rm", ref)
        assert out.returncode == 0 and out.stdout == "layer\nhello\n", (tool, out)
        assert cli("run", "--rm", ref, "ls", "/bin/vi").returncode != 0
        hist = cli("history", ref)
        assert hist.returncode == 0
        lines = hist.stdout.splitlines()
        assert lines[0].split()[:2] == (["IMAGE", "CREATED"] if tool == "minirun"
                                        else ["ID", "CREATED"])
        assert len(lines) >= 3, lines  # the new layer above the image's
        if tool == "minirun":  # podman's history shows "FROM <image>" as the comment
            assert "a message" in lines[1] and lines[2].startswith("<missing>"), lines
        cli("rm", "-f", name)
    bad = mr(engine, "commit", "-c", "FROM x", f"nosuch{os.urandom(2).hex()}")
    assert bad.returncode == 1


def test_volume_lifecycle(engine, podman):  # noqa: F811
    vol = f"vol{os.urandom(3).hex()}"
    for tool, cli in (("minirun", lambda *a: mr(engine, *a)), ("podman", podman)):
        assert cli("volume", "create", vol).stdout == f"{vol}\n"
        ls = cli("volume", "ls")
        assert ls.stdout.split()[:3] == ["DRIVER", "VOLUME", "NAME"]
        assert "local" in ls.stdout and vol in ls.stdout
        info = json.loads(cli("volume", "inspect", vol).stdout)[0]
        assert info["Name"] == vol and info["Driver"] == "local"
        assert info["Mountpoint"].endswith(f"/volumes/{vol}/_data")
        user = f"vu{os.urandom(3).hex()}"
        assert cli("run", "--name", user, "-v", f"{vol}:/data", "busybox", "sh", "-c",
                   "echo kept > /data/f").returncode == 0
        with open(os.path.join(info["Mountpoint"], "f")) as f:
            assert f.read() == "kept\n"
        in_use = cli("volume", "rm", vol)
        assert in_use.returncode != 0, (tool, in_use.stderr)
        assert "in use" in in_use.stderr or "being used" in in_use.stderr, in_use.stderr
        assert vol in cli("volume", "ls", "-q").stdout
        cli("rm", "-f", user)
        assert cli("volume", "rm", vol).returncode == 0
        assert vol not in cli("volume", "ls", "-q").stdout
        # prune: unused ones go, used ones stay (docker 23+: named ones only with -a;
        # podman 4.3 has no -a and prunes every unused one)
        cli("volume", "create", vol + "a")
        cli("volume", "create", vol + "b")
        cli("run", "--name", user, "-v", f"{vol}b:/data", "busybox", "true")
        if tool == "minirun":
            kept = cli("volume", "prune", "-f")
            assert kept.returncode == 0 and vol + "a" not in kept.stdout
            asked = mr(engine, "volume", "prune", "-a", input="n\n")
            assert "Are you sure you want to continue? [y/N]" in asked.stdout
            assert vol + "a" in cli("volume", "ls", "-q").stdout
        pruned = cli("volume", "prune", "-f", *(["-a"] if tool == "minirun" else []))
        assert pruned.returncode == 0 and vol + "a" in pruned.stdout
        left = cli("volume", "ls", "-q").stdout.split()
        assert vol + "a" not in left and vol + "b" in left
        cli("rm", "-f", user)
        cli("volume", "rm", vol + "b")
    assert mr(engine, "volume", "inspect", "nosuchvolume").returncode == 1
    assert mr(engine, "volume", "create", "bad/name").returncode == 1


def with_env(engine, env: dict, *args: str, **kw) -> subprocess.CompletedProcess:  # noqa: F811
    import sys

    return subprocess.run([sys.executable, "-m", "minirun.cli", *args], env=env,
                          capture_output=True, text=True, timeout=120, check=False, **kw)


def test_login_and_logout(engine, podman, tmp_path):  # noqa: F811
    from registry import Registry, htpasswd_line

    if not os.path.exists("/usr/bin/docker-registry") or shutil.which("htpasswd") is None:
        pytest.skip("docker-registry or htpasswd is not installed")
    pw = tmp_path / "htpasswd"
    pw.write_text(htpasswd_line("alice", "s3cret") + "\n")
    reg = Registry(str(tmp_path), str(tmp_path / "storage"), name="auth",
                   auth={"htpasswd": {"realm": "minirun-test", "path": str(pw)}}).start()
    auth_file = tmp_path / "config.json"
    env = dict(engine.env, REGISTRY_AUTH_FILE=str(auth_file))
    try:
        wrong = with_env(engine, env, "login", "-u", "alice", "--password-stdin", reg.host,
                       input="nope\n")
        assert wrong.returncode == 1 and not auth_file.exists(), wrong.stderr
        ok = with_env(engine, env, "login", "-u", "alice", "--password-stdin", reg.host, input="s3cret\n")
        assert ok.returncode == 0 and ok.stdout == "Login Succeeded\n", ok.stderr
        auths = json.loads(auth_file.read_text())["auths"]
        assert base64.b64decode(auths[reg.host]["auth"]) == b"alice:s3cret"
        assert oct(auth_file.stat().st_mode & 0o777) == "0o600"
        from minirun.image.registry import load_credentials

        os.environ["REGISTRY_AUTH_FILE"] = str(auth_file)
        try:
            creds = load_credentials(reg.host, "any/repo")
        finally:
            del os.environ["REGISTRY_AUTH_FILE"]
        assert (creds.username, creds.password) == ("alice", "s3cret")
        out = with_env(engine, env, "logout", reg.host)
        assert out.returncode == 0 and reg.host in out.stdout
        assert reg.host not in json.loads(auth_file.read_text())["auths"]
        assert "Not logged in" in with_env(engine, env, "logout", reg.host).stdout
        both_ways = with_env(engine, env, "login", "-u", "a", "-p", "b", "--password-stdin", reg.host)
        assert both_ways.returncode == 1
        # podman's login: the same outcomes, and a file in the same format
        pm_file = tmp_path / "podman-auth.json"
        for password, status in (("nope", False), ("s3cret", True)):
            proc = podman("login", "--tls-verify=false", "--authfile", str(pm_file), "-u",
                          "alice", "--password-stdin", reg.host, input=password + "\n")
            assert (proc.returncode == 0) == status, proc.stderr
        pm_auths = json.loads(pm_file.read_text())["auths"]
        assert base64.b64decode(pm_auths[reg.host]["auth"]) == b"alice:s3cret"
    finally:
        reg.stop()


def test_system_df(engine, podman):  # noqa: F811
    for cli in (lambda *a: mr(engine, *a), podman):
        proc = cli("system", "df")
        assert proc.returncode == 0, proc.stderr
        rows = [ln.split()[0] for ln in proc.stdout.splitlines()]
        assert rows == ["TYPE", "Images", "Containers", "Local"], proc.stdout


def test_management_groups_and_aliases(engine, sleeper):  # noqa: F811
    ps = mr(engine, "ps", "-aq").stdout
    for alias in ("ls", "ps", "list"):
        assert mr(engine, "container", alias, "-aq").stdout == ps
    assert sleeper in mr(engine, "container", "ls").stdout
    assert mr(engine, "image", "ls", "-q").stdout == mr(engine, "images", "-q").stdout
    assert mr(engine, "image", "history", "busybox").returncode == 0
    assert mr(engine, "volume", "ls").returncode == 0
    for verb in ("create", "rename", "update", "pause", "unpause", "cp", "diff", "export",
                 "commit", "port", "run", "rm", "inspect", "prune", "logs", "top"):
        assert mr(engine, "container", verb, "--help").returncode == 0, verb
    assert mr(engine, "container", "diff", sleeper).returncode == 0


# --- run/create flags ---------------------------------------------------------------------------

def test_labels_and_label_file(engine, tmp_path):  # noqa: F811
    lf = tmp_path / "labels"
    lf.write_text("# comment\nfrom.file=yes\nshared=file\n")
    name = f"lb{os.urandom(3).hex()}"
    mr(engine, "create", "--name", name, "-l", "a=b", "--label", "shared=flag",
       "--label-file", str(lf), "busybox", "true", check=True)
    try:
        assert labels_of(inspect(engine, name)) == {"a": "b", "shared": "flag",
                                                    "from.file": "yes"}
    finally:
        engine("rm", "-f", name)
    missing = mr(engine, "run", "--label-file", str(tmp_path / "none"), "busybox", "true")
    assert missing.returncode == 125 and "--label-file" in one_line_error(missing)


def test_env_from_the_host(engine, podman):  # noqa: F811
    env = dict(engine.env, FROM_HOST="host-value")
    ours = with_env(engine, env, "run", "--rm", "--network", "none", "-e", "FROM_HOST", "-e",
                    "UNSET_X", "busybox", "sh", "-c", 'echo "$FROM_HOST ${UNSET_X-unset}"')
    theirs = subprocess.run(podman.cmd + ["run"] + podman.run_opts + [
        "--rm", "-e", "FROM_HOST", "-e", "UNSET_X", "busybox", "sh", "-c",
        'echo "$FROM_HOST ${UNSET_X-unset}"'], capture_output=True, text=True,
        env=dict(podman.env, FROM_HOST="host-value"), check=False)
    assert ours.stdout == theirs.stdout == "host-value unset\n", (ours.stderr, theirs.stderr)


def test_memory_swap_reservation_and_cpus(engine):  # noqa: F811
    values = cgroup_values(engine, "-m", "64m", "--memory-reservation", "20m")
    assert values[0] == str(64 * MiB)
    if _swap_accounting():  # docker: memory + swap = twice the limit
        assert values[1] == str((64 if V2 else 128) * MiB)
    assert values[2] == str(20 * MiB)
    if _swap_accounting():
        values = cgroup_values(engine, "-m", "64m", "--memory-swap", "96m")
        assert values[1] == str((32 if V2 else 96) * MiB)
        values = cgroup_values(engine, "-m", "64m", "--memory-swap", "-1")
        assert values[1] in ("max", "9223372036854771712")
    # 0 is unlimited, for -m and --cpus
    values = cgroup_values(engine, "-m", "0", "--cpus", "0")
    assert values[0] in ("max", "9223372036854771712")
    values = cgroup_values(engine, "--cpu-shares", "512", "--cpuset-cpus", "0")
    assert values[3] in ("512", "20") and values[4] == "0"


@pytest.mark.parametrize("args, message", [
    (["-m", "1k"], "Minimum memory limit allowed is 6MB"),
    (["--cpus", "0.001"], "Range of CPUs is from 0.01 to"),
    (["--cpus", "abc"], "--cpus"),
    (["--memory-swap", "10m"], "Memory limit when using Memoryswap"),
    (["-m", "64m", "--memory-swap", "32m"], "memoryswap limit should be larger"),
    (["-m", "64m", "--memory-reservation", "128m"], "memory reservation"),
    (["--restart", "bogus"], "'bogus'"),
    (["--platform", "linux/s390x-not"], "only this host's platform"),
    (["--ulimit", "nofile"], "--ulimit"),
    (["--device", "/no/such/device"], "/no/such/device"),
    (["--sysctl", "kernel.bogus_not_there=1"], "--sysctl"),
    (["--stop-signal", "SIGBOGUS"], "--stop-signal"),
    (["--mount", "type=bind,target=/x"], "--mount"),
    (["--mount", "type=nfs,source=x,target=/x"], "--mount"),
    (["-v", "/tmp:/x:bogus"], "invalid mode 'bogus'"),
    (["--uts", "private"], "--uts"),
    (["--cpuset-cpus", "abc"], "--cpuset-cpus"),
    (["--oom-score-adj", "5000"], "--oom-score-adj"),
])
def test_bad_values_are_one_line_125(engine, args, message):  # noqa: F811
    before = mr(engine, "ps", "-aq").stdout
    proc = mr(engine, "run", "--rm", *args, "busybox", "true")
    assert proc.returncode == 125, proc
    assert message in one_line_error(proc)
    assert mr(engine, "ps", "-aq").stdout == before  # nothing left behind


def test_values_podman_also_refuses(podman):
    for args in (["--cpus", "0.001"], ["--restart", "bogus"], ["--platform", "linux/s390x"]):
        proc = podman("run", "--rm", *args, "busybox", "true")
        assert proc.returncode == 125 or (args[0] == "--platform" and proc.returncode != 0), \
            (args, proc.stderr)


def test_restart_always_in_the_foreground(engine):  # noqa: F811
    name = f"ra{os.urandom(3).hex()}"
    proc = mr(engine, "run", "--name", name, "--restart", "always", "busybox", "sh", "-c",
              "echo ran; exit 3")
    try:
        assert proc.returncode == 3 and proc.stdout.startswith("ran\n"), proc
        wait_for(lambda: inspect(engine, name)["RestartCount"] >= 1, timeout=10)
    finally:
        engine("rm", "-f", name)
    assert mr(engine, "run", "--rm", "--restart", "always", "busybox", "true").returncode == 125


def test_process_flags(engine, podman):  # noqa: F811
    """The same command line through both: the same output."""
    script = ("id -G; ulimit -n; df -k /dev/shm | tail -1 | awk '{print $2}'; pwd; "
              "cat /proc/sys/net/ipv4/ip_unprivileged_port_start; "
              "cat /proc/self/oom_score_adj; ls -l /dev/mynull | cut -c1")
    args = ["--rm", "--group-add", "10", "--ulimit", "nofile=123:456", "--shm-size", "8m",
            "-w", "sub", "--sysctl", "net.ipv4.ip_unprivileged_port_start=80",
            "--oom-score-adj", "100", "--device", "/dev/null:/dev/mynull",
            "busybox", "sh", "-c", script]
    ours = mr(engine, "run", *args)
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout.split() == ["0", "10", "123", "8192", "/sub", "80", "100", "c"], \
        ours.stdout
    theirs = podman("run", *args)
    if theirs.returncode == 0:
        # podman sets the ulimit itself: with this host's extra --ulimit it may differ
        assert ours.stdout.split()[2:] == theirs.stdout.split()[2:], theirs.stdout


def test_workdir_relative_to_the_images(engine, tmp_path):  # noqa: F811
    name = f"wd{os.urandom(3).hex()}"
    ref = f"withwd{os.urandom(2).hex()}"
    mr(engine, "run", "--name", name, "busybox", "mkdir", "-p", "/app/sub", check=True)
    mr(engine, "commit", "-c", "WORKDIR /app", name, ref, check=True)
    engine("rm", "-f", name)
    assert mr(engine, "run", "--rm", "-w", "sub", ref, "pwd").stdout == "/app/sub\n"
    assert mr(engine, "run", "--rm", "-w", "/abs", ref, "pwd").stdout == "/abs\n"
    assert mr(engine, "run", "--rm", ref, "pwd").stdout == "/app\n"


def test_namespace_flags(engine, sleeper):  # noqa: F811
    host_pid = os.readlink("/proc/self/ns/pid")
    host_ipc = os.readlink("/proc/self/ns/ipc")
    out = mr(engine, "run", "--rm", "--pid", "host", "--ipc", "host", "--uts", "host",
             "busybox", "sh", "-c", "readlink /proc/self/ns/pid; readlink /proc/self/ns/ipc; hostname")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [host_pid, host_ipc, socket.gethostname()]
    joined = mr(engine, "run", "--rm", "--pid", f"container:{sleeper}", "--ipc", "shareable",
                "busybox", "sh", "-c", "ps -o comm | grep -c sleep")
    assert joined.stdout.strip() == "1", joined.stderr
    assert mr(engine, "run", "--rm", "--ipc", "private", "busybox", "true").returncode == 0


def test_cgroup_parent(engine):  # noqa: F811
    parent = f"dkverbs-{os.urandom(3).hex()}"
    out = mr(engine, "run", "--rm", "--cgroup-parent", parent, "busybox", "cat",
             "/proc/self/cgroup")
    try:
        assert out.returncode == 0, out.stderr
        assert f"/minirun/{parent}/" in out.stdout
    finally:
        remove_cgroup_tree(f"/minirun/{parent}")


def test_stop_signal_and_timeout(engine):  # noqa: F811
    name = f"ss{os.urandom(3).hex()}"
    mr(engine, "run", "-d", "--name", name, "--stop-signal", "USR1", "busybox", "sh", "-c",
       "trap 'echo got-usr1; exit 0' USR1; while true; do sleep 0.1; done", check=True)
    try:
        time.sleep(0.3)
        mr(engine, "stop", name, check=True)
        assert "got-usr1" in mr(engine, "logs", name).stdout
        assert inspect(engine, name)["State"]["ExitCode"] == 0
    finally:
        engine("rm", "-f", name)
    name = f"st{os.urandom(3).hex()}"
    mr(engine, "run", "-d", "--name", name, "--stop-timeout", "1", "busybox", "sh", "-c",
       "trap '' TERM; while true; do sleep 0.1; done", check=True)
    try:
        time.sleep(0.3)
        start = time.monotonic()
        engine("stop", name, check=True)  # no -t: the container's own timeout
        assert time.monotonic() - start < 6
        assert inspect(engine, name)["State"]["ExitCode"] == 137
    finally:
        engine("rm", "-f", name)


def test_oom_kill_disable_and_platform(engine):  # noqa: F811
    from minirun.runflags import host_platform

    proc = mr(engine, "run", "--rm", "--platform", host_platform(), "-m", "32m",
              "--oom-kill-disable", "busybox", "sh", "-c",
              "cat /sys/fs/cgroup/memory/memory.oom_control 2>/dev/null | head -1; true")
    assert proc.returncode == 0, proc.stderr
    if not V2:
        assert proc.stdout == "oom_kill_disable 1\n"


@pytest.mark.parametrize("mode", ["z", "Z", "ro,z", "rw,Z", "nocopy", "private", "rprivate"])
def test_volume_modes_accepted(engine, tmp_path, mode):  # noqa: F811
    (tmp_path / "f").write_text("v\n")
    proc = mr(engine, "run", "--rm", "-v", f"{tmp_path}:/v:{mode}", "busybox", "sh", "-c",
              "cat /v/f; touch /v/w 2>/dev/null && echo rw || echo ro")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "v\n" + ("ro\n" if "ro" in mode.split(",") else "rw\n")


def test_volume_propagation_follows_the_host(engine, tmp_path):  # noqa: F811
    """rshared/rslave need the source on a shared mount: honoured when it is (a mount
    made below it inside the container shows on the host), refused naming the mount
    to change when it is not."""
    from minirun import mountinfo

    src = tmp_path / "shared"
    src.mkdir()
    subprocess.run(["mount", "--bind", str(src), str(src)], check=True)
    try:
        subprocess.run(["mount", "--make-private", str(src)], check=True)
        refused = mr(engine, "run", "--rm", "-v", f"{src}:/s:rshared", "busybox", "true")
        assert refused.returncode == 125 and "shared mount" in one_line_error(refused)
        subprocess.run(["mount", "--make-shared", str(src)], check=True)
        (src / "sub").mkdir()
        name = f"sh{os.urandom(3).hex()}"
        proc = mr(engine, "run", "-d", "--name", name, "--privileged", "-v",
                  f"{src}:/s:rshared", "busybox", "sh", "-c",
                  "mount -t tmpfs tmpfs /s/sub && echo hi > /s/sub/f && sleep 300")
        try:
            assert proc.returncode == 0, proc.stderr
            wait_for(lambda: str(src / "sub") in [m.mountpoint for m in mountinfo.read()])
            assert (src / "sub" / "f").read_text() == "hi\n"
        finally:
            engine("rm", "-f", name)
            subprocess.run(["umount", "-l", str(src / "sub")], stderr=subprocess.DEVNULL,
                           check=False)
        ok = mr(engine, "run", "--rm", "-v", f"{src}:/s:rslave", "busybox", "true")
        assert ok.returncode == 0, ok.stderr
    finally:
        for point in reversed(mounts_under(str(src))):
            subprocess.run(["umount", "-l", point], check=False)
        subprocess.run(["umount", "-l", str(src)], check=False)


def test_volume_u_chowns_to_the_container_user(engine, tmp_path):  # noqa: F811
    d = tmp_path / "own"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "f").write_text("x")
    os.symlink("/etc/passwd", d / "link")
    before = os.stat("/etc/passwd")
    proc = mr(engine, "run", "--rm", "-u", "1000:1000", "-v", f"{d}:/data:U", "busybox",
              "sh", "-c", "echo mine > /data/sub/f && id -u")
    assert proc.returncode == 0, proc.stderr
    assert (d / "sub" / "f").read_text() == "mine\n"
    assert os.stat(d / "sub").st_uid == 1000 and os.lstat(d / "link").st_uid == 1000
    after = os.stat("/etc/passwd")
    assert (after.st_uid, after.st_gid) == (before.st_uid, before.st_gid)  # not followed
    refused = mr(engine, "run", "--rm", "-v", "/:/host:U", "busybox", "true")
    assert refused.returncode == 125 and "U" in one_line_error(refused)


def test_anonymous_volume_is_in_use_while_its_container_is(engine):  # noqa: F811
    name = f"an{os.urandom(3).hex()}"
    mr(engine, "run", "-d", "--name", name, "-v", "/anon", "-v", "/anon-ro:ro", "busybox",
       "sh", "-c", "echo kept > /anon/f; sleep 300", check=True)
    try:
        anon = [v for v in mr(engine, "volume", "ls", "-q").stdout.split() if len(v) == 64]
        assert len(anon) >= 2
        mr(engine, "volume", "prune", "-f", check=True)
        assert set(anon) <= set(mr(engine, "volume", "ls", "-q").stdout.split())
        wait_for(lambda: mr(engine, "exec", name, "cat", "/anon/f").stdout == "kept\n")
        ro = mr(engine, "exec", name, "touch", "/anon-ro/x")
        assert ro.returncode != 0
    finally:
        engine("rm", "-f", name)
    pruned = mr(engine, "volume", "prune", "-f")
    assert all(v in pruned.stdout for v in anon)


def test_mount_flag(engine, tmp_path):  # noqa: F811
    (tmp_path / "f").write_text("bound\n")
    vol = f"mv{os.urandom(3).hex()}"
    proc = mr(engine, "run", "--rm",
              "--mount", f"type=bind,source={tmp_path},target=/b,readonly",
              "--mount", f"type=volume,source={vol},target=/v,volume-nocopy",
              "--mount", "type=tmpfs,target=/t,tmpfs-size=1m",
              "busybox", "sh", "-c",
              "cat /b/f; touch /b/x 2>/dev/null || echo ro; echo in-vol > /v/f; "
              "df -k /t | tail -1 | awk '{print $2}'")
    try:
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split() == ["bound", "ro", "1024"]
        info = json.loads(mr(engine, "volume", "inspect", vol).stdout)[0]
        with open(os.path.join(info["Mountpoint"], "f")) as f:
            assert f.read() == "in-vol\n"
    finally:
        mr(engine, "volume", "rm", vol)


# --- messages -----------------------------------------------------------------------------------

def test_logs_tail_minus_one_is_everything(engine, podman):  # noqa: F811
    name = f"lg{os.urandom(3).hex()}"
    for cli in (lambda *a: mr(engine, *a), podman):
        cli("run", "--name", name, "busybox", "sh", "-c", "echo a; echo b; echo c")
        assert cli("logs", "--tail", "-1", name).stdout == "a\nb\nc\n"
        assert cli("logs", "--tail", "1", name).stdout == "c\n"
        cli("rm", "-f", name)


def test_top_of_a_stopped_container(engine, podman):  # noqa: F811
    name = f"tp{os.urandom(3).hex()}"
    mr(engine, "run", "--name", name, "busybox", "true", check=True)
    podman("run", "--name", name, "busybox", "true")
    try:
        ours, theirs = mr(engine, "top", name), podman("top", name)
        assert ours.returncode == 1
        assert one_line_error(ours) == f"minirun: error: container {name} is not running"
        assert theirs.returncode != 0 and "running" in theirs.stderr
    finally:
        engine("rm", "-f", name)
        podman("rm", "-f", name)


def test_default_names_are_adjective_surname(engine):  # noqa: F811
    ids = [mr(engine, "create", "busybox", "true", check=True).stdout.strip()
           for _ in range(3)]
    try:
        names = [inspect(engine, cid)["Name"].lstrip("/") for cid in ids]
        assert all(NAME_RE.match(n) for n in names), names
        assert len(set(names)) == 3
    finally:
        for cid in ids:
            engine("rm", "-f", cid)


def test_random_names_retry_on_collision(engine, monkeypatch):  # noqa: F811
    """Taken names are skipped: the engine asks for another (with a digit, as docker)."""
    from minirun import names

    calls = []

    def fake(retry=0):
        calls.append(retry)
        return "taken_name" if retry < 2 else f"free_name{retry}"

    from minirun.engine import Engine

    e = Engine(root=engine.root, run_root=engine.run_root)
    first = mr(engine, "create", "--name", "taken_name", "busybox", "true", check=True)
    try:
        monkeypatch.setattr(names, "random_name", fake)
        from minirun.engine import RunOptions

        cid = e.prepare("busybox", RunOptions(command=["true"], network="none"))
        assert e.get(cid)["name"] == "free_name2" and calls[:3] == [0, 1, 2]
        e.remove(cid, force=True)
    finally:
        engine("rm", "-f", first.stdout.strip())


def test_cp_commit_export_in_a_user_namespace(engine, tmp_path):  # noqa: F811
    """Files of a container in a user namespace are owned by shifted host ids on disk:
    what goes in is owned by the container's root, archives carry the container's ids."""
    name = f"us{os.urandom(3).hex()}"
    # the container's root (an unprivileged host uid) must search its way to the root:
    # the test's own temporary directories are opened to others for the test
    opened = []
    path = engine.root
    while path.startswith(tempfile.gettempdir() + "/"):
        mode = os.stat(path).st_mode
        if not mode & 0o001:
            os.chmod(path, (mode & 0o7777) | 0o011)
            opened.append((path, mode & 0o7777))
        path = os.path.dirname(path)
    proc = mr(engine, "run", "-d", "--name", name, "--userns", "auto", "busybox", "sh", "-c",
              "echo made > /tmp/f; chown 1:1 /tmp/f; sleep 300")
    try:
        if proc.returncode != 0 and "overlayfs refuses idmapped" in proc.stderr:
            pytest.skip(f"--userns auto does not work here: {proc.stderr.strip()}")
        assert proc.returncode == 0, proc.stderr
        wait_for(lambda: mr(engine, "exec", name, "cat", "/tmp/f").stdout == "made\n")
        (tmp_path / "in").write_text("in\n")
        assert mr(engine, "cp", str(tmp_path / "in"), f"{name}:/tmp/in").returncode == 0
        assert mr(engine, "exec", name, "stat", "-c", "%u:%g", "/tmp/in", "/tmp/f"
                  ).stdout.split() == ["0:0", "1:1"]
        out = raw(engine, None, "minirun", "cp", f"{name}:/tmp/f", "-")
        info = _tar_names(out.stdout)["f"]
        assert (info.uid, info.gid) == (1, 1)
        exported = _tar_names(raw(engine, None, "minirun", "export", name).stdout)
        assert (exported["tmp/f"].uid, exported["tmp/in"].uid) == (1, 0)
        ref = f"userns{os.urandom(2).hex()}"
        assert mr(engine, "commit", name, ref).returncode == 0
        got = mr(engine, "run", "--rm", ref, "stat", "-c", "%u:%g", "/tmp/f", "/tmp/in")
        assert got.stdout.split() == ["1:1", "0:0"], got
    finally:
        engine("rm", "-f", name)
        for path, mode in opened:
            os.chmod(path, mode)


def test_flag_readers():
    """runflags' readings, without containers."""
    from minirun import runflags
    from minirun.errors import InvalidArgument
    from minirun.image.commit import apply_changes

    assert runflags.parse_devices(["/dev/fuse", "/dev/a:/dev/b", "/dev/a:r",
                                   "/dev/a:/dev/b:rw"]) == [
        {"host": "/dev/fuse", "container": "/dev/fuse", "permissions": "rwm"},
        {"host": "/dev/a", "container": "/dev/b", "permissions": "rwm"},
        {"host": "/dev/a", "container": "/dev/a", "permissions": "r"},
        {"host": "/dev/a", "container": "/dev/b", "permissions": "rw"}]
    assert runflags.mount_to_volume("type=bind,src=/x,dst=/y,ro,bind-propagation=rslave") == \
        ("volume", "/x:/y:ro,rslave")
    assert runflags.mount_to_volume("type=tmpfs,target=/t,tmpfs-size=1m,tmpfs-mode=1777") == \
        ("tmpfs", "/t:size=1m,mode=1777")
    assert runflags.mount_to_volume("type=volume,source=v,target=/d,volume-nocopy") == \
        ("volume", "v:/d:nocopy")
    assert runflags.parse_volume_modes("s", "ro,Z,rslave,U") == ("ro", "rslave", True)
    with pytest.raises(InvalidArgument, match="more than one propagation"):
        runflags.parse_volume_modes("s", "rshared,rslave")
    # no swap accounting: the swap limit goes, with docker's warning when it was asked for
    warned = []
    orig = runflags.swap_supported
    try:
        runflags.swap_supported = lambda: False
        got = runflags.memory_fields("64m", "128m", None, warned.append)
        assert got["memory_bytes"] == 64 * MiB and got["memory_swap"] is None
        assert warned and "swap limit capabilities" in warned[0]
        runflags.swap_supported = lambda: True
        assert runflags.memory_fields("64m", None, None)["memory_swap"] == 128 * MiB
        assert runflags.memory_fields("64m", "-1", None)["memory_swap"] == -1
        assert runflags.memory_fields("0", None, None)["memory_bytes"] is None
    finally:
        runflags.swap_supported = orig
    assert runflags.check_cpus("0") is None and runflags.check_cpus("0.5") == "0.5"
    assert runflags.parse_labels(["a", "b=c=d"], []) == {"a": "", "b": "c=d"}
    cfg = apply_changes({"Cmd": ["sh"], "Env": ["A=1"]},
                        ["ENTRYPOINT /run.sh", "ENV A=2 B=3", "EXPOSE 80 53/udp",
                         "LABEL k=v", "USER 1000", "WORKDIR /w", "STOPSIGNAL USR1",
                         "VOLUME /data"])
    assert cfg == {"Entrypoint": ["/bin/sh", "-c", "/run.sh"], "Env": ["A=2", "B=3"],
                   "ExposedPorts": {"80/tcp": {}, "53/udp": {}}, "Labels": {"k": "v"},
                   "User": "1000", "WorkingDir": "/w", "StopSignal": "USR1",
                   "Volumes": {"/data": {}}}
    with pytest.raises(InvalidArgument, match="RUN"):
        apply_changes({}, ["RUN echo"])
