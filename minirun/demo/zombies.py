"""pid 1 and child processes [manejo de procesos hijo]."""

from __future__ import annotations

import os
import time

from . import CannotRun

NAME = "zombies"
TITLE = "pid 1: without --init orphans stay zombies and SIGTERM waits for the SIGKILL"
EXPLAIN = """
In its pid namespace the container's first process is pid 1, and pid 1 has two duties a
normal program does not know about: it adopts every orphaned process and must reap it
(wait(2)) when it exits, or it stays a zombie, a slot in the process table; and the kernel
does not apply a default action to signals sent to it, so a pid 1 with no SIGTERM handler
ignores `minirun stop`'s SIGTERM, and stop has to wait for the timeout and SIGKILL. Here
pid 1 is `sleep` (a shell that exec's it after leaving three orphans behind). With
`--init`, a small init (tini) is pid 1: it reaps the orphans and forwards SIGTERM to the
program, which then dies at once.
"""

# three short-lived orphans, then pid 1 becomes a program that never calls wait(2)
ORPHANS = 3
COMMAND = ("sh", "-c", (f'for i in $(seq {ORPHANS}); do sh -c "sleep 1 &"; done; '
                        "exec sleep 300"))
STOP_TIMEOUT = 3


def run(lab) -> None:
    for init in (False, True):
        label = "--init" if init else "no init"
        lab.say(f"With {label}: three orphans, then pid 1 is sleep; wait two seconds, count "
                "zombies from the host:")
        name = lab.start(*(["--init"] if init else []), "busybox", *COMMAND,
                         name="init" if init else "noinit")
        pid = lab.pid_of(name)
        cgroup = lab.cgroup_dir(pid, "pids")
        time.sleep(2)
        lab.minirun("exec", name, "ps", "-o", "pid,ppid,stat,comm")
        zombies = count_zombies(cgroup, pid)
        key = "init" if init else "no_init"
        lab.observe(f"zombies[{key}]", zombies)
        lab.say(f"`minirun stop -t {STOP_TIMEOUT}`: SIGTERM, then SIGKILL after "
                f"{STOP_TIMEOUT} s")
        state = lab.minirun("inspect", "-f", "{{.State.Status}}", name, quiet=True)
        if state.stdout.strip() != "running":
            raise CannotRun(f"{name} is {state.stdout.strip() or 'gone'} before the stop: "
                            f"its pid 1 should still be sleeping")
        started = time.monotonic()
        proc = lab.minirun("stop", "-t", str(STOP_TIMEOUT), name)
        seconds = round(time.monotonic() - started, 2)
        if proc.returncode != 0:
            raise CannotRun(f"minirun stop failed: {proc.stderr.strip()}")
        lab.observe(f"stop_seconds[{key}]", seconds)
        if init:
            lab.expect(zombies == 0, "with --init the orphans are reaped", f"{zombies} zombies")
            lab.expect(seconds < STOP_TIMEOUT - 1, "with --init SIGTERM reaches the program "
                       "and stop is quick", f"{seconds} s")
        else:
            lab.expect(zombies == ORPHANS, "without --init every orphan stays a zombie",
                       f"{zombies} of {ORPHANS}")
            lab.expect(seconds >= STOP_TIMEOUT, "without --init pid 1 ignores SIGTERM: stop "
                       "waits for the SIGKILL", f"{seconds} s")


def count_zombies(cgroup: str, pid1: int) -> int:
    """Zombies whose parent is one of the container's processes (a zombie has left the
    cgroup's process list, so it is found by its parent), read from the host's /proc."""
    try:
        with open(os.path.join(cgroup, "cgroup.procs")) as f:
            members = {int(x) for x in f.read().split()} | {pid1}
    except OSError as e:
        raise CannotRun(f"cannot read the container's cgroup: {e}") from None
    count = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] == "Z" and int(fields[1]) in members:
            count += 1
    return count
