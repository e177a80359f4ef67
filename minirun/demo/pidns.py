"""The pid namespace [espacio de nombres de procesos]."""

from __future__ import annotations

import os

from . import CannotRun

NAME = "pidns"
TITLE = "pid namespace: the container sees itself as pid 1 and nothing else"
EXPLAIN = """
A new pid namespace numbers the container's processes from 1: its first process is pid 1
and `ps` inside lists only the container's processes. The host (the parent namespace) sees
every one of them under its own, host-wide pid; /proc/<pid>/status's NSpid line shows both
numbers. Isolation of the *view*, not of the kernel: the processes are still scheduled,
counted and killable from the host.
"""


def run(lab) -> None:
    lab.say("Inside, the shell is pid 1 and ps lists only the container's processes:")
    proc = lab.run("busybox", "sh", "-c", "echo pid=$$; ps -o pid,comm; echo end")
    if proc.returncode != 0:
        raise CannotRun(f"the container failed: {proc.stderr.strip()}")
    lines = proc.stdout.splitlines()
    inside = [line.split() for line in lines[2:] if line.strip() and line != "end"]
    lab.observe("pid_inside", lines[0].removeprefix("pid=") if lines else "")
    lab.observe("processes_inside", len(inside))
    host_count = sum(1 for d in os.listdir("/proc") if d.isdigit())
    lab.observe("processes_on_host", host_count)
    lab.expect(lines[:1] == ["pid=1"], "the container's first process is pid 1")
    lab.expect(sorted(p[1] for p in inside) == ["ps", "sh"],
               "ps inside lists only the container's own processes",
               f"{len(inside)} inside, {host_count} on the host")

    lab.say("The host sees the container's pid 1 under its host pid; NSpid gives both:")
    name = lab.start("busybox", "sleep", "300", name="sleeper")
    pid = lab.pid_of(name)
    lab.minirun("exec", name, "ps", "-o", "pid,comm")
    lab.host("grep", "NSpid", f"/proc/{pid}/status")
    nspid = _nspid(pid)
    lab.observe("host_pid", pid)
    lab.observe("nspid", nspid)
    lab.expect(nspid == [pid, 1], "the host's pid and the container's pid 1 are one process",
               f"NSpid {nspid}")
    same = os.readlink(f"/proc/{pid}/ns/pid") == os.readlink("/proc/self/ns/pid")
    lab.expect(not same, "its pid namespace is not the host's")


def _nspid(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    return [int(x) for x in line.split()[1:]]
    except OSError:
        pass
    return []
