"""--privileged and --cap-add ALL on a host whose root lacks some capabilities (many CI
runners drop CAP_SYS_RESOURCE): they give the engine's own bounding set, as podman does,
instead of failing in capset; and a capability the runtime cannot grant is named.

The engine and minirun-oci run with capabilities dropped from their bounding set
(prctl(PR_CAPBSET_DROP) between fork and exec), so the case is made on any host."""

import ctypes

import pytest
from enginetest import engine  # noqa: F401
from ocitest import base_config, needs_root, oci, rootfs  # noqa: F401

from minirun.spec import CAPABILITIES

pytestmark = [needs_root, pytest.mark.root]

PR_CAPBSET_DROP = 24
# what CI runners withhold, and one this VM has, so something is really dropped here
DROPPED = ["CAP_SYS_RESOURCE", "CAP_BLOCK_SUSPEND"]


def drop_from_bounding_set() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    for name in DROPPED:
        if libc.prctl(PR_CAPBSET_DROP, CAPABILITIES[name], 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), f"PR_CAPBSET_DROP {name}")


def own_bounding_set() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1], 16) for line in f if line.startswith("CapBnd:"))


def reduced_bounding_set() -> int:
    mask = own_bounding_set()
    for name in DROPPED:
        mask &= ~(1 << CAPABILITIES[name])
    return mask


def one_line_error(proc) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.mark.parametrize("flags", [["--privileged"], ["--cap-add", "ALL"]])
def test_all_capabilities_means_the_engines_bounding_set(engine, flags):  # noqa: F811
    proc = engine("run", "--rm", "--network", "none", *flags, "busybox", "grep", "-E",
                  "^Cap(Bnd|Eff):", "/proc/self/status", preexec_fn=drop_from_bounding_set)
    assert proc.returncode == 0, proc.stderr
    caps = dict(line.split(":\t") for line in proc.stdout.splitlines())
    assert int(caps["CapBnd"], 16) == reduced_bounding_set(), caps
    assert int(caps["CapEff"], 16) == reduced_bounding_set(), caps


def test_a_capability_outside_the_bounding_set_is_named(engine):  # noqa: F811
    proc = engine("run", "--rm", "--name", "withheld", "--network", "none", "--cap-add",
                  "SYS_RESOURCE", "busybox", "true", preexec_fn=drop_from_bounding_set)
    assert proc.returncode == 125
    assert one_line_error(proc) == (
        "minirun: error: capability CAP_SYS_RESOURCE is not in the runtime's bounding set "
        "(the host withholds it), so the container cannot have it")
    assert engine("ps", "-a", "-q").stdout == ""


def test_minirun_oci_names_the_capabilities_it_cannot_grant(oci, rootfs):  # noqa: F811
    cfg = base_config(["true"])
    caps = cfg["process"]["capabilities"]
    for key in ("bounding", "effective", "permitted"):
        caps[key] = caps[key] + DROPPED
    cid = oci.new_id()
    proc = oci("run", "--bundle", oci.bundle(cfg, rootfs), cid,
               preexec_fn=drop_from_bounding_set)
    assert proc.returncode == 1
    assert one_line_error(proc).endswith(
        "capabilities CAP_SYS_RESOURCE, CAP_BLOCK_SUSPEND are not in the runtime's bounding "
        "set (the host withholds them), so the container cannot have them"), proc.stderr
    assert oci("state", cid).returncode != 0  # nothing was created
    # only in the bounding list, they are simply not there (as under runc)
    cfg = base_config(["grep", "CapBnd", "/proc/self/status"])
    cfg["process"]["capabilities"]["bounding"] += DROPPED
    proc = oci("run", "--bundle", oci.bundle(cfg, rootfs), oci.new_id(),
               preexec_fn=drop_from_bounding_set)
    assert proc.returncode == 0, proc.stderr
    shown = int(proc.stdout.split()[1], 16)
    assert not shown & (1 << CAPABILITIES["CAP_BLOCK_SUSPEND"])
    assert shown & (1 << CAPABILITIES["CAP_KILL"])

