"""Resource limits: cgroups [grupos de control; límites de recursos]."""

from __future__ import annotations

import os
import time

from . import CannotRun

NAME = "limits"
TITLE = "cgroups: a fork bomb stops at --pids-limit, a memory hog dies at -m, --cpus 0.5 holds"
EXPLAIN = """
Namespaces limit what a container sees; cgroups limit what it uses. Without limits a
container may take every process slot, all the memory and every CPU of the host. Each
limit is shown against a bounded run without it (the lab never runs an unlimited fork
bomb or memory hog on the host):
- pids: a real fork bomb under --pids-limit 32 stays at 32 processes (the kernel refuses
  the other forks: pids.events counts them); without a limit, 100 sleeps all start.
- memory: under -m 32m a 200 MiB hog is killed by the kernel's OOM killer: exit status 137
  (128 + SIGKILL) and OOMKilled in `minirun inspect`; without it 64 MiB pass.
- cpu: a busy loop under --cpus 0.5 gets half a CPU (the CFS quota), measured from the
  cgroup's CPU time over two seconds of wall time; without it, a whole CPU.
"""

PIDS_LIMIT = 32
UNLIMITED_SLEEPS = 100
BUSY = ("sh", "-c", "while :; do :; done")
SAMPLE_SECONDS = 2.0


def run(lab) -> None:
    pids(lab)
    memory(lab)
    cpu(lab)


def pids(lab) -> None:
    lab.say(f"A fork bomb under --pids-limit {PIDS_LIMIT} (watched from the host's cgroup "
            "files):")
    name = lab.start("--pids-limit", str(PIDS_LIMIT), "busybox", "sh", "-c",
                     "b() { b | b & }; b; exec sleep 300", name="forkbomb")
    directory = lab.cgroup_dir(lab.pid_of(name), "pids")
    time.sleep(1.5)
    current = int(_read(directory, "pids.current"))
    refused = _events_max(directory)
    lab.host("cat", os.path.join(directory, "pids.max"), os.path.join(directory, "pids.current"),
             os.path.join(directory, "pids.events"))
    lab.remove(name)
    lab.observe("pids_current[limited]", current)
    lab.observe("forks_refused[limited]", refused)
    lab.expect(current <= PIDS_LIMIT, "the fork bomb never exceeds --pids-limit",
               f"{current} of {PIDS_LIMIT}")
    lab.expect(refused > 0, "the kernel refused the forks beyond it", f"{refused} refused")

    lab.say(f"Without a limit, {UNLIMITED_SLEEPS} sleeps (bounded, not a bomb) all start:")
    name = lab.start("busybox", "sh", "-c",
                     f"for i in $(seq {UNLIMITED_SLEEPS}); do sleep 300 & done; "
                     "exec sleep 300", name="sleeps")
    directory = lab.cgroup_dir(lab.pid_of(name), "pids")
    time.sleep(1)
    current = int(_read(directory, "pids.current"))
    limit = _read(directory, "pids.max")
    lab.remove(name)
    lab.observe("pids_current[unlimited]", current)
    lab.observe("pids_max[unlimited]", limit)
    lab.expect(current > PIDS_LIMIT and current >= UNLIMITED_SLEEPS,
               f"without --pids-limit all {UNLIMITED_SLEEPS} start",
               f"{current} processes; pids.max {limit}, the engine's default")


def memory(lab) -> None:
    lab.say("A memory hog under -m 32m: tail holds all of its input, 200 MiB of it.")
    proc = lab.run("-m", "32m", "busybox", "sh", "-c", "head -c 200m /dev/zero | tail",
                   name="hog", remove=False)
    name = lab.last_name
    state = lab.minirun("inspect", "-f", "{{.State.OOMKilled}} {{.State.ExitCode}}", name)
    lab.remove(name)
    oom_killed, _, exit_code = state.stdout.strip().partition(" ")
    lab.observe("exit_status[limited]", proc.returncode)
    lab.observe("oom_killed[limited]", oom_killed == "true")
    lab.expect(proc.returncode == 137, "the hog is killed (exit status 137 = 128 + SIGKILL)")
    lab.expect(oom_killed == "true" and exit_code == "137",
               "inspect says OOMKilled, from the cgroup's OOM-kill count")
    lab.say("Without a limit, a bounded 64 MiB passes:")
    proc = lab.run("busybox", "sh", "-c", "head -c 64m /dev/zero | tail | wc -c", name="hog")
    lab.observe("exit_status[unlimited]", proc.returncode)
    lab.expect(proc.returncode == 0 and proc.stdout.strip() == str(64 << 20),
               "without -m the same kind of hog is not killed")


def cpu(lab) -> None:
    shares = {}
    for label, flags in (("limited", ("--cpus", "0.5")), ("unlimited", ())):
        lab.say(f"A busy loop {'under --cpus 0.5' if flags else 'without a limit'}, "
                f"its CPU time over {SAMPLE_SECONDS:g} s of wall time:")
        name = lab.start(*flags, "busybox", *BUSY, name="busy")
        read = _cpu_reader(lab, lab.pid_of(name))
        time.sleep(0.5)
        used0, wall0 = read(), time.monotonic()
        time.sleep(SAMPLE_SECONDS)
        used1, wall1 = read(), time.monotonic()
        lab.remove(name)
        shares[label] = round((used1 - used0) / (wall1 - wall0), 2)
        lab.observe(f"cpu_share[{label}]", shares[label])
    lab.expect(0.35 <= shares["limited"] <= 0.6, "--cpus 0.5 holds the loop to half a CPU",
               f"{shares['limited']} CPU")
    lab.expect(shares["unlimited"] >= 0.7, "without it the loop takes (about) a whole CPU",
               f"{shares['unlimited']} CPU")


def _cpu_reader(lab, pid: int):
    """A function returning the cgroup's CPU time in seconds (v1 cpuacct or v2 cpu.stat)."""
    try:
        directory = lab.cgroup_dir(pid, "cpuacct")
        return lambda: int(_read(directory, "cpuacct.usage")) / 1e9
    except CannotRun:
        directory = lab.cgroup_dir(pid, "cpu")

        def usage() -> float:
            for line in _read(directory, "cpu.stat").splitlines():
                if line.startswith("usage_usec"):
                    return int(line.split()[1]) / 1e6
            raise CannotRun("cpu.stat has no usage_usec")
        return usage


def _read(directory: str, name: str) -> str:
    try:
        with open(os.path.join(directory, name)) as f:
            return f.read().strip()
    except OSError as e:
        raise CannotRun(f"cannot read {name} of the container's cgroup: {e}") from None


def _events_max(directory: str) -> int:
    for line in _read(directory, "pids.events").splitlines():
        if line.startswith("max"):
            return int(line.split()[1])
    return 0
