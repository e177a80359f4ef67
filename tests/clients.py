"""Helpers for the tests that drive minirun-oci through real clients (podman, containerd).

- `runtime_wrapper` writes the executable those clients need as a runtime path: a small
  launcher that logs each command line the client issues, then runs minirun-oci from
  this checkout in-process (as the launcher of scripts/install.sh does).
- `remove_cgroup_tree`, `unmount_under` and `remove_tree` undo what a client left on the
  host, in that order, whatever the test did.
- `oci_image_archive` turns the busybox rootfs tarball into an OCI image layout archive
  that `ctr images import` accepts, without needing podman or skopeo.
- `run_in_pty` drives an interactive command (`podman run -it`, `ctr run -t`) on a new
  pseudo-terminal.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import platform
import select
import signal
import subprocess
import sys
import sysconfig
import tarfile
import time
import uuid

from ocitest import CGROUP_ROOT, REPO

CAP_SYS_RESOURCE = 24
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def run_token() -> str:
    """A short random name, so that two test runs on one host never share a cgroup."""
    return uuid.uuid4().hex[:8]


# --- the runtime executable ---------------------------------------------------------------

def runtime_wrapper(path: str, call_log: str, default_root: str | None = None) -> str:
    """Write an executable minirun-oci at `path` that appends each argv (a JSON list) to
    `call_log`. With `default_root`, a call without --root gets `--root default_root`:
    podman passes no --root to its runtime, and its cleanup process would not pass a
    `--runtime-flag` on, so this keeps the state of the test's containers in the test's
    temporary directory."""
    site_packages = sysconfig.get_paths()["purelib"]
    # -S: no site (and no editable-install finder, ~25 ms a call); -E: no PYTHON* variables.
    text = f"""#!{sys.executable} -SE
import json
import sys

sys.path[0] = {REPO!r}
sys.path.append({site_packages!r})
argv = sys.argv[1:]
with open({call_log!r}, "a") as f:
    f.write(json.dumps(argv) + "\\n")
default_root = {default_root!r}
if default_root and not any(a == "--root" or a.startswith("--root=") for a in argv):
    argv = ["--root", default_root] + argv
from minirun.oci_cli import main

raise SystemExit(main(argv))
"""
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o755)
    return path


def read_calls(call_log: str) -> list[list[str]]:
    try:
        with open(call_log) as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []


def format_calls(call_log: str) -> str:
    return "\n".join("minirun-oci " + " ".join(argv) for argv in read_calls(call_log))


def has_cap_sys_resource() -> bool:
    """Whether this process may raise hard rlimits (this VM's root lacks it)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> CAP_SYS_RESOURCE & 1)
    return False


# --- host cleanup ---------------------------------------------------------------------------

def cgroup_dirs(parent: str) -> list[str]:
    """`parent` (a path from the hierarchy root) in every mounted cgroup hierarchy."""
    rel = parent.strip("/")
    found = []
    for hierarchy in sorted(os.listdir(CGROUP_ROOT)) + [""]:
        d = os.path.join(CGROUP_ROOT, hierarchy, rel) if hierarchy else \
            os.path.join(CGROUP_ROOT, rel)
        if os.path.isdir(d) and os.path.exists(os.path.join(d, "cgroup.procs")):
            found.append(d)
    return sorted(set(found))


def cgroup_pids(path: str) -> list[int]:
    pids = set()
    for dirpath, _dirs, files in os.walk(path):
        if "cgroup.procs" in files:
            try:
                with open(os.path.join(dirpath, "cgroup.procs")) as f:
                    pids.update(int(p) for p in f.read().split())
            except OSError:
                pass
    return sorted(pids)


def remove_cgroup_tree(parent: str, timeout: float = 10.0) -> list[str]:
    """Remove `parent` and everything below it in every hierarchy, deepest first.

    Processes still inside were started for the test (a conmon, a shim or a container
    that outlived a failed test): they are killed by pid first. Returns the directories
    that could not be removed."""
    leftovers = []
    for top in cgroup_dirs(parent):
        for pid in cgroup_pids(top):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        dirs = [dirpath for dirpath, _d, _f in os.walk(top)]
        for d in sorted(dirs, key=lambda p: p.count("/"), reverse=True):
            deadline = time.monotonic() + timeout
            while True:
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError as e:
                    if e.errno != errno.EBUSY or time.monotonic() > deadline:
                        leftovers.append(d)
                        break
                    time.sleep(0.05)
    return leftovers


def remove_empty_parent_cgroup(parent: str) -> None:
    """rmdir a shared parent such as /minirun-podman-test where it is empty; another test
    run may still be using it, so a busy one stays."""
    for d in cgroup_dirs(parent):
        try:
            os.rmdir(d)
        except OSError:
            pass


def mounts_under(path: str) -> list[str]:
    """Mount points at or below `path`, deepest first."""
    path = os.path.realpath(path)
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            target = line.split()[4].encode().decode("unicode_escape")
            if target == path or target.startswith(path + "/"):
                found.append(target)
    return sorted(found, key=lambda p: p.count("/"), reverse=True)


def unmount_under(path: str) -> list[str]:
    """Lazily unmount everything mounted at or below `path`; returns what was unmounted."""
    done = []
    for _ in range(5):
        targets = mounts_under(path)
        if not targets:
            break
        for target in targets:
            if subprocess.run(["umount", "-l", target], capture_output=True, check=False).returncode == 0:
                done.append(target)
    return done


def remove_tree(path: str) -> None:
    """rm -rf a test directory that a client may have mounted things in."""
    if not os.path.lexists(path):
        return
    unmount_under(path)
    left = mounts_under(path)
    if left:
        raise AssertionError(f"refusing to remove {path}: still mounted: {left}")
    subprocess.run(["rm", "-rf", "--one-file-system", "--", path], check=True)


def kill_pid(pid: int, timeout: float = 15.0) -> None:
    """SIGTERM a daemon we started, SIGKILL it if it does not go, and reap it."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                got, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                got = pid if not os.path.exists(f"/proc/{pid}") else 0
            if got == pid:
                return
            time.sleep(0.05)


# --- images ---------------------------------------------------------------------------------

def build_rootfs_tarball(dest: str) -> str:
    path = os.path.join(dest, "busybox-rootfs.tar")
    if not os.path.exists(path):
        subprocess.run([os.path.join(REPO, "rootfs", "build.sh"), "--tar", path], check=True,
                       stdout=subprocess.DEVNULL)
    return path


def _go_arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}.get(
        machine, machine)


def oci_image_archive(rootfs_tar: str, dest: str, ref: str) -> str:
    """An OCI image layout archive (oci-layout, index.json, blobs/sha256/...) with the
    rootfs tarball as its one uncompressed layer, named `ref` for containerd."""
    with open(rootfs_tar, "rb") as f:
        layer = f.read()

    def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(data))

    def add_blob(tar: tarfile.TarFile, data: bytes) -> dict:
        digest = hashlib.sha256(data).hexdigest()
        add(tar, f"blobs/sha256/{digest}", data)
        return {"digest": f"sha256:{digest}", "size": len(data)}

    with tarfile.open(dest, "w") as tar:
        layer_desc = add_blob(tar, layer)
        config = {
            "architecture": _go_arch(), "os": "linux",
            "config": {"Env": [f"PATH={DEFAULT_PATH}"], "Cmd": ["sh"], "WorkingDir": "/"},
            "rootfs": {"type": "layers", "diff_ids": [layer_desc["digest"]]},
        }
        config_desc = add_blob(tar, json.dumps(config).encode())
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       **config_desc},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **layer_desc}],
        }
        manifest_desc = add_blob(tar, json.dumps(manifest).encode())
        index = {
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json", **manifest_desc,
                "annotations": {"io.containerd.image.name": ref,
                                "org.opencontainers.image.ref.name": ref.rpartition(":")[2]},
            }],
        }
        add(tar, "oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
        add(tar, "index.json", json.dumps(index).encode())
    return dest


# --- terminals ------------------------------------------------------------------------------

def run_in_pty(cmd: list[str], send: bytes, wait_for: bytes | None = None,
               timeout: float = 60.0, env: dict | None = None) -> tuple[int, str]:
    """Run `cmd` with a new pseudo-terminal as its stdin, stdout and stderr; once
    `wait_for` shows up in the output (at once if None), type `send`.
    Returns the exit status and everything the command wrote to the terminal."""
    master, slave = os.openpty()
    try:
        proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave,
                                start_new_session=True, env=env)
    finally:
        os.close(slave)
    out = b""
    sent = False
    deadline = time.monotonic() + timeout
    try:
        while True:
            if not sent and (wait_for is None or wait_for in out):
                os.write(master, send)
                sent = True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{cmd[0]} still running after {timeout}s; "
                                     f"output so far: {out.decode(errors='replace')!r}")
            ready, _, _ = select.select([master], [], [], min(remaining, 1.0))
            if not ready:
                continue
            try:
                chunk = os.read(master, 4096)
            except OSError as e:
                if e.errno == errno.EIO:  # every process holding the slave has gone
                    break
                raise
            if not chunk:
                break
            out += chunk
        status = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return status, out.decode(errors="replace")

