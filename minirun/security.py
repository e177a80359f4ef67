"""Process security settings applied by the container's init just before execve:
rlimits, user and groups, capabilities, no_new_privs, oom score.

Capabilities go through capset(2) and prctl(2) in minirun.sys (a dozen lines of ctypes)
rather than python-prctl: no compiled dependency on the start path, and the whole set is
applied in one capset call as runc does.
"""

from __future__ import annotations

import errno
import os
import resource
import stat

from . import sys as _sys
from .errors import InvalidSpec
from .runlog import warn

CAP_LAST_CAP_FILE = "/proc/sys/kernel/cap_last_cap"


def capability_plan(caps: dict | None, known: dict[str, int], top: int) -> dict:
    """process.capabilities as masks, computed before the container starts.

    Unknown names, or ones this kernel does not have, are left out with runc's warning
    (runc 1.1 runs such a container rather than failing it). Without a capabilities
    object the process gets none, bounding set included, as under runc."""
    caps = caps or {}
    plan = {}
    unknown = set()
    for key in ("bounding", "effective", "permitted", "inheritable", "ambient"):
        mask = 0
        for name in caps.get(key) or []:
            num = known.get(name)
            if num is None or num > top:
                unknown.add(name)
            else:
                mask |= 1 << num
        plan[key] = mask
    if unknown:
        warn(f"ignoring unknown or unavailable capabilities: [{' '.join(sorted(unknown))}]")
    _check_bounding(plan, known)
    return plan


def _check_bounding(plan: dict, known: dict[str, int]) -> None:
    """capset(2) cannot grant a capability outside the caller's bounding set: runc then
    fails with a bare "capset: operation not permitted". Say which one, before anything
    is made. Many CI hosts withhold some (CAP_SYS_RESOURCE) even from root. A capability
    only in the bounding list is no error: the container's set is simply without it."""
    wanted = plan["effective"] | plan["permitted"] | plan["inheritable"] | plan["ambient"]
    missing = [name for name, num in sorted(known.items(), key=lambda item: item[1])
               if wanted & (1 << num) and
               not _sys.prctl(_sys.PR_CAPBSET_READ, num, name="prctl(PR_CAPBSET_READ)")]
    if len(missing) == 1:
        raise InvalidSpec(f"capability {missing[0]} is not in the runtime's bounding set "
                          "(the host withholds it), so the container cannot have it")
    if missing:
        raise InvalidSpec(f"capabilities {', '.join(missing)} are not in the runtime's "
                          "bounding set (the host withholds them), so the container cannot "
                          "have them")


def last_cap() -> int:
    try:
        with open(CAP_LAST_CAP_FILE) as f:
            return int(f.read())
    except OSError:
        return 40


def drop_bounding(plan: dict, top: int) -> None:
    for cap in range(top + 1):
        if not plan["bounding"] & (1 << cap):
            try:
                _sys.prctl(_sys.PR_CAPBSET_DROP, cap, name="prctl(PR_CAPBSET_DROP)")
            except _sys.SysError as e:
                if e.errno != 22:  # EINVAL: a capability this kernel does not know
                    raise


def apply_caps(plan: dict, top: int) -> None:
    _sys.capset(plan["effective"], plan["permitted"], plan["inheritable"])
    _sys.prctl(_sys.PR_CAP_AMBIENT, _sys.PR_CAP_AMBIENT_CLEAR_ALL, name="prctl(PR_CAP_AMBIENT)")
    for cap in range(top + 1):
        if plan["ambient"] & (1 << cap):
            try:
                _sys.prctl(_sys.PR_CAP_AMBIENT, _sys.PR_CAP_AMBIENT_RAISE, cap,
                           name=f"prctl(PR_CAP_AMBIENT_RAISE {cap})")
            except _sys.SysError as e:
                # A capability not also inheritable cannot be ambient; runc goes on
                # without it (its default spec asks for exactly that).
                if e.errno != 1:  # EPERM
                    raise


def rlimit_plan(rlimits: list[dict] | None) -> list[tuple[int, int, int, str]]:
    plan = []
    for i, rl in enumerate(rlimits or []):
        name = rl.get("type", "")
        num = getattr(resource, name, None) if name.startswith("RLIMIT_") else None
        if num is None:
            raise InvalidSpec(f"process.rlimits[{i}].type: unknown rlimit {name!r}")
        plan.append((num, rl.get("soft", 0), rl.get("hard", 0), name))
    return plan


def apply_rlimits(plan: list[tuple[int, int, int, str]]) -> None:
    for num, soft, hard, name in plan:
        try:
            # OCI limits are uint64 (unlimited is 2**64-1, as podman writes it); Python
            # takes rlim_t as signed, the same bits.
            resource.setrlimit(num, tuple(v - 2**64 if v >= 2**63 else v for v in (soft, hard)))
        except (ValueError, OverflowError, OSError) as e:
            raise InvalidSpec(f"setrlimit {name} soft={soft} hard={hard}: {e}") from None


def set_oom_score_adj(value: int) -> None:
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write(str(value))
    except OSError as e:
        # Lowering the score needs CAP_SYS_RESOURCE, which some hosts (this VM) withhold
        # even from root: say so and go on rather than fail the whole container.
        warn(f"cannot set oomScoreAdj to {value}: {e.strerror}")


def _no_step(name: str) -> None:
    pass


def set_user(user: dict, setgroups_allowed: bool, step=_no_step) -> None:
    """setgroups, setresgid, setresuid; `step` is told each call first (a seccomp
    filter may already be loaded)."""
    uid = user.get("uid", 0)
    gid = user.get("gid", 0)
    groups = user.get("additionalGids") or []
    if setgroups_allowed:
        step("setgroups")
        os.setgroups(groups)
    elif groups:
        raise InvalidSpec("process.user.additionalGids cannot be set: setgroups is denied in "
                          "this user namespace")
    step("setresgid")
    os.setresgid(gid, gid, gid)
    step("setresuid")
    os.setresuid(uid, uid, uid)


def give_stdio_to(uid: int, own_pty: bool) -> None:
    """Make the process's stdio (its pty, or the pipes it was given) belong to the uid it
    is about to become, as runc's fixStdioPermissions: a program that drops to a user
    must still reopen /dev/stdout or /proc/self/fd/0, and `tty` must be its own. Left
    alone: /dev/null, whatever the kernel does not let us change (an owner or group the
    user namespace does not map, a read-only file system) and, unlike runc, a terminal
    that is not the container's own pty (`own_pty`): the caller's, on the host."""
    try:
        null = os.stat("/dev/null").st_rdev
    except OSError:
        null = -1
    for fd in (0, 1, 2):
        try:
            st = os.fstat(fd)
        except OSError:
            continue  # closed
        if st.st_uid == uid or (stat.S_ISCHR(st.st_mode) and (st.st_rdev == null or
                                                             not own_pty)):
            continue
        try:
            # only the owner: the group may be one the mount prefers (devpts' tty group)
            os.fchown(fd, uid, -1)
        except OSError as e:
            if e.errno not in (errno.EINVAL, errno.EPERM, errno.EROFS):
                raise _sys.SysError("fchown", f"stdio fd {fd}", e.errno or 0) from None


def setgroups_allowed() -> bool:
    try:
        with open("/proc/self/setgroups") as f:
            return f.read().strip() != "deny"
    except OSError:
        return True


def home_for(uid: int) -> str:
    """HOME from the container's /etc/passwd, "/" when the user is not listed (runc)."""
    try:
        with open("/etc/passwd") as f:
            for line in f:
                fields = line.rstrip("\n").split(":")
                if len(fields) >= 6 and fields[2] == str(uid):
                    return fields[5] or "/"
    except OSError:
        pass
    return "/"
