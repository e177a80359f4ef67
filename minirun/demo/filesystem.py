"""The filesystem: chroot versus pivot_root, and masked /proc [seguridad]."""

from __future__ import annotations

import os

from . import CannotRun
from .probe import chroot_escape

NAME = "filesystem"
TITLE = "chroot can be escaped from inside, pivot_root cannot; /proc is masked"
EXPLAIN = """
chroot(2) only changes where path lookups start; a process that keeps its working
directory outside the new root walks up from it with "..", as far as the real root. The
lab builds a jail inside a container, then runs the classic escape (mkdir, chroot into
it, chdir("..") many times, chroot(".")) with CAP_SYS_CHROOT, which the default set has:
out of the jail, for real. The container itself was entered with pivot_root(2) and its old
root unmounted, so the same escape from the container's top only reaches the container's
own root: the host's / is not in its mount namespace at all.

Some of /proc describes the host, not the container: /proc/kcore is the host's memory,
/proc/sys its kernel settings, /proc/keys and /proc/timer_list leak host state. The
runtime masks such paths (a mount of /dev/null or an empty tmpfs over them) and mounts
/proc/sys read-only; --privileged removes both guards. The lab reads only the container's
mount table, and writes nothing.
"""

JAIL_SETUP = ("mkdir -p /jail/bin && cp /bin/busybox /jail/bin/sh && "
              "cp /bin/busybox /jail/bin/ls && cp /probe/escape /jail/escape")
# the paths docker masks; a masked one is a mount point in the container's mountinfo
MASKED = ("/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/sched_debug",
          "/proc/acpi", "/proc/scsi", "/sys/firmware")
PROC = ("echo masked=$(awk '" + " || ".join(f'$5 == \"{p}\"' for p in MASKED)
        + " {print $5}' /proc/self/mountinfo); "
        "echo proc_sys=$(awk '$2 == \"/proc/sys\" {split($4, o, \",\"); print o[1]}' "
        "/proc/mounts | tail -n 1)")


def run(lab) -> None:
    directory = lab.tempdir()
    path = os.path.join(directory, "escape")
    if os.uname().machine not in ("x86_64", "amd64"):
        raise CannotRun("the escape program is x86-64; this machine is not")
    with open(path, "wb") as f:
        f.write(chroot_escape())
    os.chmod(path, 0o755)
    lab.say("In a container: a jail made with chroot, what it sees, then the escape:")
    script = (f"{JAIL_SETUP}; echo jail=$(chroot /jail /bin/ls /); "
              "echo 'echo escaped=$(ls /)' | chroot /jail /escape; "
              "echo 'echo from_top=$(ls /)' | /probe/escape; echo container=$(ls /)")
    proc = lab.run("-v", f"{directory}:/probe:ro", "busybox", "sh", "-c", script)
    views = {k: v.split() for k, v in (line.split("=", 1) for line in proc.stdout.splitlines()
                                       if "=" in line)}
    if set(views) != {"jail", "escaped", "from_top", "container"}:
        raise CannotRun(f"the jail did not run: {proc.stderr.strip()}")
    host_only = sorted(set(os.listdir("/")) - set(views["container"]))
    for key in ("jail", "escaped", "from_top"):
        lab.observe(f"ls_root[{key}]", views[key])
    lab.observe("host_only_entries", host_only)
    lab.expect(views["jail"] == ["bin", "escape"], "inside the jail only the jail is seen")
    lab.expect("jail" in views["escaped"] and "etc" in views["escaped"],
               "the chroot escape reaches the container's root (outside the jail)")
    lab.expect(bool(host_only) and not set(host_only) & set(views["from_top"]),
               "the same escape from the pivot_root'ed container stays in the container",
               f"none of the host's {', '.join(host_only[:4])}... is reached")

    proc_view = {}
    for label, flags in (("default", ()), ("privileged", ("--privileged",))):
        lab.say(f"Masked /proc paths and /proc/sys, {label}:")
        proc = lab.run(*flags, "busybox", "sh", "-c", PROC)
        got = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
        proc_view[label] = got
        lab.observe(f"masked[{label}]", got.get("masked", "").split())
        lab.observe(f"proc_sys[{label}]", got.get("proc_sys", ""))
    lab.expect(bool(proc_view["default"].get("masked"))
               and proc_view["default"].get("proc_sys") == "ro",
               "by default host paths of /proc are masked and /proc/sys is read-only")
    lab.expect(not proc_view["privileged"].get("masked")
               and proc_view["privileged"].get("proc_sys") != "ro",
               "--privileged unmasks them and makes /proc/sys writable")
