"""linux.seccomp: containers under a profile, checked from inside with busybox.

Blocked syscalls are seen the way a program sees them: the error message of the applet,
its exit status, 159 (128+SIGSYS) for a killed one, and `Seccomp: 2` in
/proc/self/status. Bad profiles must fail `create` with one line naming the field and leave
nothing behind (the `oci` fixture checks). The -ENOSYS stub is compared instruction by
instruction (in effect) with the one runc 1.1 prints under --debug.
"""

from __future__ import annotations

import array
import errno
import fcntl
import json
import os
import re
import select
import shutil
import socket
import struct
import subprocess
import threading
import uuid

import pytest
from ocitest import (RUNC, base_config, container_cgroup_dirs, needs_root,  # noqa: F401
                     oci, rootfs, runc_run, wait_for)

from minirun import OCI_VERSION, seccomp

pytestmark = [needs_root, pytest.mark.root]

CLONE_NEWUSER = 0x10000000
PER_LINUX32 = 0x0008
SIGSYS_STATUS = 128 + 31


def allow_all_but(*rules: dict) -> dict:
    return {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": list(rules)}


def rule(names, action="SCMP_ACT_ERRNO", **extra) -> dict:
    return {"names": [names] if isinstance(names, str) else list(names), "action": action,
            **extra}


def syscall_names(last: int, but: tuple[str, ...] = ()) -> list[str]:
    """This host's syscalls numbered 0..last, by name (libseccomp's table)."""
    lib = seccomp._libseccomp()
    resolve = lib.seccomp_syscall_resolve_num_arch
    resolve.restype = seccomp.ctypes.c_void_p
    free = seccomp.ctypes.CDLL(None).free
    names = []
    for nr in range(last + 1):
        ptr = resolve(0, nr)
        if ptr:
            name = seccomp.ctypes.string_at(ptr).decode()
            free(seccomp.ctypes.c_void_p(ptr))
            if name not in but and not name.startswith("UNKNOWN"):
                names.append(name)
    return names


def run(oci, rootfs, profile: dict | None, script: str, no_new_privileges: bool = True,
        **kw) -> subprocess.CompletedProcess:
    cfg = base_config(["sh", "-c", script])
    if profile is not None:
        cfg["linux"]["seccomp"] = profile
    cfg["process"]["noNewPrivileges"] = no_new_privileges
    return oci.run(cfg, rootfs, **kw)


# --- from inside ----------------------------------------------------------------------------

def test_status_shows_the_filter(oci, rootfs):
    proc = run(oci, rootfs, allow_all_but(rule("mkdir")), "grep ^Seccomp /proc/self/status")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["Seccomp:", "2", "Seccomp_filters:", "1"]
    proc = run(oci, rootfs, None, "grep ^Seccomp: /proc/self/status")
    assert proc.stdout.split() == ["Seccomp:", "0"], "no profile, but a filter"


@pytest.mark.parametrize("nnp", [True, False], ids=["no-new-privs", "privileged"])
def test_errno_action_blocks_only_the_listed_syscalls(oci, rootfs, nnp):
    script = ("grep ^NoNewPrivs /proc/self/status; mkdir /dev/shm/d; echo mkdir=$?; "
              "touch /dev/shm/f && echo touch=$?")
    proc = run(oci, rootfs, allow_all_but(rule(["mkdir", "mkdirat"])), script,
               no_new_privileges=nnp)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["NoNewPrivs:", str(int(nnp)), "mkdir=1", "touch=0"]
    assert "can't create directory '/dev/shm/d': Operation not permitted" in proc.stderr


def test_errno_ret_and_default_errno_ret(oci, rootfs):
    proc = run(oci, rootfs, allow_all_but(rule("mkdir", errnoRet=errno.EACCES)),
               "mkdir /dev/shm/d")
    assert proc.returncode == 1
    assert "Permission denied" in proc.stderr, proc.stderr
    # An allow list: what it leaves out gets defaultErrnoRet.
    profile = {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": errno.EROFS,
               "syscalls": [rule(syscall_names(300, but=("mkdir", "mkdirat")),
                                 "SCMP_ACT_ALLOW")]}
    proc = run(oci, rootfs, profile, "mkdir /dev/shm/d")
    assert proc.returncode == 1
    assert "Read-only file system" in proc.stderr, proc.stderr


def test_allow_list_answers_enosys_above_the_profile(oci, rootfs):
    """runc's stub: a syscall newer than every one the profile names (setns, 308, above
    fanotify_init, 300) is "not implemented", so that libc can fall back; an older one
    left out (mkdir) gets the default errno."""
    profile = {"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_X86_64"],
               "syscalls": [rule(syscall_names(300, but=("mkdir", "mkdirat")),
                                 "SCMP_ACT_ALLOW")]}
    proc = run(oci, rootfs, profile, "mkdir /dev/shm/d; nsenter -t 1 -u true; echo end")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "end\n"
    assert "'/dev/shm/d': Operation not permitted" in proc.stderr, proc.stderr
    assert "setns(): can't reassociate to namespace 'uts': Function not implemented" in \
        proc.stderr, proc.stderr


@pytest.mark.parametrize("action", ["SCMP_ACT_KILL", "SCMP_ACT_KILL_THREAD",
                                    "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_TRAP"])
def test_kill_actions_end_the_process_with_sigsys(oci, rootfs, action):
    proc = run(oci, rootfs, allow_all_but(rule("mkdir", action)),
               "sh -c 'mkdir /dev/shm/d'; echo child=$?; exec mkdir /dev/shm/d")
    assert proc.stdout == f"child={SIGSYS_STATUS}\n", proc.stderr
    assert proc.returncode == SIGSYS_STATUS, proc.stderr


def test_masked_eq_blocks_new_user_namespaces_but_not_fork(oci, rootfs):
    flag = {"index": 0, "value": CLONE_NEWUSER, "valueTwo": CLONE_NEWUSER,
            "op": "SCMP_CMP_MASKED_EQ"}
    profile = allow_all_but(rule(["unshare", "clone"], args=[flag]))
    proc = run(oci, rootfs, profile, "unshare -U true; echo unshare=$?; "
                                     "sh -c 'echo forked'; unshare -i true; echo ipc=$?")
    assert proc.stdout.split() == ["unshare=1", "forked", "ipc=1"], proc.stderr
    assert "unshare(0x10000000): Operation not permitted" in proc.stderr
    # CLONE_NEWIPC fails too, for want of CAP_SYS_ADMIN, not because of the filter.
    assert "unshare(0x8000000): Operation not permitted" in proc.stderr


@pytest.mark.parametrize("op,value,blocked", [
    ("SCMP_CMP_EQ", PER_LINUX32, True), ("SCMP_CMP_NE", PER_LINUX32, False),
    ("SCMP_CMP_LT", PER_LINUX32, False), ("SCMP_CMP_LE", PER_LINUX32, True),
    ("SCMP_CMP_GT", PER_LINUX32 - 1, True), ("SCMP_CMP_GE", PER_LINUX32 + 1, False),
    ("SCMP_CMP_MASKED_EQ", 0xFF, True),
])
def test_argument_operators(oci, rootfs, op, value, blocked):
    # linux32 calls personality(PER_LINUX32); MASKED_EQ: (arg & value) == valueTwo.
    arg = {"index": 0, "value": value, "valueTwo": PER_LINUX32, "op": op}
    proc = run(oci, rootfs, allow_all_but(rule("personality", errnoRet=errno.EINVAL,
                                               args=[arg])), "linux32 true")
    assert proc.returncode == (1 if blocked else 0), proc.stderr
    assert ("personality(0x8): Invalid argument" in proc.stderr) == blocked


def test_two_conditions_on_one_argument_match_either(oci, rootfs):
    """runc adds one rule per condition when an index repeats (libseccomp cannot AND
    them): personality(8) matches the first, so it is blocked."""
    args = [{"index": 0, "value": PER_LINUX32, "op": "SCMP_CMP_EQ"},
            {"index": 0, "value": 0x20008, "op": "SCMP_CMP_EQ"}]
    proc = run(oci, rootfs, allow_all_but(rule("personality", args=args)), "linux32 true")
    assert proc.returncode == 1
    assert "personality(0x8): Operation not permitted" in proc.stderr


def test_unknown_syscall_names_are_ignored_silently(oci, rootfs):
    proc = run(oci, rootfs, allow_all_but(rule(["no_such_syscall", "mkdir"])),
               "mkdir /dev/shm/d")
    assert proc.returncode == 1
    assert proc.stderr.strip() == "mkdir: can't create directory '/dev/shm/d': " \
                                  "Operation not permitted"


def test_empty_default_action_without_syscalls_is_no_filter(oci, rootfs):
    proc = run(oci, rootfs, {"defaultAction": ""}, "grep ^Seccomp: /proc/self/status")
    assert proc.stdout.split() == ["Seccomp:", "0"], proc.stderr


def test_without_no_new_privs_loaded_before_capabilities_go(oci, rootfs):
    """Without no_new_privs the kernel wants CAP_SYS_ADMIN for the filter: a process that
    ends up as uid 1000 with no capabilities must still get it."""
    script = "grep -E '^(Uid|CapEff|NoNewPrivs|Seccomp):' /proc/self/status; mkdir /dev/shm/d"
    cfg = base_config(["sh", "-c", script])
    cfg["linux"]["seccomp"] = allow_all_but(rule("mkdir"))
    cfg["process"]["noNewPrivileges"] = False
    cfg["process"]["user"] = {"uid": 1000, "gid": 1000}
    cfg["process"]["capabilities"] = {}
    proc = oci.run(cfg, rootfs)
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout.split() == ["Uid:", "1000", "1000", "1000", "1000",
                                   "CapEff:", "0000000000000000",
                                   "NoNewPrivs:", "0", "Seccomp:", "2"]
    assert "Operation not permitted" in proc.stderr


def test_host_fds_closed_when_the_profile_refuses_close_range(oci, rootfs, tmp_path):
    """Without no_new_privs our own last steps run under the profile; one without
    close_range (ENOSYS, as in older Docker profiles) must not let a host fd through
    (CVE-2024-21626)."""
    leaked = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)  # inheritable, no CLOEXEC
    try:
        profile = allow_all_but(rule("close_range", errnoRet=errno.ENOSYS))
        proc = run(oci, rootfs, profile, "ls /proc/self/fd", no_new_privileges=False,
                   pass_fds=(leaked,))
    finally:
        os.close(leaked)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["0", "1", "2", "3"]  # 3: ls's own directory


def test_exec_gets_the_containers_profile(oci, rootfs):
    cfg = base_config(["sleep", "300"])
    cfg["linux"]["seccomp"] = allow_all_but(rule(["mkdir", "mkdirat"]))
    cid = oci.new_id()
    oci("run", "-d", "--bundle", oci.bundle(cfg, rootfs), cid, check=True)
    proc = oci("exec", cid, "sh", "-c", "grep ^Seccomp: /proc/self/status; mkdir /dev/shm/d")
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout.split() == ["Seccomp:", "2"]
    assert "Operation not permitted" in proc.stderr
    proc = oci("exec", cid, "sh", "-c", "touch /dev/shm/f && echo ok")
    assert proc.stdout == "ok\n", proc.stderr


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
def test_flags_reach_the_kernel(oci, rootfs, tmp_path):
    """LOG and SPEC_ALLOW go through seccomp(2) (runc 1.1.5 refuses every flag; 1.2 and
    crun apply them); TSYNC is accepted and adds nothing (one thread)."""
    profile = allow_all_but(rule("mkdir"))
    profile["flags"] = ["SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG",
                        "SECCOMP_FILTER_FLAG_SPEC_ALLOW"]
    cfg = base_config(["sh", "-c", "grep ^Seccomp: /proc/self/status; mkdir /dev/shm/d"])
    cfg["linux"]["seccomp"] = profile
    cid = oci.new_id()
    bundle = oci.bundle(cfg, rootfs)
    log = tmp_path / "strace.log"
    proc = subprocess.run(["strace", "-f", "-qq", "-e", "trace=seccomp,prctl", "-o", str(log)]
                          + oci_cmd(oci, "run", "--bundle", bundle, cid),
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                          check=False)
    assert proc.stdout.split() == ["Seccomp:", "2"], proc.stderr
    # libseccomp probes the kernel with NULL programs (in the parent); one real load.
    calls = [line for line in log.read_text().splitlines()
             if ("SECCOMP_SET_MODE_FILTER" in line or "PR_SET_SECCOMP" in line)
             and "NULL" not in line]
    assert len(calls) == 1, calls
    assert "SECCOMP_FILTER_FLAG_LOG|SECCOMP_FILTER_FLAG_SPEC_ALLOW" in calls[0], calls[0]
    assert calls[0].endswith("= 0"), calls[0]


def oci_cmd(oci, *args) -> list[str]:
    from ocitest import OCI_CMD

    return OCI_CMD + ["--root", oci.root] + [str(a) for a in args]


# --- seccomp user notification (SCMP_ACT_NOTIFY) ------------------------------------------

_NOTIF_RECV = 0xC0502100  # _IOWR('!', 0, struct seccomp_notif): 80 bytes
_NOTIF_SEND = 0xC0182101  # _IOWR('!', 1, struct seccomp_notif_resp): 24 bytes
_NOTIF = struct.Struct("=QIIiI")  # id, pid, flags, then seccomp_data's nr and arch
_NOTIF_RESP = struct.Struct("=QqiI")  # id, val, error, flags
_USER_NOTIF_FLAG_CONTINUE = 1


def nr_mkdir() -> int:
    """What busybox's mkdir calls here: mkdir, or mkdirat where there is none (aarch64)."""
    resolve = seccomp._libseccomp().seccomp_syscall_resolve_name
    return next(nr for nr in map(resolve, (b"mkdir", b"mkdirat")) if nr >= 0)


needs_notify = pytest.mark.skipif(not seccomp.notify_supported(),
                                  reason="SCMP_ACT_NOTIFY needs Linux >= 5.0, libseccomp 2.5")


class Agent:
    """A seccomp agent as runc's seccomp-notify.bats uses one: it listens on a unix socket,
    keeps each container process state it is sent with the listener fd (SCM_RIGHTS), and
    answers notifications as `answer` says: an errno, a fake success, or "continue" (the
    kernel runs the call). Runs in a thread of the test."""

    def __init__(self, path: str, answer: str) -> None:
        self.path = path
        self.answer = answer
        self.received: list[tuple[dict, int]] = []  # (state, number of fds)
        self.notified: list[tuple[int, int]] = []  # (pid, syscall nr)
        self.listeners: list[int] = []
        self.connections: list[socket.socket] = []
        self.closed_by_runtime = 0  # connections the runtime closed after its state
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(path)
        self.server.listen(8)
        self.stopping = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping:
            ready, _, _ = select.select([self.server] + self.connections + self.listeners,
                                        [], [], 0.05)
            for r in ready:
                if r is self.server:
                    self._accept()
                elif r in self.connections:
                    # nothing more may come: the runtime closes it (runc 1.1.5 only late)
                    self.closed_by_runtime += r.recv(1) == b""
                    self.connections.remove(r)
                    r.close()
                else:
                    self._notification(r)

    def _accept(self) -> None:
        conn, _ = self.server.accept()
        data, ancillary, _, _ = conn.recvmsg(65536, socket.CMSG_SPACE(16))
        self.connections.append(conn)
        fds = array.array("i")
        for _, _, payload in ancillary:
            fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
        self.received.append((json.loads(data), len(fds)))
        self.listeners += list(fds)

    def _notification(self, fd: int) -> None:
        buf = bytearray(80)
        try:
            fcntl.ioctl(fd, _NOTIF_RECV, buf)
        except OSError:  # every process of the filter is gone
            self.listeners.remove(fd)
            os.close(fd)
            return
        nid, pid, _, nr, _ = _NOTIF.unpack_from(buf)
        self.notified.append((pid, nr))
        if self.answer == "continue":
            resp = _NOTIF_RESP.pack(nid, 0, 0, _USER_NOTIF_FLAG_CONTINUE)
        elif self.answer == "success":
            resp = _NOTIF_RESP.pack(nid, 0, 0, 0)
        else:
            resp = _NOTIF_RESP.pack(nid, 0, -errno.EDQUOT, 0)
        try:
            fcntl.ioctl(fd, _NOTIF_SEND, bytearray(resp))
        except OSError:
            pass  # the caller was killed meanwhile

    def close(self) -> None:
        self.stopping = True
        self.thread.join(5)
        self.server.close()
        for conn in self.connections:
            conn.close()
        for fd in self.listeners:
            os.close(fd)
        os.unlink(self.path)


@pytest.fixture
def agent(tmp_path):
    agents = []

    def start(answer: str = "errno") -> Agent:
        a = Agent(str(tmp_path / f"agent-{len(agents)}.sock"), answer)
        agents.append(a)
        return a

    yield start
    for a in agents:
        a.close()


def notify_profile(agent: Agent, *names: str, **extra) -> dict:
    return dict(allow_all_but(rule(list(names), "SCMP_ACT_NOTIFY")), listenerPath=agent.path,
                **extra)


@needs_notify
@pytest.mark.parametrize("nnp", [True, False], ids=["no-new-privs", "privileged"])
@pytest.mark.parametrize("answer,expected", [
    ("errno", "mkdir: can't create directory '/dev/shm/d': Disk quota exceeded\nrc=1 absent"),
    ("success", "rc=0 absent"),
    ("continue", "rc=0 present"),
])
def test_agent_gets_the_state_and_answers_for_the_kernel(oci, rootfs, agent, tmp_path, nnp,
                                                         answer, expected):
    a = agent(answer)
    out = tmp_path / "out"
    out.mkdir()
    script = ("mkdir /dev/shm/d 2>/out/log; echo rc=$? >> /out/log; "
              "test -d /dev/shm/d && echo present >> /out/log || echo absent >> /out/log")
    cfg = base_config(["sh", "-c", script])
    cfg["process"]["noNewPrivileges"] = nnp
    cfg["linux"]["seccomp"] = notify_profile(a, "mkdir", "mkdirat",
                                             listenerMetadata="meta=1;x")
    cfg["mounts"].append({"destination": "/out", "type": "bind", "source": str(out),
                          "options": ["rbind", "rw"]})
    cfg["annotations"] = {"org.example/key": "v"}
    cid = oci.new_id()
    bundle = oci.bundle(cfg, rootfs)
    oci("create", "--bundle", bundle, cid, check=True)
    pid = oci.state(cid)["pid"]
    # handed over during create, before the init waits for start (as runc)
    assert wait_for(lambda: a.received)
    (state, nfds), = a.received
    assert nfds == 1
    assert wait_for(lambda: a.closed_by_runtime == 1), "one state per connection, closed"
    assert state == {"ociVersion": OCI_VERSION, "fds": ["seccompFd"],
                     "pid": pid, "metadata": "meta=1;x",
                     "state": {"ociVersion": cfg["ociVersion"], "id": cid,
                               "status": "creating", "pid": pid, "bundle": bundle,
                               "annotations": {"org.example/key": "v"}}}
    oci("start", cid, check=True)
    assert wait_for(lambda: (out / "log").exists() and
                    (out / "log").read_text().endswith(("present\n", "absent\n")))
    assert (out / "log").read_text().replace("\n", " ").strip() == \
        expected.replace("\n", " ")
    assert [nr for _, nr in a.notified] == [nr_mkdir()]


@needs_notify
def test_exec_hands_its_own_listener_with_the_containers_state(oci, rootfs, agent):
    a = agent("errno")
    cfg = base_config(["sleep", "300"])
    cfg["linux"]["seccomp"] = notify_profile(a, "mkdir", "mkdirat")
    cid = oci.new_id()
    oci("run", "-d", "--bundle", oci.bundle(cfg, rootfs), cid, check=True)
    init_pid = oci.state(cid)["pid"]
    proc = oci("exec", cid, "mkdir", "/dev/shm/d")
    assert proc.returncode == 1 and "Disk quota exceeded" in proc.stderr, proc.stderr
    assert len(a.received) == 2
    state, nfds = a.received[1]
    assert nfds == 1
    assert state["pid"] != init_pid and "metadata" not in state  # none given: as runc
    assert a.notified == [(state["pid"], nr_mkdir())]  # the exec'd process, by the host's pid
    assert (state["state"]["status"], state["state"]["pid"]) == ("running", init_pid)


@needs_notify
@pytest.mark.runc
@pytest.mark.skipif(RUNC is None, reason="runc is not installed")
def test_agent_sees_what_runc_sends(oci, rootfs, agent, tmp_path):
    """The same bundle under both runtimes: the same answer reaches the container, and
    the agent gets the same fields, with the same values where they do not depend on
    the run (pid, id, bundle directory, each runtime's spec version)."""
    a = agent("errno")
    cfg = base_config(["sh", "-c", "mkdir /dev/shm/d; echo rc=$?"])
    cfg["linux"]["seccomp"] = notify_profile(a, "mkdir", "mkdirat", listenerMetadata="m")
    bundle = oci.bundle(cfg, rootfs)
    ours = oci("run", "--bundle", bundle, oci.new_id())
    theirs = runc_run(tmp_path, bundle)
    refused = "mkdir: can't create directory '/dev/shm/d': Disk quota exceeded\n"
    assert (ours.stdout, ours.stderr) == ("rc=1\n", refused)
    assert (theirs.stdout, theirs.stderr) == (ours.stdout, ours.stderr)
    (mine, _), (runcs, _) = a.received

    def shape(msg: dict) -> dict:  # ociVersion: each runtime's own spec version
        return dict(msg, ociVersion=None, pid=msg["pid"] == msg["state"]["pid"],
                    state=dict(msg["state"], pid=None, id=None, ociVersion=None, bundle=None))

    assert shape(mine) == shape(runcs)


@needs_notify
def test_listener_path_without_a_notify_rule_is_ignored(oci, rootfs, tmp_path):
    """The runtime-spec: listenerPath matters only with SCMP_ACT_NOTIFY (runc agrees)."""
    profile = dict(allow_all_but(rule("mkdir")), listenerPath=str(tmp_path / "no-agent"))
    proc = run(oci, rootfs, profile, "grep ^Seccomp: /proc/self/status")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["Seccomp:", "2"]


@needs_notify
@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
def test_notify_loads_with_a_listener(oci, rootfs, agent, tmp_path):
    """NEW_LISTENER goes to the kernel (and WAIT_KILLABLE_RECV with it where the kernel
    knows it), and the listener fd does not stay open in the container's process."""
    a = agent("continue")
    profile = notify_profile(a, "mkdir", "mkdirat")
    want = "SECCOMP_FILTER_FLAG_NEW_LISTENER"
    kernel = tuple(int(n) for n in re.findall(r"\d+", os.uname().release)[:2])
    killable = "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV" in seccomp.supported_flags()
    assert killable == (kernel >= (5, 19)), "features must say what the kernel knows"
    if killable:
        profile["flags"] = ["SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"]
        want += "|SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"
    cfg = base_config(["sh", "-c", "ls /proc/self/fd; mkdir /dev/shm/d && echo made"])
    cfg["linux"]["seccomp"] = profile
    cid = oci.new_id()
    log = tmp_path / "strace.log"
    proc = subprocess.run(["strace", "-f", "-qq", "-e", "trace=seccomp", "-o", str(log)]
                          + oci_cmd(oci, "run", "--bundle", oci.bundle(cfg, rootfs), cid),
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                          check=False)
    assert proc.stdout.split() == ["0", "1", "2", "3", "made"], proc.stderr
    loads = [line for line in log.read_text().splitlines()
             if "SECCOMP_SET_MODE_FILTER" in line and "NULL" not in line]
    assert len(loads) == 1 and want in loads[0], loads
    assert re.search(r"= \d+$", loads[0]), loads  # a listener fd came back


# --- the runtime's own last steps under the filter ----------------------------------------

# (profile, no_new_privs, the step named). Without no_new_privs the filter is loaded before
# the capabilities and the user are set; with it, right after no_new_privs; both before
# the exec fifo. runc 1.1.5 fails each of these too (it hangs on the SCMP_ACT_KILL ones).
OWN_STEPS = {
    "capset": (allow_all_but(rule("capset")), False, "capset"),
    "setgroups": (allow_all_but(rule("setgroups")), False, "setgroups"),
    "prctl": (allow_all_but(rule("prctl")), False, "prctl(PR_CAPBSET_DROP)"),
    "chdir": (allow_all_but(rule("chdir")), False, "chdir"),
    "close_range-and-proc-listing": (allow_all_but(rule(["close_range", "getdents64"])),
                                     False, "close_range"),
    "execve": (allow_all_but(rule("execve")), False, "execve"),
    "execve-no-new-privs": (allow_all_but(rule("execve")), True, "execve"),
    "kill-default": ({"defaultAction": "SCMP_ACT_KILL"}, True, "sendto"),
    "kill-default-privileged": ({"defaultAction": "SCMP_ACT_KILL"}, False, "open"),
}


@pytest.mark.parametrize("case", list(OWN_STEPS))
def test_a_step_of_the_runtime_the_filter_stops_is_named(oci, rootfs, tmp_path, case):
    profile, nnp, step = OWN_STEPS[case]
    cfg = base_config(["true"])
    cfg["linux"]["seccomp"] = profile
    cfg["process"]["noNewPrivileges"] = nnp
    bundle = oci.bundle(cfg, rootfs)
    cid = oci.new_id()
    proc = oci("run", "--bundle", bundle, cid, timeout=30)
    assert proc.returncode != 0, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert f"seccomp: the filter blocks the runtime's own step: {step}" in lines[0], lines[0]
    if "kill" in case:
        assert "was killed by signal 31 (Bad system call)" in lines[0], lines[0]
    else:
        assert lines[0].endswith(": Operation not permitted"), lines[0]
    if RUNC and "kill" not in case:
        theirs = runc_run(tmp_path, bundle)
        assert theirs.returncode != 0, theirs.stdout


def test_exec_names_the_step_too(oci, rootfs):
    """exec's process goes through the same steps: a profile refusing setresuid to uid
    1000 (an argument rule) lets the init, root, start; `exec --user 1000` is refused,
    by name."""
    cfg = base_config(["sleep", "300"])
    cfg["process"]["noNewPrivileges"] = False  # the filter comes before the user is set
    cfg["linux"]["seccomp"] = allow_all_but(rule("setresuid", args=[
        {"index": 0, "value": 1000, "op": "SCMP_CMP_EQ"}]))
    cid = oci.new_id()
    oci("run", "-d", "--bundle", oci.bundle(cfg, rootfs), cid, check=True)
    proc = oci("exec", "--user", "1000", cid, "true")
    assert proc.returncode == 255, proc.stderr  # exec's status when setup fails (runc's)
    step = "setresuid: Operation not permitted"
    assert proc.stderr.strip().splitlines() == [
        f"minirun-oci: seccomp: the filter blocks the runtime's own step: {step}"]
    assert oci("exec", "--user", "1001", cid, "true").returncode == 0


def test_only_what_the_filter_can_answer_is_put_on_it():
    """An EPERM from capset is the filter's only if the profile can answer capset so."""
    from minirun.sys import SysError

    def blamed(profile: dict, err: int = errno.EPERM) -> bool:
        f = seccomp.compile_profile(profile)
        f.installed = True  # as in the container's process once loaded
        e = SysError("capset", None, err)
        return f.blame(e) is not e

    assert blamed(allow_all_but(rule("capset")))
    assert not blamed(allow_all_but(rule("mkdir")))  # capset is allowed: a plain refusal
    assert not blamed(allow_all_but(rule("capset", errnoRet=errno.EACCES)))
    assert blamed(allow_all_but(rule("capset", errnoRet=errno.EACCES)), errno.EACCES)
    assert blamed({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [rule("mkdir",
                                                                       "SCMP_ACT_ALLOW")]})
    assert not blamed({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [rule("capset",
                                                                           "SCMP_ACT_ALLOW")]})


# --- refused before anything exists ----------------------------------------------------------

BAD = [
    ("unknown-default-action", {"defaultAction": "SCMP_ACT_BOGUS"},
     ["linux.seccomp.defaultAction", "SCMP_ACT_BOGUS"]),
    ("missing-default-action", {"syscalls": [rule("mkdir")]},
     ["linux.seccomp.defaultAction"]),
    ("empty-default-action-with-syscalls", {"defaultAction": "", "syscalls": [rule("mkdir")]},
     ["linux.seccomp.defaultAction"]),
    ("unknown-action", allow_all_but(rule("mkdir"), rule("rmdir", "SCMP_ACT_BOGUS")),
     ["linux.seccomp.syscalls[1].action", "SCMP_ACT_BOGUS"]),
    ("notify-without-listener-path", allow_all_but(rule("mkdir"), rule("rmdir",
                                                                   "SCMP_ACT_NOTIFY")),
     ["linux.seccomp.syscalls[1].action", "SCMP_ACT_NOTIFY", "listenerPath"]),
    ("notify-default-action", {"defaultAction": "SCMP_ACT_NOTIFY",
                               "listenerPath": "/run/agent.sock"},
     ["linux.seccomp.defaultAction", "SCMP_ACT_NOTIFY", "default"]),
    ("notify-on-write", dict(allow_all_but(rule(["mkdir", "write"], "SCMP_ACT_NOTIFY")),
                             listenerPath="/run/agent.sock"),
     ["linux.seccomp.syscalls[0].names[1]", "SCMP_ACT_NOTIFY", "write"]),
    ("notify-on-sendmsg", dict(allow_all_but(rule("sendmsg", "SCMP_ACT_NOTIFY")),
                               listenerPath="/run/agent.sock"),
     ["linux.seccomp.syscalls[0].names[0]", "sendmsg"]),
    ("metadata-without-listener-path", dict(allow_all_but(rule("mkdir")),
                                            listenerMetadata="m"),
     ["linux.seccomp.listenerMetadata", "listenerPath"]),
    ("agent-not-listening", dict(allow_all_but(rule("mkdir", "SCMP_ACT_NOTIFY")),
                                 listenerPath="/nonexistent/agent.sock"),
     ["linux.seccomp.listenerPath", "/nonexistent/agent.sock", "No such file or directory"]),
    ("unknown-operator", allow_all_but(rule("mkdir", args=[
        {"index": 0, "value": 1, "op": "SCMP_CMP_EQ"},
        {"index": 1, "value": 1, "op": "SCMP_CMP_BOGUS"}])),
     ["linux.seccomp.syscalls[0].args[1].op", "SCMP_CMP_BOGUS"]),
    ("argument-index-6", allow_all_but(rule("mkdir", args=[
        {"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}])),
     ["linux.seccomp.syscalls[0].args[0].index"]),
    ("empty-syscall-name", allow_all_but(rule(["mkdir", ""])),
     ["linux.seccomp.syscalls[0].names[1]"]),
    ("unknown-architecture", dict(allow_all_but(), architectures=["SCMP_ARCH_X86_64",
                                                                  "SCMP_ARCH_BOGUS"]),
     ["linux.seccomp.architectures[1]", "SCMP_ARCH_BOGUS"]),
    ("architecture-of-the-other-byte-order", dict(allow_all_but(),
                                                  architectures=["SCMP_ARCH_S390X"]),
     ["linux.seccomp.architectures[0]", "SCMP_ARCH_S390X"]),
    ("unknown-flag", dict(allow_all_but(), flags=["SECCOMP_FILTER_FLAG_BOGUS"]),
     ["linux.seccomp.flags[0]", "SECCOMP_FILTER_FLAG_BOGUS"]),
    ("listener-flag-given", dict(allow_all_but(), flags=["SECCOMP_FILTER_FLAG_LOG",
                                                         "SECCOMP_FILTER_FLAG_NEW_LISTENER"]),
     ["linux.seccomp.flags[1]", "SECCOMP_FILTER_FLAG_NEW_LISTENER"]),
    ("wait-killable-without-notify", dict(allow_all_but(rule("mkdir")),
                                          flags=["SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"]),
     ["linux.seccomp.flags", "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV", "SCMP_ACT_NOTIFY"]),
    ("names-not-a-list", allow_all_but({"names": "mkdir", "action": "SCMP_ACT_ERRNO"}),
     ["linux.seccomp.syscalls[0].names"]),
]


@pytest.mark.parametrize("profile,words", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_profile_is_refused_in_one_line(oci, rootfs, profile, words):
    cfg = base_config(["true"])
    cfg["linux"]["seccomp"] = profile
    cid = oci.new_id()
    proc = oci("create", "--bundle", oci.bundle(cfg, rootfs), cid)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for word in words:
        assert word in lines[0], lines[0]
    assert not os.path.exists(os.path.join(oci.root, cid))
    assert container_cgroup_dirs(f"/minirun/{cid}") == []


# --- the compiled program --------------------------------------------------------------------

def test_compile_before_fork_is_checked_and_sized():
    f = seccomp.compile_profile(allow_all_but(rule("mkdir"), rule("not_a_syscall")))
    assert f.ignored == ("not_a_syscall",)
    assert f.flags == 0 and f.stub_length == 0  # an ALLOW default gets no stub (runc)
    assert len(f.program) == 8 * len(f)
    assert seccomp.compile_profile(None) is None
    assert seccomp.compile_profile({"defaultAction": "", "syscalls": []}) is None
    big = {"defaultAction": "SCMP_ACT_ALLOW",
           "syscalls": [rule("personality", args=[{"index": 0, "value": v, "op": "SCMP_CMP_EQ"}])
                        for v in range(5000)]}
    with pytest.raises(seccomp.InvalidSpec, match="more than the kernel's limit of 4096"):
        seccomp.compile_profile(big)


# --- the -ENOSYS stub against runc's -------------------------------------------------------------

_FALLTHROUGH = "filter"


def _parse_runc_listing(lines: list[str]) -> list[tuple[str, int, int, int]]:
    """golang.org/x/net/bpf's notation (what runc --debug prints) -> (op, k, jt, jf)."""
    out = []
    for line in lines:
        m = re.fullmatch(r"(\w+) (?:\[(\d+)\]|#(\d+)(?:,(\d+))?(?:,(\d+))?|(\d+))", line)
        assert m, line
        op, ld, k, a, b, ja = m.groups()
        a, b = int(a or 0), int(b or 0)
        if op == "ld":
            out.append(("ld", int(ld), 0, 0))
        elif op == "ja":
            out.append(("ja", int(ja), 0, 0))
        elif op == "ret":
            out.append(("ret", int(k), 0, 0))
        elif op in ("jeq", "jgt", "jset"):
            out.append((op, int(k), a, b))
        elif op in ("jneq", "jle"):
            out.append(({"jneq": "jeq", "jle": "jgt"}[op], int(k), 0, a))
        else:
            raise AssertionError(f"unexpected instruction {line!r}")
    return out


def _from_program(program: bytes, count: int) -> list[tuple[str, int, int, int]]:
    names = {0x20: "ld", 0x05: "ja", 0x06: "ret", 0x15: "jeq", 0x25: "jgt", 0x45: "jset"}
    out = []
    for i in range(count):
        code, jt, jf, k = seccomp._INSN.unpack_from(program, 8 * i)
        out.append((names[code], k, jt, jf))
    return out


def _evaluate(stub: list[tuple[str, int, int, int]], arch: int, nr: int) -> int | str:
    acc, pc = 0, 0
    while pc < len(stub):
        op, k, jt, jf = stub[pc]
        pc += 1
        if op == "ld":
            acc = {0: nr, 4: arch}[k]
        elif op == "ja":
            pc += k
        elif op == "ret":
            return k
        else:
            taken = {"jeq": acc == k, "jgt": acc > k, "jset": bool(acc & k)}[op]
            pc += jt if taken else jf
    assert pc == len(stub), "jumped past the end of the stub"
    return _FALLTHROUGH


STUB_CASES = [
    ["SCMP_ARCH_X86_64"],
    ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
    ["SCMP_ARCH_X32"],
    ["SCMP_ARCH_X86"],
    ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
]


@pytest.fixture
def runc_debug(tmp_path, rootfs):
    """Runs a profile under `runc --debug run`; returns the -ENOSYS stub runc printed."""
    state = tmp_path / "runc-state"
    ids = []

    def stub_of(profile: dict) -> list[str]:
        cid = f"sc-{uuid.uuid4().hex[:10]}"
        ids.append(cid)
        bundle = tmp_path / cid
        bundle.mkdir()
        cfg = base_config(["true"])
        cfg["root"]["path"] = rootfs
        cfg["linux"]["seccomp"] = profile
        # Never under our own cgroup (the machine's /process_api on this VM).
        cfg["linux"]["cgroupsPath"] = f"/minirun-test-seccomp/{cid}"
        (bundle / "config.json").write_text(json.dumps(cfg))
        proc = subprocess.run([RUNC, "--root", str(state), "--debug", "run", "--bundle",
                               str(bundle), cid], capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL, check=False)
        assert proc.returncode == 0, proc.stderr[-2000:]
        lines, on = [], False
        for line in proc.stderr.splitlines():
            if "prepending -ENOSYS stub" in line:
                on = True
            elif "original filter" in line:
                break
            elif on:
                m = re.search(r'msg="  \[\s*\d+\] (.*)"', line)
                if m:
                    lines.append(m.group(1))
        return lines

    yield stub_of
    leaks = []
    for cid in ids:
        subprocess.run([RUNC, "--root", str(state), "delete", "--force", cid],
                       capture_output=True, check=False)
        for d in container_cgroup_dirs(f"/minirun-test-seccomp/{cid}"):
            try:
                os.rmdir(d)
            except OSError:
                leaks.append(d)
    for d in container_cgroup_dirs("/minirun-test-seccomp"):
        try:
            os.rmdir(d)
        except OSError as e:
            if e.errno != errno.EBUSY:
                raise
    assert not leaks, f"left on the host: {leaks}"


@pytest.mark.runc
@pytest.mark.skipif(RUNC is None, reason="runc is not installed")
@pytest.mark.parametrize("arches", STUB_CASES, ids=["+".join(a) for a in STUB_CASES])
def test_enosys_stub_matches_runc(runc_debug, arches):
    profile = {"defaultAction": "SCMP_ACT_ERRNO", "architectures": arches,
               "syscalls": [rule(syscall_names(300, but=("mkdir",)) + ["clone3"],
                                 "SCMP_ACT_ALLOW")]}
    theirs = _parse_runc_listing(runc_debug(profile))
    f = seccomp.compile_profile(profile)
    ours = _from_program(f.program, f.stub_length)
    assert theirs and len(ours) == len(theirs)
    # Same instructions up to the order of the per-architecture sections (runc walks a Go
    # map): the same answer for every architecture and syscall number.
    audits = {a for _, a in seccomp.ARCHITECTURES.values()} | {0}
    numbers = list(range(1100)) + [n | (1 << 30) for n in range(1100)] + [0xFFFFFFFF]
    for arch in audits:
        for nr in numbers:
            assert _evaluate(ours, arch, nr) == _evaluate(theirs, arch, nr), (hex(arch), nr)
    native = seccomp.ARCHITECTURES["SCMP_ARCH_X86_64"][1]
    if "SCMP_ARCH_X86_64" in arches:
        assert _evaluate(ours, native, 436) == seccomp._RET_ENOSYS  # close_range > clone3
        assert _evaluate(ours, native, 435) == _FALLTHROUGH
