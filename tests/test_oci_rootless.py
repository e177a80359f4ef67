"""Rootless: an unprivileged user runs a container in a user namespace mapping its own uid
to root; cgroup limits it cannot apply are warned about, naming the limit."""

import json
import os
import shutil
import subprocess
import tempfile

import pytest

from ocitest import OCI_CMD, REPO, needs_root, rootfs  # noqa: F401
from minirun.spec import default_spec

pytestmark = [needs_root, pytest.mark.root]

NOBODY = 65534


@pytest.fixture
def rootless_bundle(rootfs):
    top = tempfile.mkdtemp(prefix="minirun-rootless-")
    try:
        os.chmod(top, 0o755)
        shutil.copytree(rootfs, os.path.join(top, "rootfs"), symlinks=True)
        os.makedirs(os.path.join(top, "state"))
        subprocess.run(["chown", "-R", f"{NOBODY}:{NOBODY}", top], check=True)
        yield top
    finally:
        subprocess.run(["rm", "-rf", "--one-file-system", top], check=True)


def as_nobody(*args, cwd=None):
    cmd = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--"]
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": REPO, "HOME": "/"}
    return subprocess.run(cmd + OCI_CMD + list(args), capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=60)


def write_config(top: str, args: list[str], resources: dict | None = None) -> None:
    cfg = default_spec(rootless=True)
    cfg["process"]["terminal"] = False
    cfg["process"]["args"] = args
    for m in cfg["linux"]["uidMappings"] + cfg["linux"]["gidMappings"]:
        m["hostID"] = NOBODY
    if resources:
        cfg["linux"]["resources"] = resources
    with open(os.path.join(top, "config.json"), "w") as f:
        json.dump(cfg, f)
    os.chown(os.path.join(top, "config.json"), NOBODY, NOBODY)


def test_rootless_run(rootless_bundle):
    top = rootless_bundle
    write_config(top, ["sh", "-c", "id -u; cat /proc/self/uid_map"])
    proc = as_nobody("--root", os.path.join(top, "state"), "run", "--bundle", top, "rl1")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "0"
    assert lines[1].split() == ["0", str(NOBODY), "1"]
    assert os.listdir(os.path.join(top, "state")) == []


def test_rootless_limits_warned_by_name(rootless_bundle):
    top = rootless_bundle
    write_config(top, ["true"], {"memory": {"limit": 64 * 1024 * 1024}})
    proc = as_nobody("--root", os.path.join(top, "state"), "run", "--bundle", top, "rl2")
    assert proc.returncode == 0, proc.stderr
    assert "warning" in proc.stderr
    assert "memory.limit" in proc.stderr
    assert not any(os.path.isdir(f"/sys/fs/cgroup/{c}/minirun/rl2") for c in ("memory", "pids"))


def test_rootless_default_state_dir(rootless_bundle):
    top = rootless_bundle
    write_config(top, ["true"])
    runtime_dir = os.path.join(top, "xdg")
    os.mkdir(runtime_dir, 0o700)
    os.chown(runtime_dir, NOBODY, NOBODY)
    cmd = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--"]
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": REPO, "HOME": "/",
           "XDG_RUNTIME_DIR": runtime_dir}
    # output to files: the created init keeps its stdio open, a pipe would never close
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.run(cmd + OCI_CMD + ["create", "--bundle", top, "rl3"],
                              stdout=subprocess.DEVNULL, stderr=err, env=env, timeout=60)
        err.seek(0)
        stderr = err.read()
    try:
        assert proc.returncode == 0, stderr
        assert os.path.isdir(os.path.join(runtime_dir, "minirun", "rl3"))
    finally:
        subprocess.run(cmd + OCI_CMD + ["delete", "--force", "rl3"], env=env, timeout=60)
    assert not os.path.exists(os.path.join(runtime_dir, "minirun", "rl3"))
