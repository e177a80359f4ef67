"""OCI hooks: each kind runs at its moment, in its namespace, with the state on stdin;
a failing or hanging hook fails create cleanly."""

import json
import os

import pytest

from ocitest import (RUNC, base_config, container_cgroup_dirs, needs_root, oci,  # noqa: F401
                     rootfs, runc_run, wait_for)

pytestmark = [needs_root, pytest.mark.root]


def recording_hook(out_dir, name: str, extra: str = "") -> dict:
    """A host /bin/sh hook that saves its stdin (the state) and some facts about itself."""
    path = os.path.join(out_dir, name)
    script = (f"cat > {path}.state; readlink /proc/self/ns/mnt > {path}.mnt; "
              f"echo $HOOKVAR > {path}.env; {extra}")
    return {"path": "/bin/sh", "args": ["sh", "-c", script], "env": ["HOOKVAR=v-" + name]}


def test_all_hooks_run_in_order_with_state(oci, rootfs, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    cfg = base_config(["sh", "-c", "sleep 60"])
    cfg["hooks"] = {
        "prestart": [recording_hook(out, "prestart")],
        "createRuntime": [recording_hook(out, "createRuntime")],
        "createContainer": [recording_hook(out, "createContainer")],
        "poststart": [recording_hook(out, "poststart")],
        "poststop": [recording_hook(out, "poststop")],
    }
    cid = oci.new_id()
    bundle = oci.bundle(cfg, rootfs)
    oci("create", "--bundle", bundle, cid, check=True)
    pid = oci.state(cid)["pid"]
    for name in ("prestart", "createRuntime", "createContainer"):
        state = json.loads((out / f"{name}.state").read_text())
        assert state["id"] == cid
        assert state["pid"] == pid
        assert state["bundle"] == bundle
        assert (out / f"{name}.env").read_text().strip() == f"v-{name}"
    assert not (out / "poststart.state").exists()
    host_mnt = os.readlink("/proc/self/ns/mnt")
    ctr_mnt = os.readlink(f"/proc/{pid}/ns/mnt")
    # createRuntime runs in the runtime's namespace, createContainer in the container's
    assert (out / "createRuntime.mnt").read_text().strip() == host_mnt
    assert (out / "createContainer.mnt").read_text().strip() == ctr_mnt
    oci("start", cid, check=True)
    assert json.loads((out / "poststart.state").read_text())["status"] == "running"
    assert not (out / "poststop.state").exists()
    oci("delete", "--force", cid, check=True)
    assert json.loads((out / "poststop.state").read_text())["id"] == cid


def test_start_container_hook_runs_inside_after_start(oci, rootfs, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    cfg = base_config(["sh", "-c", "cat /shared/hook-was-here"])
    cfg["mounts"].append({"destination": "/shared", "type": "bind", "source": str(shared),
                          "options": ["rbind", "rw"]})
    # the path resolves in the container: busybox's /bin/sh
    cfg["hooks"] = {"startContainer": [
        {"path": "/bin/sh", "args": ["sh", "-c", "hostname > /shared/hook-was-here"]}]}
    cfg["hostname"] = "hooked"
    proc = oci.run(cfg, rootfs)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "hooked"


def test_failing_hook_fails_create_and_leaves_nothing(oci, rootfs):
    cfg = base_config(["true"])
    cfg["hooks"] = {"createRuntime": [{"path": "/bin/sh", "args": ["sh", "-c", "exit 3"]}]}
    cid = oci.new_id()
    proc = oci("create", "--bundle", oci.bundle(cfg, rootfs), cid)
    assert proc.returncode == 1
    assert "createRuntime hook /bin/sh failed with exit status 3" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not os.path.exists(os.path.join(oci.root, cid))
    assert container_cgroup_dirs(f"/minirun/{cid}") == []


def test_hanging_hook_times_out(oci, rootfs):
    cfg = base_config(["true"])
    cfg["hooks"] = {"createContainer": [{"path": "/bin/sleep", "args": ["sleep", "100"],
                                         "timeout": 1}]}
    cid = oci.new_id()
    proc = oci("create", "--bundle", oci.bundle(cfg, rootfs), cid, timeout=30)
    assert proc.returncode == 1
    assert "timed out after 1s" in proc.stderr
    assert not os.path.exists(os.path.join(oci.root, cid))
    assert container_cgroup_dirs(f"/minirun/{cid}") == []


def test_failing_poststop_hook_only_warns(oci, rootfs):
    cfg = base_config(["true"])
    cfg["hooks"] = {"poststop": [{"path": "/bin/false"}]}
    cid = oci.new_id()
    oci("create", "--bundle", oci.bundle(cfg, rootfs), cid, check=True)
    proc = oci("delete", cid)
    assert proc.returncode == 0
    assert "warning" in proc.stderr and "poststop" in proc.stderr
    assert not os.path.exists(os.path.join(oci.root, cid))


def test_create_killed_mid_setup_leaves_nothing_delete_cannot_clean(oci, rootfs, tmp_path):
    """kill -9 of `create` while a hook runs: the state says so, the init and the hook go
    away, and delete --force removes the rest."""
    import signal
    import subprocess
    from ocitest import OCI_CMD
    marker = tmp_path / "hook-pid"
    cfg = base_config(["true"])
    cfg["hooks"] = {"createRuntime": [
        {"path": "/bin/sh", "args": ["sh", "-c", f"echo $$ > {marker}; exec sleep 100"]}]}
    cid = oci.new_id()
    bundle = oci.bundle(cfg, rootfs)
    proc = subprocess.Popen(OCI_CMD + ["--root", oci.root, "create", "--bundle", bundle, cid],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: marker.exists() and marker.read_text().strip())
        state = oci.state(cid)
        assert state["status"] == "creating"
        init_pid = state["pid"]
        hook_pid = int(marker.read_text())
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert wait_for(lambda: not os.path.exists(f"/proc/{hook_pid}/cmdline") or
                    open(f"/proc/{hook_pid}/cmdline", "rb").read() == b"")
    assert wait_for(lambda: oci.state(cid)["status"] == "stopped")
    assert not os.path.exists(f"/proc/{init_pid}/cmdline") or \
        open(f"/proc/{init_pid}/cmdline", "rb").read() == b""
    oci("delete", "--force", cid, check=True)
    assert not os.path.exists(os.path.join(oci.root, cid))
    assert container_cgroup_dirs(f"/minirun/{cid}") == []


def _cmdline_recorder(path) -> dict:
    """A poststart hook that records the command line of the container's init (its pid
    from the state on stdin), NULs as spaces."""
    script = ('pid=$(sed -n \'s/.*"pid": *\\([0-9]*\\).*/\\1/p\'); '
              f'tr "\\0" " " < /proc/$pid/cmdline > {path}')
    return {"path": "/bin/sh", "args": ["sh", "-c", script]}


def test_poststart_runs_after_the_users_program_started(oci, rootfs, tmp_path):
    """Each time, the poststart hook finds the init already running `sleep 77`, never
    the runtime still setting it up. A slow startContainer hook (run by the init between
    start and its execve) makes the old race certain; the plain runs catch the rest."""
    seen = tmp_path / "cmdline"
    cfg = base_config(["sleep", "77"])
    cfg["hooks"] = {"poststart": [_cmdline_recorder(seen)]}
    plain = oci.bundle(cfg, rootfs)
    cfg["hooks"]["startContainer"] = [{"path": "/bin/sleep", "args": ["sleep", "0.3"]}]
    slow = oci.bundle(cfg, rootfs)
    for i in range(30):
        cid = oci.new_id()
        oci("create", "--bundle", slow if i % 6 == 0 else plain, cid, check=True)
        oci("start", cid, check=True)
        assert seen.read_text() == "sleep 77 ", f"iteration {i}"
        seen.unlink()
        oci("delete", "--force", cid, check=True)


def test_failing_start_container_hook_fails_start_without_poststart(oci, rootfs, tmp_path):
    seen = tmp_path / "cmdline"
    cfg = base_config(["sleep", "77"])
    cfg["hooks"] = {"startContainer": [{"path": "/bin/sh", "args": ["sh", "-c", "exit 4"]}],
                    "poststart": [_cmdline_recorder(seen)]}
    cid = oci.new_id()
    oci("create", "--bundle", oci.bundle(cfg, rootfs), cid, check=True)
    proc = oci("start", cid)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "minirun-oci: startContainer hook /bin/sh failed with exit status 4"]
    assert not seen.exists()
    assert wait_for(lambda: oci.state(cid)["status"] == "stopped")


def test_hooks_working_directories_as_runc(oci, rootfs, tmp_path):
    """runc runs prestart and createRuntime hooks from the bundle, createContainer hooks
    from the rootfs (in the container's mount namespace, before pivot_root)."""
    out = tmp_path / "out"
    out.mkdir()
    cfg = base_config(["true"])
    cfg["hooks"] = {kind: [{"path": "/bin/sh", "args": [
        "sh", "-c", f"pwd > {out}/{kind}; readlink /proc/self/cwd >> {out}/{kind}"]}]
        for kind in ("prestart", "createRuntime", "createContainer")}
    bundle = oci.bundle(cfg, rootfs)
    cid = oci.new_id()
    oci("create", "--bundle", bundle, cid, check=True, cwd="/")
    for kind in ("prestart", "createRuntime"):
        assert (out / kind).read_text().split() == [bundle, bundle], kind
    real = os.path.realpath(rootfs)
    assert (out / "createContainer").read_text().split() == [real, real]


def test_execve_failure_at_start_fails_start_without_poststart(oci, rootfs, tmp_path):
    """The init reports an execve that fails (here ENOEXEC, which the lookup at create
    cannot see) through the exec fifo: start says why, and poststart does not run."""
    seen = tmp_path / "cmdline"
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "bad").write_text("neither ELF nor #!\n")
    (bindir / "bad").chmod(0o755)
    cfg = base_config(["/x/bad"])
    cfg["mounts"].append({"destination": "/x", "type": "bind", "source": str(bindir),
                          "options": ["rbind", "ro"]})
    cfg["hooks"] = {"poststart": [_cmdline_recorder(seen)]}
    cid = oci.new_id()
    oci("create", "--bundle", oci.bundle(cfg, rootfs), cid, check=True)
    proc = oci("start", cid)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == ["minirun-oci: exec /x/bad: Exec format error"]
    assert not seen.exists()


@pytest.mark.parametrize("nnp", [True, False], ids=["no-new-privs", "privileged"])
def test_start_container_hook_runs_under_the_containers_seccomp_filter(oci, rootfs, tmp_path,
                                                                       nnp):
    """As runc: the filter is loaded before the init waits for start, so a startContainer
    hook is filtered like the container's program: what the profile blocks fails in it,
    and that fails the start."""
    shared = tmp_path / "shared"
    shared.mkdir()
    cfg = base_config(["sh", "-c", "echo started"])
    cfg["mounts"].append({"destination": "/shared", "type": "bind", "source": str(shared),
                          "options": ["rbind", "rw"]})
    cfg["process"]["noNewPrivileges"] = nnp
    cfg["linux"]["seccomp"] = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}]}
    script = "grep ^Seccomp: /proc/self/status > /shared/status; mkdir /dev/shm/hookdir"
    cfg["hooks"] = {"startContainer": [{"path": "/bin/sh", "args": ["sh", "-c", script]}]}
    bundle = oci.bundle(cfg, rootfs)
    proc = oci("run", "--bundle", bundle, oci.new_id())
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == ""  # the program never ran
    assert "can't create directory '/dev/shm/hookdir': Operation not permitted" in proc.stderr
    assert "startContainer hook /bin/sh failed with exit status 1" in proc.stderr
    assert (shared / "status").read_text().split() == ["Seccomp:", "2"]
    if RUNC:
        (shared / "status").unlink()
        theirs = runc_run(tmp_path, bundle)
        assert theirs.returncode != 0 and theirs.stdout == ""
        assert "can't create directory '/dev/shm/hookdir': Operation not permitted" in \
            theirs.stderr
        assert (shared / "status").read_text().split() == ["Seccomp:", "2"]
    # the same hook without the profile: it runs, and so does the program
    del cfg["linux"]["seccomp"]
    proc = oci("run", "--bundle", oci.bundle(cfg, rootfs), oci.new_id())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "started\n"
    assert (shared / "status").read_text().split() == ["Seccomp:", "0"]
