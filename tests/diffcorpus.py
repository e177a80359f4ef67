"""The corpus for tests/test_runc_diff.py: config.json variants that minirun-oci and runc
must run alike, the report the container prints about itself, and its normalizer.

Every case starts from base_config() with REPORT as the program. A case's `mutate`
changes the config; the test runs it under both runtimes and compares the exit status
and the normalized report. Where the two legitimately differ, the case says so in
`expect` (a comment there says why); where minirun is wrong, `xfail` names the bug.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Callable

# Printed from inside the container. Section markers let the normalizer treat each part
# on its own; every command is a busybox applet or a shell builtin.
REPORT = r"""
echo '## status'; grep -E '^(Cap|NoNewPrivs|Seccomp|Uid|Gid|Groups)' /proc/self/status
echo '## mounts'; cat /proc/self/mountinfo
echo '## ns'; for n in /proc/self/ns/*; do echo "${n##*/} $(readlink $n)"; done
echo '## id'; id
echo '## uts'; hostname; cat /proc/sys/kernel/domainname
echo '## ulimit'; ulimit -a
echo '## umask'; umask
echo '## oom'; cat /proc/self/oom_score_adj
echo '## cgroup'; cat /proc/self/cgroup
echo '## cgfiles'
for f in memory/memory.limit_in_bytes memory/memory.memsw.limit_in_bytes \
         memory/memory.soft_limit_in_bytes memory/memory.swappiness \
         cpu/cpu.shares cpu/cpu.cfs_quota_us cpu/cpu.cfs_period_us \
         pids/pids.max cpuset/cpuset.cpus cpuset/cpuset.mems \
         blkio/blkio.weight blkio/blkio.bfq.weight; do
    if [ -e /sys/fs/cgroup/$f ]; then echo "$f $(cat /sys/fs/cgroup/$f 2>&1)"; fi
done
echo '## dev'; ls -la /dev
echo '## sysctl'
for k in net/ipv4/ip_forward kernel/shmmax; do echo "$k $(cat /proc/sys/$k 2>&1)"; done
echo '## env'; env | sort; pwd
"""

# Appended by the seccomp cases: what a few syscalls answer. Each runs in a child shell,
# since a KILL action would otherwise end the report (busybox runs mkdir in-process).
SYSCALL_PROBES = r"""
echo '## syscalls'
sh -c 'mkdir /dev/shm/probe' 2>&1; echo "mkdir $?"
sh -c 'unshare -U true' 2>&1; echo "unshare-user $?"
sh -c 'nsenter -t 1 -u true' 2>&1; echo "setns $?"
sh -c 'linux32 true' 2>&1; echo "personality-linux32 $?"
(true); echo "fork $?"
"""

SECTIONS = ("status", "mounts", "ns", "id", "uts", "ulimit", "umask", "oom", "cgroup",
            "cgfiles", "dev", "sysctl", "env", "syscalls")


def host_has_blkio_weight() -> bool:
    """Whether the host's v1 blkio controller has a weight file (CFQ or BFQ in use)."""
    return any(os.path.exists(f"/sys/fs/cgroup/blkio/{name}")
               for name in ("blkio.weight", "blkio.bfq.weight"))


@dataclass
class Ctx:
    """Host-side things a case may refer to."""

    rootfs: str
    hostdir: str  # a temp dir with a file `hello` and a tmpfs mounted on `sub`
    userns_rootfs: str = ""
    helper_ns: dict[str, str] = field(default_factory=dict)  # type -> /proc/<pid>/ns/<x>


@dataclass
class Case:
    name: str
    mutate: Callable[[dict, Ctx], None]
    # "same": both run it and must agree on everything. "both-refuse": both must fail
    # before the program runs, with the same exit status. Any other value names a
    # deliberate difference, checked by the test under that name.
    expect: str = "same"
    xfail: str | None = None
    # "private": a fresh copy of the busybox rootfs per run, since runtimes create mount
    # points and cwds in it. "userns": one copy owned by host uid/gid 100000 in a
    # directory that the mapped ids can reach.
    rootfs: str = "private"


# --- config mutations ---------------------------------------------------------------------

def _drop_ns(kind: str) -> Callable[[dict, Ctx], None]:
    def mutate(cfg: dict, ctx: Ctx) -> None:
        cfg["linux"]["namespaces"] = [n for n in cfg["linux"]["namespaces"]
                                      if n["type"] != kind]
        if kind == "uts":
            cfg.pop("hostname", None)
    return mutate


def _add_ns(kind: str) -> Callable[[dict, Ctx], None]:
    def mutate(cfg: dict, ctx: Ctx) -> None:
        cfg["linux"]["namespaces"].append({"type": kind})
    return mutate


def _join_ns(kind: str) -> Callable[[dict, Ctx], None]:
    def mutate(cfg: dict, ctx: Ctx) -> None:
        nss = [n for n in cfg["linux"]["namespaces"] if n["type"] != kind]
        nss.append({"type": kind, "path": ctx.helper_ns[kind]})
        cfg["linux"]["namespaces"] = nss
        if kind == "cgroup":
            # The helper's cgroup namespace is rooted at the test runner's own cgroup
            # (under /process_api in the memory hierarchy on this VM). A cgroup mount made
            # inside it would expose that cgroup: keep the container away from it.
            cfg["mounts"] = [m for m in cfg["mounts"] if m["type"] != "cgroup"]
        if kind == "uts":
            # Both set the hostname in the shared namespace; minirun runs first, so its
            # report shows its own doing.
            cfg["hostname"] = "joined-uts"
    return mutate


def _mount(*mounts: dict) -> Callable[[dict, Ctx], None]:
    def mutate(cfg: dict, ctx: Ctx) -> None:
        for m in mounts:
            m = dict(m)
            if m.get("source", "").startswith("HOST"):
                m["source"] = ctx.hostdir + m["source"][4:]
            cfg["mounts"].append(m)
    return mutate


def _set(path: str, value) -> Callable[[dict, Ctx], None]:
    """Set a dotted key of the config ("process.user.umask")."""
    def mutate(cfg: dict, ctx: Ctx) -> None:
        keys = path.split(".")
        d = cfg
        for k in keys[:-1]:
            d = d.setdefault(k, {})
        d[keys[-1]] = value
    return mutate


def _all(*mutations: Callable[[dict, Ctx], None]) -> Callable[[dict, Ctx], None]:
    def mutate(cfg: dict, ctx: Ctx) -> None:
        for m in mutations:
            m(cfg, ctx)
    return mutate


def _caps(names: list[str]) -> Callable[[dict, Ctx], None]:
    def mutate(cfg: dict, ctx: Ctx) -> None:
        cfg["process"]["capabilities"] = {k: list(names) for k in
                                          ("bounding", "effective", "permitted",
                                           "inheritable", "ambient")}
    return mutate


def _add_unknown_cap(cfg: dict, ctx: Ctx) -> None:
    for key in ("bounding", "effective", "permitted"):
        cfg["process"]["capabilities"][key].append("CAP_NOT_A_CAPABILITY")


def _no_ns_drop_sysctl(kind: str, sysctl: dict) -> Callable[[dict, Ctx], None]:
    return _all(_drop_ns(kind), _set("linux.sysctl", sysctl))


def _seccomp(profile: dict, no_new_privileges: bool = True) -> Callable[[dict, Ctx], None]:
    """A linux.seccomp profile, and the syscall probes in the report."""
    def mutate(cfg: dict, ctx: Ctx) -> None:
        cfg["linux"]["seccomp"] = profile
        cfg["process"]["noNewPrivileges"] = no_new_privileges
        cfg["process"]["args"][-1] += SYSCALL_PROBES
    return mutate


def _errno_rule(*names: str, **extra) -> dict:
    return {"names": list(names), "action": "SCMP_ACT_ERRNO", **extra}


def _allow_up_to(last: int, but: tuple[str, ...] = (), also: tuple[str, ...] = ()) -> list[str]:
    """Names of this host's syscalls numbered 0..last (libseccomp's table), except `but`."""
    import ctypes

    lib = ctypes.CDLL("libseccomp.so.2")
    lib.seccomp_syscall_resolve_num_arch.restype = ctypes.c_void_p
    free = ctypes.CDLL(None).free
    names = []
    for nr in range(last + 1):
        ptr = lib.seccomp_syscall_resolve_num_arch(0, nr)
        if ptr:
            names.append(ctypes.string_at(ptr).decode())
            free(ctypes.c_void_p(ptr))
    return [n for n in names if n not in but and not n.startswith("UNKNOWN")] + list(also)


def _allow_list_profile(cfg: dict, ctx: Ctx) -> None:
    # Docker's shape: everything denied but a list. Up to fanotify_init (300) plus
    # prlimit64 (ulimit), without mkdir: mkdir gets the default errno, and setns (308),
    # above the last listed syscall, gets ENOSYS from runc's stub.
    _seccomp({"defaultAction": "SCMP_ACT_ERRNO",
              "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
              "syscalls": [{"names": _allow_up_to(300, but=("mkdir", "mkdirat"),
                                                  also=("prlimit64",)),
                            "action": "SCMP_ACT_ALLOW"}]})(cfg, ctx)


CLONE_NEWUSER = 0x10000000
USERNS_HOST_ID = 100000


def _userns(cfg: dict, ctx: Ctx) -> None:
    cfg["linux"]["namespaces"].append({"type": "user"})
    for key in ("uidMappings", "gidMappings"):
        cfg["linux"][key] = [{"containerID": 0, "hostID": USERNS_HOST_ID, "size": 65536}]


ALL_CAPS = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
    "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
    "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
]

CORPUS: list[Case] = [
    Case("default", lambda cfg, ctx: None),
    Case("root-readwrite", _set("root.readonly", False)),
    Case("bind-ro-hostdir", _mount({"destination": "/mnt/ro", "type": "bind",
                                    "source": "HOST", "options": ["bind", "ro"]})),
    Case("bind-vs-rbind", _mount(
        {"destination": "/mnt/bind", "type": "bind", "source": "HOST", "options": ["bind"]},
        {"destination": "/mnt/rbind", "type": "bind", "source": "HOST",
         "options": ["rbind", "ro"]})),
    Case("tmpfs-size-mode", _mount(
        {"destination": "/scratch", "type": "tmpfs", "source": "tmpfs",
         "options": ["size=1m", "mode=1770", "uid=1000", "gid=5", "nr_inodes=100"]},
        {"destination": "/run/lock", "type": "tmpfs", "source": "locks",
         "options": ["nosuid", "nodev", "noexec", "size=64k"]})),
    Case("tmpfs-readonly", _mount({"destination": "/rotmp", "type": "tmpfs",
                                   "source": "tmpfs", "options": ["ro", "size=1m"]})),
    Case("tmpfs-readonly-with-nested-mount", _mount(
        {"destination": "/rotmp", "type": "tmpfs", "source": "tmpfs", "options": ["ro"]},
        {"destination": "/rotmp/inner", "type": "bind", "source": "HOST",
         "options": ["bind", "ro"]})),
    Case("bind-file", _mount({"destination": "/etc/hello", "type": "bind",
                              "source": "HOST/hello", "options": ["rbind", "ro"]})),
    Case("bind-missing-source", _mount({"destination": "/mnt/x", "type": "bind",
                                        "source": "HOST/not-there", "options": ["bind"]}),
         expect="both-refuse"),
    Case("flag-combos", _mount(
        {"destination": "/mnt/a", "type": "bind", "source": "HOST",
         "options": ["bind", "nosuid", "nodev"]},
        {"destination": "/mnt/b", "type": "bind", "source": "HOST",
         "options": ["rbind", "noexec", "ro", "noatime"]},
        {"destination": "/mnt/c", "type": "tmpfs", "source": "tmpfs",
         "options": ["exec", "suid", "dev", "rw", "nodiratime", "strictatime"]})),
    Case("propagation", _all(
        _mount({"destination": "/mnt/shared", "type": "bind", "source": "HOST",
                "options": ["rbind", "rshared"]},
               {"destination": "/mnt/slave", "type": "bind", "source": "HOST",
                "options": ["rbind", "rslave"]},
               {"destination": "/mnt/private", "type": "bind", "source": "HOST",
                "options": ["bind", "private"]},
               {"destination": "/mnt/unbindable", "type": "tmpfs", "source": "tmpfs",
                "options": ["unbindable"]}),
        _set("linux.rootfsPropagation", "rslave"))),
] + [
    Case(f"rootfs-propagation-{prop}", _all(
        _set("linux.rootfsPropagation", prop),
        _mount({"destination": "/mnt/shared", "type": "bind", "source": "HOST",
                "options": ["rbind", "rshared"]})))
    for prop in ("private", "rprivate", "shared", "rshared", "slave")
] + [
    Case("rootfs-propagation-unbindable", _set("linux.rootfsPropagation", "unbindable"),
         expect="both-refuse"),
    Case("no-network-ns", _drop_ns("network")),
    Case("no-ipc-ns", _drop_ns("ipc")),
    Case("no-uts-ns", _drop_ns("uts")),
    Case("no-uts-ns-with-hostname", _all(_drop_ns("uts"), _set("hostname", "box")),
         expect="both-refuse"),
    Case("no-pid-ns", _drop_ns("pid")),
    Case("no-mount-ns", _drop_ns("mount"), expect="both-refuse"),
    Case("new-cgroup-ns", _add_ns("cgroup")),
    Case("new-time-ns", _add_ns("time"), expect="minirun-only:time"),
    Case("join-network-ns", _join_ns("network")),
    Case("join-ipc-ns", _join_ns("ipc")),
    Case("join-uts-ns", _join_ns("uts")),
    Case("join-cgroup-ns", _join_ns("cgroup")),
    Case("join-pid-ns", _join_ns("pid")),
    Case("join-time-ns", _join_ns("time"), expect="minirun-only:time"),
    Case("hostname", _set("hostname", "diff-host")),
    Case("domainname", _all(_set("hostname", "diff-host"), _set("domainname", "example.org")),
         expect="runc-ignores-domainname"),
    Case("env-cwd-user-groups-umask", _all(
        _set("process.env", ["PATH=/bin:/usr/bin", "FOO=bar baz", "EMPTY=", "HOME=/nowhere"]),
        _set("process.cwd", "/tmp"),
        _set("process.user", {"uid": 1000, "gid": 1000, "additionalGids": [5, 65534, 1000],
                              "umask": 0o027}))),
    Case("user-without-passwd-entry", _set("process.user", {"uid": 4242, "gid": 4343})),
    Case("missing-cwd-readonly-root", _set("process.cwd", "/does/not/exist")),
    Case("missing-cwd-readwrite-root", _all(_set("process.cwd", "/does/not/exist"),
                                            _set("root.readonly", False))),
    Case("rlimits", _set("process.rlimits", [
        {"type": "RLIMIT_NOFILE", "soft": 256, "hard": 512},
        {"type": "RLIMIT_NPROC", "soft": 100, "hard": 200},
        {"type": "RLIMIT_CORE", "soft": 0, "hard": 4096},
        {"type": "RLIMIT_STACK", "soft": 4194304, "hard": 8388608},
        {"type": "RLIMIT_MEMLOCK", "soft": 65536, "hard": 65536},
        {"type": "RLIMIT_MSGQUEUE", "soft": 1024, "hard": 2048}])),
    Case("rlimit-unknown", _set("process.rlimits", [{"type": "RLIMIT_NOPE", "soft": 1,
                                                      "hard": 1}]),
         expect="both-refuse"),
    Case("caps-empty", _caps([])),
    Case("caps-none-key", lambda cfg, ctx: cfg["process"].pop("capabilities")),
    Case("caps-all", _caps(ALL_CAPS), expect="all-caps"),
    Case("caps-all-the-host-has", lambda cfg, ctx: _caps(host_capabilities())(cfg, ctx)),
    Case("caps-unknown-name", _add_unknown_cap, expect="warn-unknown-cap"),
    Case("no-new-privileges-false", _set("process.noNewPrivileges", False)),
    Case("masked-readonly-variants", _all(
        _set("linux.maskedPaths", ["/proc/kcore", "/etc/passwd", "/var", "/does/not/exist",
                                   "/proc/cpuinfo"]),
        _set("linux.readonlyPaths", ["/proc/sys", "/tmp", "/also/not/there", "/etc/group",
                                     "/dev/shm", "/dev/mqueue"]),
        _set("root.readonly", False))),
    Case("no-masked-no-readonly", _all(_set("linux.maskedPaths", []),
                                       _set("linux.readonlyPaths", []))),
    Case("sysctl-namespaced", _set("linux.sysctl", {"net.ipv4.ip_forward": "1",
                                                    "kernel.shmmax": "65536"})),
    Case("sysctl-not-namespaced", _set("linux.sysctl", {"kernel.panic": "10"}),
         expect="both-refuse"),
    Case("sysctl-net-without-netns",
         _no_ns_drop_sysctl("network", {"net.ipv4.ip_forward": "1"}), expect="both-refuse"),
    Case("sysctl-ipc-without-ipcns",
         _no_ns_drop_sysctl("ipc", {"kernel.shmmax": "65536"}), expect="both-refuse"),
    Case("oom-score-adj-raise", _set("process.oomScoreAdj", 500)),
    Case("oom-score-adj-lower", _set("process.oomScoreAdj", -500),
         expect="oom-lower-refused-by-runc"),
    Case("resources", _set("linux.resources", {
        "devices": [{"allow": False, "access": "rwm"}],
        "memory": {"limit": 64 * 1024 * 1024, "reservation": 32 * 1024 * 1024,
                   "swappiness": 10},
        "cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0", "mems": "0"},
        "pids": {"limit": 64}})),
    # memory.memsw.* exists only with swap accounting (CONFIG_MEMCG_SWAP, swapaccount=1):
    # without it both runtimes refuse a swap limit.
    Case("memory-swap", _set("linux.resources.memory", {
        "limit": 64 * 1024 * 1024, "swap": 128 * 1024 * 1024}),
         expect="same" if os.path.exists("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes")
         else "both-refuse"),
    # A blkio weight needs CFQ's blkio.weight or BFQ's blkio.bfq.weight, which only exist
    # when some block device uses one of those schedulers: both runtimes apply it then and
    # both refuse it otherwise.
    Case("blkio-weight", _set("linux.resources.blockIO", {"weight": 300}),
         expect="same" if host_has_blkio_weight() else "both-refuse"),
    Case("user-namespace", _userns, rootfs="userns", expect="userns-mqueue-group"),
    Case("user-namespace-no-netns", _all(_userns, _drop_ns("network")), rootfs="userns",
         expect="minirun-only:sysfs-in-userns"),
    Case("seccomp-errno", _seccomp({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        _errno_rule("mkdir", "mkdirat"), _errno_rule("unshare", errnoRet=13)]})),
    Case("seccomp-errno-without-no-new-privileges", _seccomp(
        {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [_errno_rule("mkdir", "mkdirat")]},
        no_new_privileges=False)),
    Case("seccomp-kill", _seccomp({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["mkdir"], "action": "SCMP_ACT_KILL"},
        {"names": ["unshare"], "action": "SCMP_ACT_KILL_PROCESS"},
        {"names": ["personality"], "action": "SCMP_ACT_TRAP"}]})),
    Case("seccomp-args", _seccomp({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        _errno_rule("unshare", "clone", args=[{"index": 0, "value": CLONE_NEWUSER,
                                               "valueTwo": CLONE_NEWUSER,
                                               "op": "SCMP_CMP_MASKED_EQ"}]),
        _errno_rule("personality", errnoRet=22, args=[{"index": 0, "value": 8,
                                                       "op": "SCMP_CMP_EQ"}])]})),
    Case("seccomp-unknown-syscall-names", _seccomp({"defaultAction": "SCMP_ACT_ALLOW",
                                                    "syscalls": [_errno_rule(
                                                        "not_a_syscall", "mkdir")]})),
    Case("seccomp-default-errno-allow-list", _allow_list_profile),
    Case("seccomp-empty-default-action", _seccomp({"defaultAction": ""})),
    Case("seccomp-bad-operator", _seccomp({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        _errno_rule("mkdir", args=[{"index": 0, "value": 1, "op": "SCMP_CMP_BOGUS"}])]}),
         expect="both-refuse"),
    Case("seccomp-bad-action", _seccomp({"defaultAction": "SCMP_ACT_BOGUS"}),
         expect="both-refuse"),
    Case("seccomp-bad-architecture", _seccomp({"defaultAction": "SCMP_ACT_ALLOW",
                                               "architectures": ["SCMP_ARCH_BOGUS"]}),
         expect="both-refuse"),
    Case("seccomp-argument-index-out-of-range", _seccomp(
        {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            _errno_rule("mkdir", args=[{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}])]}),
         expect="both-refuse"),
    Case("seccomp-empty-syscall-name", _seccomp({"defaultAction": "SCMP_ACT_ALLOW",
                                                 "syscalls": [_errno_rule("")]}),
         expect="both-refuse"),
]

# Exit statuses of the program, compared between the two.
EXIT_SCRIPTS = ["exit 0", "exit 1", "exit 3", "exit 255", "exit 256", "kill -TERM $$",
                "kill -KILL $$", "exec false"]


# --- normalizing the report ------------------------------------------------------------

def split_sections(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("## "):
            current = line[3:].strip()
            out[current] = []
        elif current is not None:
            out[current].append(line)
    return out


def _optional_fields(fields: list[str]) -> list[str]:
    # "shared:12 master:3" -> "shared master": the peer group numbers are the kernel's.
    return sorted(re.sub(r":\d+$", "", f) for f in fields)


def normalize_mountinfo(lines: list[str], subst: dict[str, str]) -> list[str]:
    """One line per mount, in order: mount point, fs type, source, root within the fs,
    per-mount options, propagation, super-block options (both sorted). Ids and device
    numbers are dropped; host paths become placeholders."""
    out = []
    for line in lines:
        fields = line.split()
        sep = fields.index("-")
        root, point, opts = fields[3], fields[4], fields[5]
        optional = fields[6:sep]
        fstype, source = fields[sep + 1], fields[sep + 2]
        superopts = fields[sep + 3] if len(fields) > sep + 3 else ""
        rec = " ".join([point, fstype, source, root, ",".join(sorted(opts.split(","))),
                        ",".join(_optional_fields(optional)) or "-",
                        ",".join(sorted(superopts.split(",")))])
        out.append(_subst(rec, subst))
    return out


def _subst(text: str, subst: dict[str, str]) -> str:
    # Longest first: the rootfs lives under the session's temp dir.
    for real, placeholder in sorted(subst.items(), key=lambda kv: -len(kv[0])):
        text = text.replace(real, placeholder)
    return text


def normalize_ns(lines: list[str], host: dict[str, str], helpers: dict[str, str]) -> list[str]:
    """`name link` -> `name host|new|joined`: inode numbers differ from run to run, what
    matters is whether the namespace is the host's, a fresh one or the joined one."""
    out = []
    for line in lines:
        name, link = line.split(" ", 1)
        if link in helpers:
            label = "joined"
        elif link == host.get(name):
            label = "host"
        else:
            label = "new"
        out.append(f"{name} {label}")
    return out


def normalize_dev(lines: list[str]) -> list[str]:
    """`ls -la /dev` -> type+mode, owner:group, major:minor (devices) or link target."""
    out = []
    for line in lines:
        t = line.split()
        if not t or t[0] == "total":
            continue
        perms, owner, group = t[0], t[2], t[3]
        if perms[0] in "cb":
            rest = t[9:]
            what = f"{t[4]}{t[5]}"
        else:
            rest = t[8:]
            what = t[4] if perms[0] == "-" else ""
        name = " ".join(rest)
        if name == "..":
            continue
        out.append(" ".join(x for x in (perms, f"{owner}:{group}", what, name) if x))
    return out


def normalize_report(text: str, subst: dict[str, str], host_ns: dict[str, str],
                     helper_links: dict[str, str]) -> dict[str, list[str]]:
    sec = split_sections(_subst(text, subst))
    if "mounts" in sec:
        sec["mounts"] = normalize_mountinfo(sec["mounts"], subst)
    if "ns" in sec:
        sec["ns"] = normalize_ns(sec["ns"], host_ns, helper_links)
    if "dev" in sec:
        sec["dev"] = normalize_dev(sec["dev"])
    if "cgroup" in sec:
        # The cgroup2 line of this hybrid host is compared on its own, in
        # test_hybrid_host_joins_unified_hierarchy.
        sec["cgroup"] = [line for line in sec["cgroup"] if not line.startswith("0::")]
    return sec


def host_capabilities() -> list[str]:
    """Names of the capabilities in this process's bounding set."""
    with open("/proc/self/status") as f:
        bnd = int([line for line in f if line.startswith("CapBnd:")][0].split()[1], 16)
    return [name for num, name in enumerate(ALL_CAPS) if bnd & (1 << num)]


def host_namespaces() -> dict[str, str]:
    return {name: os.readlink(f"/proc/self/ns/{name}") for name in os.listdir("/proc/self/ns")}
