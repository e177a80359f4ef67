"""Capabilities [capacidades; seguridad]."""

from __future__ import annotations

from . import CannotRun

NAME = "caps"
TITLE = "capabilities: root in a container may not add links, mount or set the clock"
EXPLAIN = """
Root in a container is uid 0, but with a reduced set of capabilities: the default set
lacks CAP_NET_ADMIN (network configuration), CAP_SYS_ADMIN (mount, and much else) and
CAP_SYS_TIME (the clock, which no namespace isolates: it is the host's). `--cap-add
NET_ADMIN` gives back exactly one of them; `--privileged` gives them all, drops the seccomp
filter and the masked /proc paths, and shows the host's devices: a privileged container can
mount the host's disks and change the host's clock, so it is the host's root in all but name.

The clock is shown without changing it: `date -s` is only run where it is refused; where it
would be allowed the lab calls adjtimex(2) with ADJ_TICK set to the value the kernel
already has (read first), a write that needs CAP_SYS_TIME and changes nothing.
"""

# what each step tries, and the shell line that prints "<name>=<exit status>"
ATTEMPTS = {
    "ip_link_add": "ip link add mrdemo0 type veth peer name mrdemo1; echo ip_link_add=$?",
    "mount": "mount -t tmpfs demo /tmp; echo mount=$?",
    "set_clock": 't=$(adjtimex | sed -n "s/.*tick: *\\([0-9]*\\).*/\\1/p"); '
                 '[ -n "$t" ] && adjtimex -q -t "$t"; echo set_clock=$?',
}
# never set the host's clock: date -s runs only once CapEff shows no CAP_SYS_TIME (bit 25)
GUARDED_DATE_S = ('eff=$(sed -n "s/^CapEff:\\t//p" /proc/self/status); '
                  'if [ $(( (0x$eff >> 25) & 1 )) = 1 ]; then exit 3; fi; '
                  'date -s "$(date "+%Y-%m-%d %H:%M:%S")"')
CASES = (  # flags, what the lesson expects to be allowed
    ((), set()),
    (("--cap-add", "NET_ADMIN"), {"ip_link_add"}),
    (("--privileged",), set(ATTEMPTS)),
)


def run(lab) -> None:
    lab.say("First, the clock by the usual command: refused by default, so nothing changes.")
    proc = lab.run("busybox", "sh", "-c", GUARDED_DATE_S)
    if proc.returncode == 3:
        raise CannotRun("the default set has CAP_SYS_TIME here: date -s was not run")
    refused = "Operation not permitted" in proc.stderr
    lab.observe("date_s_refused", refused)
    lab.expect(refused, "date -s is refused (EPERM) by default")
    script = " ; ".join(ATTEMPTS.values()) + " ; grep CapEff /proc/self/status"
    for flags, allowed in CASES:
        label = " ".join(flags) or "default"
        lab.say(f"With {label}: a veth pair (in the container's own network namespace), "
                "a tmpfs mount, a clock write that changes nothing:")
        proc = lab.run(*flags, "busybox", "sh", "-c", script)
        got = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
        if set(got) != set(ATTEMPTS):
            raise CannotRun(f"the container did not report every attempt: {proc.stderr}")
        ok = {k for k, v in got.items() if v == "0"}
        lab.observe(f"allowed[{label}]", sorted(ok))
        lab.expect(ok == allowed, f"with {label} exactly {sorted(allowed) or 'nothing'} "
                   "is allowed", f"allowed: {sorted(ok) or 'nothing'}")
    lab.say("--privileged gave all three, and more: every capability, no seccomp filter, "
            "/proc unmasked, the host's devices. Never use it to fix a permission error.")
