"""`minirun run --userns`: the container's root is an unprivileged host uid, and the image's
files, through idmapped layers, keep their owners from the image inside it."""

import json
import os
import signal
import subprocess
import sys
import tempfile

import pytest
from enginetest import EngineEnv, engine, searchable_engine  # noqa: F401
from ocitest import needs_root, wait_for

pytestmark = [needs_root, pytest.mark.root]

DEFAULT_START = 100000


@pytest.fixture(scope="module")
def uengine():
    """enginetest's engine, under a directory others may search (--userns auto)."""
    yield from searchable_engine("minirun-userns-engine-")


def mounts_under(top: str) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return sorted(line.split()[4] for line in f if top in line.split()[4])


def container_dirs(env) -> list[str]:
    path = os.path.join(env.root, "containers")
    return sorted(os.listdir(path)) if os.path.isdir(path) else []


def container_id(env, name: str) -> str:
    proc = env("inspect", name, check=True)
    return json.loads(proc.stdout)[0]["Id"]


def uengine_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "minirun.cli", *args]


def default_range(subid_file: str) -> tuple[str, str]:
    """The range README promises when MINIRUN_USERNS_RANGE is unset: the first
    `containers` entry of /etc/subuid (or /etc/subgid), else 100000:65536. Read here on
    its own, so that a host with such an entry tests that rule instead of skipping."""
    try:
        with open(subid_file) as f:
            for line in f:
                fields = line.strip().split(":")
                if len(fields) == 3 and fields[0] == "containers":
                    return fields[1], str(min(int(fields[2]), 65536))  # at most 65536 ids
    except FileNotFoundError:
        pass
    return str(DEFAULT_START), "65536"


def test_auto_maps_root_and_keeps_image_owners(uengine):
    proc = uengine("run", "--rm", "--userns", "auto", "busybox", "sh", "-c",
                   "id -u; id -g; cat /proc/self/uid_map /proc/self/gid_map; "
                   "stat -c '%u %g' /bin/busybox /etc/passwd /; "
                   "touch /root/x && stat -c %u /root/x")
    assert proc.returncode == 0, proc.stderr
    lines = [ln.split() for ln in proc.stdout.splitlines()]
    assert lines[0:2] == [["0"], ["0"]]
    assert lines[2] == ["0", *default_range("/etc/subuid")]
    assert lines[3] == ["0", *default_range("/etc/subgid")]
    assert lines[4:7] == [["0", "0"]] * 3
    assert lines[7] == ["0"]


def test_private_is_auto(uengine):
    proc = uengine("run", "--rm", "--userns", "private", "busybox", "sh", "-c",
                   "cat /proc/self/uid_map; stat -c %u /bin/busybox")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split()[0::2] == ["0", "65536"]
    assert lines[0].split()[1] != "0"
    assert lines[1] == "0"


def test_written_file_belongs_to_the_mapped_root_on_the_host(uengine):
    env = dict(uengine.env, MINIRUN_USERNS_RANGE="300000:65536")
    proc = subprocess.run(uengine_cmd("run", "--name", "writer", "--userns", "auto", "busybox",
                                      "sh", "-c", "echo hi > /made; mkdir /d; "
                                      "stat -c '%u %g' /made /d"),
                          env=env, capture_output=True, text=True, timeout=120, check=False)
    try:
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split("\n")[:2] == ["0 0", "0 0"]
        upper = os.path.join(uengine.root, "containers", container_id(uengine, "writer"),
                             "upper")
        for name in ("made", "d"):
            st = os.stat(os.path.join(upper, name))
            assert (st.st_uid, st.st_gid) == (300000, 300000), name
        # the image's own files are untouched: still root's in the shared layer
        layers = os.path.join(uengine.root, "layers")
        for chain in os.listdir(layers):
            busybox = os.path.join(layers, chain, "diff", "bin", "busybox")
            if os.path.exists(busybox):
                assert os.stat(busybox).st_uid == 0
    finally:
        uengine("rm", "-f", "writer")


def test_root_inside_is_not_root_outside(uengine):
    """A host file owned by root, bound read-write: the host's root in a container can
    write it, the container's root in its user namespace cannot."""
    host_dir = tempfile.mkdtemp(prefix="hostfile-", dir=uengine.top)
    os.chmod(host_dir, 0o755)
    target = os.path.join(host_dir, "owned-by-root")
    with open(target, "w") as f:
        f.write("original\n")
    os.chmod(target, 0o644)
    script = ("stat -c '%u %g' /hostfile; echo changed >> /hostfile && echo wrote; "
              "mknod /dev/mine c 1 3 && echo made-node; true")
    proc = uengine("run", "--rm", "--userns", "auto", "-v", f"{target}:/hostfile",
                   "busybox", "sh", "-c", script)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "65534 65534"  # the host's root is nobody inside
    assert "wrote" not in lines and "made-node" not in lines
    assert "Permission denied" in proc.stderr
    with open(target) as f:
        assert f.read() == "original\n"
    # the same without a user namespace writes: the check above can fail
    proc = uengine("run", "--rm", "-v", f"{target}:/hostfile", "busybox", "sh", "-c", script)
    assert proc.returncode == 0, proc.stderr
    assert "wrote" in proc.stdout.splitlines()


def test_detached_exec_inspect_and_rm_leave_no_mount(uengine):
    before = mounts_under(uengine.top)
    dirs_before = container_dirs(uengine)
    proc = uengine("run", "-d", "--name", "sleeper", "--userns", "auto", "busybox",
                   "sleep", "300")
    assert proc.returncode == 0, proc.stderr
    try:
        cid = proc.stdout.strip()
        with open("/proc/self/mountinfo") as f:
            lower = [line for line in f
                     if f"/containers/{cid}/lower/" in line.split()[4]]
        assert lower and all("idmapped" in line.split()[5] for line in lower), lower
        proc = uengine("exec", "sleeper", "sh", "-c", "id -u; cat /proc/self/uid_map; "
                       "stat -c %u /bin/busybox")
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.splitlines()
        assert lines[0] == "0" and lines[1].split()[0] == "0" and lines[2] == "0"
        info = json.loads(uengine("inspect", "sleeper", check=True).stdout)[0]
        assert info["HostConfig"]["UsernsMode"] == "auto"
        pid = info["State"]["Pid"]
        assert os.readlink(f"/proc/{pid}/ns/user") != os.readlink("/proc/self/ns/user")
        with open(f"/proc/{pid}/status") as f:
            uid_line = next(line for line in f if line.startswith("Uid:"))
        assert uid_line.split()[1] != "0"
    finally:
        uengine("rm", "-f", "sleeper")
    assert mounts_under(uengine.top) == before
    assert container_dirs(uengine) == dirs_before


def test_inspect_says_host_by_default(uengine):
    uengine("run", "--name", "plain", "busybox", "true", check=True)
    try:
        info = json.loads(uengine("inspect", "plain", check=True).stdout)[0]
        assert info["HostConfig"]["UsernsMode"] == "host"
    finally:
        uengine("rm", "-f", "plain")


@pytest.fixture
def userns_holder():
    """A sleeping process in a user namespace of ours mapping 0..65535 to 200000.., killed
    by pid afterwards."""
    holder = subprocess.Popen(["unshare", "--user", "sleep", "300"])
    try:
        assert wait_for(lambda: os.readlink(f"/proc/{holder.pid}/ns/user") !=
                        os.readlink("/proc/self/ns/user"))
        for kind in ("uid", "gid"):
            with open(f"/proc/{holder.pid}/{kind}_map", "w") as f:
                f.write("0 200000 65536\n")
        yield holder.pid
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()


def test_join_user_namespace_by_path(uengine, userns_holder):
    path = f"/proc/{userns_holder}/ns/user"
    before = mounts_under(uengine.top)
    proc = uengine("run", "--name", "joiner", "--userns", f"ns:{path}", "busybox", "sh",
                   "-c", "readlink /proc/self/ns/user; cat /proc/self/uid_map; id -u; "
                   "stat -c %u /bin/busybox; echo hi > /made")
    try:
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.splitlines()
        assert lines[0] == os.readlink(path)
        assert lines[1].split() == ["0", "200000", "65536"]
        assert lines[2:4] == ["0", "0"]
        upper = os.path.join(uengine.root, "containers", container_id(uengine, "joiner"),
                             "upper")
        assert os.stat(os.path.join(upper, "made")).st_uid == 200000
    finally:
        uengine("rm", "-f", "joiner")
    assert mounts_under(uengine.top) == before


def test_unmapped_user_namespace_is_refused(uengine):
    holder = subprocess.Popen(["unshare", "--user", "sleep", "300"])
    try:
        assert wait_for(lambda: os.readlink(f"/proc/{holder.pid}/ns/user") !=
                        os.readlink("/proc/self/ns/user"))
        proc = uengine("run", "--rm", "--userns", f"ns:/proc/{holder.pid}/ns/user",
                       "busybox", "true")
        assert proc.returncode == 125
        assert "no id mapping" in proc.stderr
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()


@pytest.mark.parametrize("args, message", [
    (["--userns", "bogus"], "invalid --userns mode 'bogus'"),
    (["--userns", "ns:relative/path"], "invalid --userns mode"),
    (["--userns", "ns:/no/such/namespace"], "No such file or directory"),
    (["--userns", "ns:/etc/passwd"], "is not a user namespace"),
    (["--userns", "ns:/proc/self/ns/net"], "is not a user namespace"),
    (["--userns", "ns:/proc/self/ns/user"], "is the host's user namespace"),
    (["--userns", "auto", "--privileged"], "--privileged cannot be used with --userns"),
    (["--privileged", "--userns", "private"], "--privileged cannot be used with --userns"),
])
def test_bad_userns_leaves_nothing(uengine, args, message):
    before = mounts_under(uengine.top)
    dirs_before = container_dirs(uengine)
    proc = uengine("run", "--rm", *args, "busybox", "true")
    assert proc.returncode == 125, proc.stderr
    assert message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert uengine("ps", "-a", "-q", check=True).stdout == ""
    assert container_dirs(uengine) == dirs_before
    assert mounts_under(uengine.top) == before


@pytest.mark.parametrize("value", ["0:65536", "100000", "a:b", "100000:0", "4294967000:65536"])
def test_bad_range_variable_is_refused(uengine, value):
    env = dict(uengine.env, MINIRUN_USERNS_RANGE=value)
    proc = subprocess.run(uengine_cmd("run", "--rm", "--userns", "auto", "busybox", "true"),
                          env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 125
    assert "MINIRUN_USERNS_RANGE" in proc.stderr
    assert uengine("ps", "-a", "-q", check=True).stdout == ""


def test_range_sources(tmp_path, monkeypatch):
    from minirun.engine import userns_range

    subuid = tmp_path / "subuid"
    subuid.write_text("alice:100000:65536\ncontainers:500000:1000000\n")
    monkeypatch.delenv("MINIRUN_USERNS_RANGE", raising=False)
    assert userns_range(str(subuid)) == (500000, 65536)  # at most 65536 ids
    assert userns_range(str(tmp_path / "missing")) == (100000, 65536)
    subuid.write_text("alice:100000:65536\n")
    assert userns_range(str(subuid)) == (100000, 65536)
    monkeypatch.setenv("MINIRUN_USERNS_RANGE", "700000:1000")
    assert userns_range(str(subuid)) == (700000, 1000)


def test_unsearchable_root_is_a_clear_error(engine):  # noqa: F811
    """enginetest's engine lives under pytest's 0700 directories: the container's root
    could not reach its rootfs, which is said before anything is made."""
    proc = engine("run", "--rm", "--userns", "auto", "busybox", "true")
    assert proc.returncode == 125
    assert "is not searchable by others" in proc.stderr
    assert engine("ps", "-a", "-q", check=True).stdout == ""
    assert not os.listdir(os.path.join(engine.root, "containers"))


@pytest.mark.parametrize("fail_at", ["mount_setattr", "mount"])
def test_idmap_refused_by_the_kernel_leaves_nothing(uengine, monkeypatch, fail_at):
    """As on a kernel or file system without idmapped mounts: mount_setattr, or overlay
    with idmapped lower layers, says EINVAL. One clear error, and no mount, directory or
    record is left."""
    import errno

    from minirun import sys as msys
    from minirun.errors import KernelFeatureMissing
    from minirun.image.store import IdMap, ImageStore

    def refuse(*args, **kw):
        raise msys.SysError(fail_at, "test", errno.EINVAL)

    store = ImageStore(uengine.root)
    before = mounts_under(uengine.top)
    dirs_before = container_dirs(uengine)
    idmap = IdMap(uid_mappings=({"containerID": 0, "hostID": 100000, "size": 65536},),
                  gid_mappings=({"containerID": 0, "hostID": 100000, "size": 65536},))
    monkeypatch.setattr(msys, fail_at, refuse)
    with pytest.raises(KernelFeatureMissing) as info:
        store.snapshot("busybox", "idmap-refused", idmap=idmap)
    monkeypatch.undo()
    assert "\n" not in str(info.value)
    assert mounts_under(uengine.top) == before
    assert container_dirs(uengine) == dirs_before
    assert store.get("busybox").containers == []
    store.close()
