"""Shared kernel [núcleo compartido; no hypervisor type 1]."""

from __future__ import annotations

import os

from . import CannotRun

NAME = "kernel"
TITLE = "one kernel: the container's uname and /proc/version are the host's"
EXPLAIN = """
A container is a group of host processes with a restricted view (OS virtualization
[virtualización a nivel de sistema operativo]); there is no guest kernel and no hypervisor
between it and the host. `uname -r` and /proc/version inside equal the host's, and the
container's pid 1 is an ordinary process in the host's process table, with its own host
pid. A VM boots its own kernel on virtual hardware under a hypervisor (type 1, on the metal,
or type 2, on a host OS): a kernel bug reachable from a container is reachable from the host;
from a VM it first meets the hypervisor.
"""


def run(lab) -> None:
    host_release = os.uname().release
    with open("/proc/version") as f:
        host_version = f.read().strip()
    lab.say("The kernel release, on the host and in a container:")
    lab.host("uname", "-r")
    proc = lab.run("busybox", "sh", "-c", "uname -r; cat /proc/version")
    if proc.returncode != 0:
        raise CannotRun(f"the container failed: {proc.stderr.strip()}")
    lines = proc.stdout.splitlines()
    lab.observe("host_release", host_release)
    lab.observe("container_release", lines[0] if lines else "")
    lab.expect(lines[:1] == [host_release], "uname -r in the container is the host's")
    lab.expect(lines[1:2] == [host_version], "/proc/version in the container is the host's")

    lab.say("A container's process, seen from the host: an ordinary process with a host pid.")
    name = lab.start("busybox", "sleep", "300", name="sleeper")
    pid = lab.pid_of(name)
    lab.host("ps", "-o", "pid,ppid,comm", "-p", str(pid))
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().replace(b"\0", b" ").decode().strip()
    except OSError as e:
        raise CannotRun(f"cannot read /proc/{pid}: {e}") from None
    lab.observe("host_pid", pid)
    lab.observe("host_cmdline", cmdline)
    lab.expect(cmdline == "sleep 300", "the container's pid 1 is a host process",
               f"host pid {pid}")
    lab.observe("hypervisor", _hypervisor())
    if _ns(pid, "time") is not None:  # a kernel without time namespaces: nothing to compare
        lab.expect(_ns(pid, "time") == _ns(os.getpid(), "time"),
                   "it shares the host's clocks (same time namespace)")
    lab.say("No hypervisor stands between them: the host's kernel runs the container's "
            "system calls directly. (This host itself may be a VM: "
            f"{_hypervisor() or 'no hypervisor flag in /proc/cpuinfo'}.)")


def _ns(pid: int, kind: str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/{kind}")
    except OSError:
        return None


def _hypervisor() -> str:
    """The CPU's hypervisor flag: whether the *host* is a guest of a hypervisor."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return "hypervisor flag set" if " hypervisor" in line else ""
    except OSError:
        pass
    return ""
