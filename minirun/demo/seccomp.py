"""seccomp: a system-call filter [filtro de llamadas al sistema; seguridad]."""

from __future__ import annotations

from . import CannotRun
from .probe import CALLS, write_probes

NAME = "seccomp"
TITLE = "seccomp: the default profile makes some system calls fail with EPERM"
EXPLAIN = """
Capabilities gate what root may do; seccomp gates which system calls reach the kernel at
all. minirun's default profile (containers-common's, as podman's) lets the common calls
through and answers the others with an errno without running them: less kernel surface
for a container to attack. The lab probes, on this host, a few calls a process may make
without any capability (keyctl, add_key, userfaultfd, sysfs, unshare(CLONE_NEWUSER)) with
tiny static programs bind-mounted into busybox, first under the default profile, then
with `--security-opt seccomp=unconfined`, and picks the calls the profile turns into EPERM.
(Which ones depends on the profile: containers-common's allows keyctl and unshare, docker's
refuses them.) Exit status of a probe: 0 success, 1 EPERM, 38 ENOSYS, otherwise the errno.
"""

EPERM = 1


def run(lab) -> None:
    directory = lab.tempdir()
    names = write_probes(directory)
    if not names:
        raise CannotRun("the syscall probes are x86-64 programs; this machine is not")
    script = 'for p in ' + " ".join(names) + '; do /probe/$p; echo "$p=$?"; done'
    results = {}
    for label, flags in (("default", ()),
                         ("unconfined", ("--security-opt", "seccomp=unconfined"))):
        lab.say(f"The probes under the {label} profile (the number is the errno, 0 success):")
        proc = lab.run(*flags, "-v", f"{directory}:/probe:ro", "busybox", "sh", "-c", script)
        got = {k: int(v) for k, v in (line.split("=", 1) for line in proc.stdout.splitlines()
                                      if "=" in line)}
        if set(got) != set(names):
            raise CannotRun(f"the probes did not all report: {proc.stderr.strip()}")
        results[label] = got
        lab.observe(f"errno[{label}]", got)
    blocked = [n for n in names
               if results["default"][n] == EPERM and results["unconfined"][n] != EPERM]
    lab.observe("blocked_by_profile", blocked)
    for n in blocked:
        lab.say(f"  {CALLS[n][2]}: EPERM under the default profile, errno "
                f"{results['unconfined'][n]} unconfined")
    lab.expect(bool(blocked), "a call the default profile blocks gets EPERM, and reaches "
               "the kernel with seccomp=unconfined", ", ".join(blocked) or "none found")
    lab.expect(all(v != EPERM for v in results["unconfined"].values()),
               "unconfined, none of the probes gets EPERM (they need no capability)")
