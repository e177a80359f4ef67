"""Shared helpers for the minirun-oci integration tests.

base_config() is the `runc spec` default with a busybox command; `oci` drives the real
command line in a temporary state root and, whatever the test did, force-deletes what is
left and checks the host is clean (no state dir, cgroup, mount or process).
"""

from __future__ import annotations

import copy
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from minirun.spec import default_spec  # noqa: E402

OCI_CMD = os.environ.get("MINIRUN_OCI", "").split() or [sys.executable, "-m", "minirun.oci_cli"]
CGROUP_ROOT = "/sys/fs/cgroup"
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


def build_rootfs(dest: str) -> str:
    """The busybox rootfs from rootfs/build.sh, built once into `dest`."""
    rootfs = os.path.join(dest, "rootfs")
    if not os.path.isdir(os.path.join(rootfs, "bin")):
        subprocess.run([os.path.join(REPO, "rootfs", "build.sh"), dest], check=True,
                       stdout=subprocess.DEVNULL)
    return rootfs


def base_config(args: list[str] | None = None, rootfs: str = "rootfs") -> dict:
    cfg = copy.deepcopy(default_spec())
    cfg["process"]["terminal"] = False
    cfg["process"]["args"] = args or ["true"]
    cfg["root"] = {"path": rootfs, "readonly": True}
    return cfg


def new_id(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def container_cgroup_dirs(cgroup_path: str) -> list[str]:
    """Host directories of a container's cgroup path, in every mounted hierarchy."""
    rel = cgroup_path.lstrip("/")
    found = []
    for d in glob.glob(os.path.join(CGROUP_ROOT, "*")) + [CGROUP_ROOT]:
        p = os.path.join(d, rel)
        if os.path.isdir(p):
            found.append(p)
    return found


def processes_rooted_in(path: str) -> list[int]:
    """Processes whose root directory is `path`, compared by device and inode: after
    pivot_root, readlink of /proc/<pid>/root says "/" from the host."""
    want = os.stat(path)
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                st = os.stat(f"/proc/{entry}/root")
            except OSError:
                continue
            if (st.st_dev, st.st_ino) == (want.st_dev, want.st_ino):
                found.append(int(entry))
    return found


def mounts_mentioning(text: str) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line for line in f if text in line]


class Oci:
    """The minirun-oci command line against a private state root."""

    def __init__(self, tmp_path) -> None:
        self.tmp = tmp_path
        self.root = str(tmp_path / "state")
        self.ids: list[str] = []
        self.bundles: list[str] = []

    def __call__(self, *args, check: bool = False, timeout: float = 60,
                 **kw) -> subprocess.CompletedProcess:
        """Run minirun-oci. Output goes through files, not pipes: a created or detached
        container keeps its stdio open, and a pipe would never reach EOF (as with runc)."""
        cmd = OCI_CMD + ["--root", self.root] + [str(a) for a in args]
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            rc = subprocess.run(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                timeout=timeout, **kw).returncode
            out.seek(0)
            err.seek(0)
            proc = subprocess.CompletedProcess(cmd, rc, out.read(), err.read())
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr}")
        return proc

    def bundle(self, cfg: dict, rootfs: str, name: str | None = None) -> str:
        """A bundle dir with config.json; root.path points at the shared rootfs unless the
        config names another."""
        path = self.tmp / (name or f"bundle-{len(self.bundles)}")
        path.mkdir()
        cfg = copy.deepcopy(cfg)
        if cfg["root"]["path"] == "rootfs":
            cfg["root"]["path"] = rootfs
        (path / "config.json").write_text(json.dumps(cfg))
        self.bundles.append(str(path))
        return str(path)

    def new_id(self) -> str:
        cid = new_id()
        self.ids.append(cid)
        return cid

    def state(self, cid: str) -> dict:
        proc = self("state", cid, check=True)
        return json.loads(proc.stdout)

    def run(self, cfg: dict, rootfs: str, **kw) -> subprocess.CompletedProcess:
        cid = self.new_id()
        bundle = self.bundle(cfg, rootfs)
        return self("run", "--bundle", bundle, cid, **kw)

    def cleanup(self) -> list[str]:
        """Force-delete everything and return what was left on the host."""
        leaks = []
        for cid in self.ids:
            self("delete", "--force", cid)
            if os.path.exists(os.path.join(self.root, cid)):
                leaks.append(f"state dir of {cid}")
            for d in container_cgroup_dirs(f"/minirun/{cid}"):
                leaks.append(f"cgroup {d}")
                _remove_cgroup(d)
        for b in self.bundles:
            if mounts_mentioning(b):
                leaks.append(f"mounts under {b}")
        return leaks


def _remove_cgroup(path: str) -> None:
    for _ in range(50):
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.05)


@pytest.fixture(scope="session")
def rootfs(tmp_path_factory) -> str:
    return build_rootfs(str(tmp_path_factory.mktemp("busybox")))


@pytest.fixture
def oci(tmp_path):
    o = Oci(tmp_path)
    yield o
    leaks = o.cleanup()
    assert not leaks, f"left on the host: {leaks}"


def wait_for(pred, timeout: float = 10.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(interval)
    return pred()


def copy_rootfs(src: str, dest: str) -> str:
    # cp -a keeps busybox's hard links (copytree would make ~500 MB of copies)
    subprocess.run(["cp", "-a", src, dest], check=True)
    return dest


RUNC = shutil.which("runc") or ("/usr/sbin/runc" if os.path.exists("/usr/sbin/runc") else None)
needs_runc = pytest.mark.skipif(RUNC is None, reason="runc is not installed")


def runc_run(tmp_path, bundle: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """`runc run` of a copy of a bundle in a private state root, force-deleted afterwards:
    what the oracle makes of the same config. Its cgroup goes under /minirun, as ours
    (runc's default path would follow this process's own cgroup in some hierarchies)."""
    root = str(tmp_path / "runc-state")
    cid = new_id("runc")
    with open(os.path.join(bundle, "config.json")) as f:
        cfg = json.load(f)
    cfg.setdefault("linux", {})["cgroupsPath"] = f"/minirun/{cid}"
    copy = tmp_path / cid
    copy.mkdir()
    (copy / "config.json").write_text(json.dumps(cfg))
    try:
        return subprocess.run([RUNC, "--root", root, "run", "--bundle", str(copy), cid],
                              capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, check=False)
    finally:
        subprocess.run([RUNC, "--root", root, "delete", "--force", cid],
                       capture_output=True, check=False)
        for d in container_cgroup_dirs(f"/minirun/{cid}"):
            _remove_cgroup(d)
