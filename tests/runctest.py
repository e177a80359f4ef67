"""runc (1.1.5 here) as the independent witness: the same config run by the real runc,
in its own state root, with its cgroup under the `minirun` parent; and a runner that
gives a command a pty of its own (for `terminal: true` in the foreground)."""

from __future__ import annotations

import copy
import json
import os
import pty
import select
import shutil
import subprocess
import time
import uuid

import pytest

RUNC = shutil.which("runc")
needs_runc = pytest.mark.skipif(RUNC is None, reason="runc is not installed")


def runc_cmd(state_root: str) -> list[str]:
    return [RUNC or "runc", "--root", state_root]


def runc_bundle(cfg: dict, rootfs: str, dest: str) -> str:
    """A bundle dir for runc: root.path "rootfs" means the shared one; the cgroup goes
    under /minirun/ (runc removes it on delete)."""
    cfg = copy.deepcopy(cfg)
    if cfg["root"]["path"] == "rootfs":
        cfg["root"]["path"] = rootfs
    cfg.setdefault("linux", {})["cgroupsPath"] = f"/minirun/runc-{uuid.uuid4().hex[:10]}"
    os.makedirs(dest)
    with open(os.path.join(dest, "config.json"), "w") as f:
        json.dump(cfg, f)
    return dest


def runc_run(cfg: dict, rootfs: str, tmp_path, *flags: str,
             tty: bool = False) -> subprocess.CompletedProcess:
    """`runc run [flags]` of `cfg`, force-deleted afterwards. With tty, runc runs on a
    pty of its own and stdout holds what the pty showed."""
    name = f"runc-{uuid.uuid4().hex[:10]}"
    bundle = runc_bundle(cfg, rootfs, str(tmp_path / f"{name}-bundle"))
    cmd = runc_cmd(str(tmp_path / "runc-state")) + ["run", *flags, "--bundle", bundle, name]
    try:
        if tty:
            out, rc = run_in_pty(cmd)
            return subprocess.CompletedProcess(cmd, rc, out.decode(errors="replace"), "")
        return subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              timeout=60, check=False)
    finally:
        subprocess.run(runc_cmd(str(tmp_path / "runc-state")) + ["delete", "--force", name],
                       capture_output=True, check=False)


def run_in_pty(cmd: list[str], timeout: float = 30.0) -> tuple[bytes, int]:
    """Run `cmd` with a new pty as its stdio: (everything it showed, exit code)."""
    pid, master = pty.fork()
    if pid == 0:
        try:
            os.execvp(cmd[0], cmd)
        finally:
            os._exit(127)
    out = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # EIO: the last holder of the slave closed it
                    break
                if not chunk:
                    break
                out += chunk
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                pid = 0
                return out, os.waitstatus_to_exitcode(status)
            time.sleep(0.05)
        raise AssertionError(f"{cmd} still running after {timeout}s: {out!r}")
    finally:
        os.close(master)
        if pid:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
