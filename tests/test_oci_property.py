"""Property: whatever config.json it is given, `minirun-oci run` never hangs, and either
runs the container (exit status: the program's) or exits 1 with one error line on stderr
(after any labelled warning lines) naming the problem rather than a Python exception, and
leaves nothing behind: no state dir, no cgroup, no mount, no process in the rootfs.

The configs start from base_config() and are mutated by hypothesis: namespaces (duplicates,
unknown types), mounts (types, options, destinations with "..", relative ones), hostnames,
env entries, rlimits, capabilities, cwd, args, resources, JSON values of the wrong type in
random places, and truncated JSON text. Derandomized so CI sees the same 60 examples.

Nothing generated may touch the host outside the test's directory: no hooks, no
namespace paths, no cgroupsPath, bind sources only from the test's scratch directory,
root.path only the test's own rootfs copy, and no rootfsPropagation "shared" (that asks
for mounts to propagate to the host, a leak by design); args come from a fixed set of
commands that exit at once.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ocitest import (  # noqa: F401 - fixtures are used by name
    OCI_CMD, base_config, container_cgroup_dirs, mounts_mentioning, needs_root, new_id,
    processes_rooted_in, rootfs, wait_for)

pytestmark = [needs_root, pytest.mark.root]

RUN_TIMEOUT = 30

# programs -> their exit status when the container runs
PROGRAMS = [(["true"], 0), (["sh", "-c", "exit 7"], 7), (["/bin/sh", "-c", "exit 42"], 42)]
BAD_ARGS = [[], [""], ["/nonexistent/prog"], ["no-such-command"], ["/"], ["/etc/passwd"]]

NS_TYPES = ["pid", "network", "mount", "ipc", "uts", "cgroup", "time", "user"]
MOUNT_TYPES = ["proc", "tmpfs", "sysfs", "mqueue", "devpts", "bind", "cgroup", "ramfs",
               "nosuchfs", "", "overlay"]
MOUNT_OPTIONS = ["ro", "rw", "nosuid", "nodev", "noexec", "bind", "rbind", "private",
                 "rprivate", "slave", "rslave", "shared", "unbindable", "size=1m", "mode=755",
                 "mode=99999", "uid=5", "strictatime", "relatime", "noatime", "rro", "rnosuid",
                 "newinstance", "bogus-option", "nr_inodes=1k", "mand", "sync", "dirsync"]
DESTINATIONS = ["/data", "/tmp/x", "/a/../b", "/../../../escape", "relative/dir", "",
                "/proc", "/proc/sys", "/dev/x", "/sys/fs", "/", "/etc/passwd", "/tmp/../../..",
                "/bin/true", "/deep/a/b/c/d", "//double//slash", "/tmp/./dot"]
RLIMIT_TYPES = ["RLIMIT_NOFILE", "RLIMIT_NPROC", "RLIMIT_CORE", "RLIMIT_MEMLOCK",
                "RLIMIT_NICE", "RLIMIT_RTPRIO", "RLIMIT_MSGQUEUE", "RLIMIT_SIGPENDING",
                "RLIMIT_LOCKS", "RLIMIT_BOGUS", "nofile", ""]
RLIMIT_VALUES = [-1, 0, 1, 64, 1024, 4096, 2**31, 2**63 - 1, 2**64 - 1, 2**64, 2**70]
CAP_NAMES = ["CAP_KILL", "CAP_CHOWN", "CAP_SYS_ADMIN", "CAP_NET_RAW", "CAP_BOGUS", "KILL",
             "cap_kill", "", "CAP_SYS_PTRACE", "CAP_SETUID", "CAP_SETGID", "CAP_PERFMON"]
CWDS = ["/", "/tmp", "/does/not/exist", "relative", "", "/etc/passwd", "/proc/self/fd/3",
        "/proc/1/fd/0", "/proc/self/task/1/fd/1", "/../../..", "/tmp/../../etc", "/dev/null"]
PROPAGATIONS = ["private", "rprivate", "slave", "rslave", "unbindable", "runbindable", "bogus",
                ""]
BIG_INTS = [-(2**63), -2, -1, 0, 1, 2, 1000, 4096, 100000, 2**20, 2**30, 2**40, 2**62, 2**64]

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**65, 2**65),
                         st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12))
json_values = st.recursive(json_scalars,
                           lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                   st.dictionaries(st.text(max_size=6), inner,
                                                                   max_size=3)),
                           max_leaves=6)
# What a random value may never replace: anything naming a host path or a command.
UNTOUCHABLE_KEYS = {"root", "path", "source", "args", "hooks", "cgroupsPath", "uidMappings",
                    "gidMappings", "rootfsPropagation"}


def _paths(node, prefix=()):
    """Every (container, key) place in the config a random value may go."""
    items = node.items() if isinstance(node, dict) else enumerate(node) \
        if isinstance(node, list) else ()
    for key, value in items:
        if key in UNTOUCHABLE_KEYS:
            continue
        yield prefix + (key,)
        yield from _paths(value, prefix + (key,))


def _set(cfg, path, value):
    node = cfg
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


@st.composite
def mounts(draw, scratch):
    kind = draw(st.sampled_from(MOUNT_TYPES))
    m = {"destination": draw(st.sampled_from(DESTINATIONS)), "type": kind}
    if kind == "bind" or draw(st.booleans()):
        m["source"] = draw(st.sampled_from([scratch, os.path.join(scratch, "file"),
                                            "relative-missing", "/nonexistent-minirun-src",
                                            "tmpfs", kind or "none"]))
    if draw(st.booleans()):
        m["options"] = draw(st.lists(st.sampled_from(MOUNT_OPTIONS), max_size=4))
    return m


def _mutate_args(draw, cfg, ctx):
    cfg["process"]["args"] = draw(st.sampled_from(BAD_ARGS))


def _mutate_readonly(draw, cfg, ctx):
    cfg["root"]["readonly"] = draw(st.booleans())


def _mutate_namespaces(draw, cfg, ctx):
    linux = cfg["linux"]
    kinds = draw(st.lists(st.sampled_from(NS_TYPES + ["bogus", "PID", ""]), max_size=9))
    if draw(st.booleans()):
        kinds.append("mount")  # most runs then get past the mount namespace check
    linux["namespaces"] = [{"type": t} for t in kinds]
    if "user" in kinds and draw(st.booleans()):
        linux["uidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
        linux["gidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]


def _mutate_mounts(draw, cfg, ctx):
    cfg["mounts"] += draw(st.lists(mounts(ctx["scratch"]), min_size=1, max_size=3))


def _mutate_mount_order(draw, cfg, ctx):
    cfg["mounts"] = draw(st.permutations(cfg["mounts"]))[:draw(st.integers(0, 7))]


def _mutate_hostname(draw, cfg, ctx):
    cfg["hostname"] = draw(st.one_of(st.sampled_from(
        ["ctr", "", "a" * 64, "a" * 65, "host.name", "bad\nname", "x\x00y"]),
        st.text(max_size=80)))


def _mutate_env(draw, cfg, ctx):
    cfg["process"]["env"] = draw(st.lists(st.one_of(
        st.sampled_from(["PATH=/bin", "A=b=c", "NOEQUALS", "=", "PATH=", "X=\x00", "\x00=1"]),
        st.text(max_size=10)), max_size=4))


def _mutate_rlimits(draw, cfg, ctx):
    cfg["process"]["rlimits"] = [{"type": draw(st.sampled_from(RLIMIT_TYPES)),
                                  "soft": draw(st.sampled_from(RLIMIT_VALUES)),
                                  "hard": draw(st.sampled_from(RLIMIT_VALUES))}
                                 for _ in range(draw(st.integers(1, 3)))]


def _mutate_capabilities(draw, cfg, ctx):
    names = st.lists(st.sampled_from(CAP_NAMES), max_size=4)
    sets = draw(st.lists(st.sampled_from(["bounding", "effective", "permitted", "inheritable",
                                          "ambient", "bogus"]), unique=True, max_size=5))
    cfg["process"]["capabilities"] = {k: draw(names) for k in sets}


def _mutate_cwd(draw, cfg, ctx):
    cfg["process"]["cwd"] = draw(st.sampled_from(CWDS))


def _mutate_user(draw, cfg, ctx):
    cfg["process"]["user"] = {"uid": draw(st.sampled_from([1000, 0, 65534, -1, 2**32])),
                              "gid": draw(st.sampled_from([1000, 0, -1, 2**32]))}


def _mutate_resources(draw, cfg, ctx):
    resources = cfg["linux"]["resources"]
    which = draw(st.lists(st.sampled_from(["memory", "cpu", "pids", "blockIO"]), min_size=1,
                          unique=True))
    if "memory" in which:
        limit = draw(st.sampled_from(BIG_INTS))
        resources["memory"] = {"limit": limit}
        if 0 < limit < 64 * 2**20:
            ctx["exit"].add(128 + signal.SIGKILL)  # the OOM killer may take the program
        if draw(st.booleans()):
            resources["memory"]["swap"] = draw(st.sampled_from(BIG_INTS))
    if "cpu" in which:
        resources["cpu"] = {k: draw(st.sampled_from(BIG_INTS)) for k in draw(st.lists(
            st.sampled_from(["shares", "quota", "period"]), unique=True, max_size=3))}
        if draw(st.booleans()):
            resources["cpu"]["cpus"] = draw(st.sampled_from(["0", "0-9999", "abc", ""]))
    if "pids" in which:
        resources["pids"] = {"limit": draw(st.sampled_from(BIG_INTS))}
    if "blockIO" in which:
        resources["blockIO"] = {"weight": draw(st.sampled_from([500, -1, 0, 10, 1000, 70000]))}


def _mutate_propagation(draw, cfg, ctx):
    cfg["linux"]["rootfsPropagation"] = draw(st.sampled_from(PROPAGATIONS))


def _mutate_any_value(draw, cfg, ctx):
    """A JSON value of any type in a random place."""
    _set(cfg, draw(st.sampled_from(list(_paths(cfg)))), draw(json_values))


MUTATORS = [_mutate_args, _mutate_readonly, _mutate_namespaces, _mutate_mounts,
            _mutate_mount_order, _mutate_hostname, _mutate_env, _mutate_rlimits,
            _mutate_capabilities, _mutate_cwd, _mutate_user, _mutate_resources,
            _mutate_propagation, _mutate_any_value, "truncate"]


@st.composite
def configs(draw, rootfs_path: str, scratch: str):
    """(config.json text, statuses the container may exit with when it runs): a few
    mutations of base_config(), each of which may or may not keep the config valid."""
    cfg = base_config()
    cfg["root"]["path"] = rootfs_path
    args, status = draw(st.sampled_from(PROGRAMS))
    cfg["process"]["args"] = list(args)
    ctx = {"exit": {status}, "scratch": scratch}
    truncate = False
    for mutate in draw(st.lists(st.sampled_from(MUTATORS), unique=True, max_size=2)):
        if mutate == "truncate":
            truncate = True
        else:
            mutate(draw, cfg, ctx)
    text = json.dumps(cfg)
    if truncate:
        text = text[:draw(st.integers(0, len(text) - 1))]
    return text, ctx["exit"]


@pytest.fixture(scope="module")
def world(rootfs, tmp_path_factory):
    """A rootfs copy the mutated configs may scribble mount points into, a scratch dir
    for bind sources, and a state root; all under one directory the leak checks watch."""
    base = tmp_path_factory.mktemp("oci-property")
    own = str(base / "rootfs")
    # cp -a keeps busybox's hard links: 2 MB instead of one copy per applet
    subprocess.run(["cp", "-a", rootfs, own], check=True)
    scratch = base / "scratch"
    scratch.mkdir()
    (scratch / "file").write_text("host file\n")
    yield {"base": str(base), "rootfs": own, "scratch": str(scratch),
           "state": str(base / "state")}
    for line in reversed(mounts_mentioning(str(base))):
        subprocess.run(["umount", "-l", line.split()[4]], check=False)


class Leftovers:
    def __init__(self, world: dict, cid: str) -> None:
        self.world = world
        self.cid = cid

    def find(self) -> list[str]:
        w = self.world
        leaks = []
        if os.path.exists(os.path.join(w["state"], self.cid)):
            leaks.append("state dir")
        leaks += [f"cgroup {d}" for d in container_cgroup_dirs(f"/minirun/{self.cid}")]
        leaks += [f"mount {line.split()[4]}" for line in mounts_mentioning(w["base"])]
        # the init is reaped before run returns; give a stray child a moment to go
        if processes_rooted_in(w["rootfs"]):
            wait_for(lambda: not processes_rooted_in(w["rootfs"]), 2)
        leaks += [f"process {pid}" for pid in processes_rooted_in(w["rootfs"])]
        return leaks

    def remove(self) -> None:
        w = self.world
        subprocess.run(OCI_CMD + ["--root", w["state"], "delete", "--force", self.cid],
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=60, check=False)
        for pid in processes_rooted_in(w["rootfs"]):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for line in reversed(mounts_mentioning(w["base"])):
            subprocess.run(["umount", "-l", line.split()[4]], check=False)
        for d in container_cgroup_dirs(f"/minirun/{self.cid}"):
            try:
                os.rmdir(d)
            except OSError:
                pass


def check_one(world: dict, text: str, statuses: set[int]) -> None:
    cid = new_id("prop")
    bundle = os.path.join(world["base"], f"bundle-{cid}")
    os.mkdir(bundle)
    with open(os.path.join(bundle, "config.json"), "w") as f:
        f.write(text)
    leftovers = Leftovers(world, cid)
    try:
        try:
            proc = subprocess.run(OCI_CMD + ["--root", world["state"], "run", "--bundle", bundle,
                                             cid], stdin=subprocess.DEVNULL,
                                  capture_output=True, text=True, timeout=RUN_TIMEOUT,
                                  check=False)
        except subprocess.TimeoutExpired:
            pytest.fail(f"minirun-oci run hung for {RUN_TIMEOUT}s on:\n{text}")
        errors = proc.stderr.splitlines()
        event(f"exit {proc.returncode}" + (f": {errors[-1][:60]}" if errors else ""))
        context = f"exit {proc.returncode}, stderr {proc.stderr!r}, config:\n{text}"
        assert "Traceback" not in proc.stderr, context
        # runc's sense of "one line": warnings may come first, each on its own labelled
        # line; the error itself is one line, never a traceback.
        errors = [e for e in errors if not e.startswith("minirun: warning: ")]
        if proc.returncode == 1:
            assert len(errors) == 1, context
            assert errors[0].startswith("minirun-oci: "), context
            # a message naming the problem, not a Python exception that escaped
            assert not re.match(r"minirun-oci: [A-Z]\w*(Error|Exception)\b", errors[0]), context
        else:
            assert proc.returncode in statuses, context
        leaks = leftovers.find()
        assert not leaks, f"left on the host: {leaks}; {context}"
    finally:
        leftovers.remove()
        os.unlink(os.path.join(bundle, "config.json"))
        os.rmdir(bundle)


@pytest.mark.root
@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_run_any_config_never_hangs_or_leaks(world, data):
    text, statuses = data.draw(configs(world["rootfs"], world["scratch"]))
    check_one(world, text, statuses)
