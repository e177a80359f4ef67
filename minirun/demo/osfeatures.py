"""Lost operating-system features [pérdida de funcionalidades del SO]."""

from __future__ import annotations

NAME = "osfeatures"
TITLE = "lost OS features: no init system, no kernel modules, a shared clock and sysctls"
EXPLAIN = """
A container is not a machine: its pid 1 is the program, not systemd (no services, no
journald, no timers unless you bring them); it cannot load kernel modules (the kernel is
the host's: a module loaded by a privileged container is loaded for everyone); it has no
clock of its own (the `caps` scenario shows `date -s` refused: the clock is the host's);
and most of /proc/sys is the host's kernel settings, mounted read-only. Only some sysctls
are per namespace (net.*, kernel.hostname, the IPC ones); `vm.swappiness` read inside is
the host's value. The lab tries delete_module(2) on a module that does not exist (refused
by default; privileged, the host's kernel answers ENOENT, or ENOSYS when it was built
without modules: either way the call reached it), and writes vm.swappiness only with the
value it just read, so that the write changes nothing even where it were allowed.
"""

NO_MODULE = "minirun_demo_no_such_module"


def run(lab) -> None:
    with open("/proc/1/comm") as f:
        host_init = f.read().strip()
    with open("/proc/sys/vm/swappiness") as f:
        host_swappiness = f.read().strip()
    lab.say("pid 1, a module removal, a sysctl write and a sysctl read, by default:")
    # the write puts back the value just read: even where it were allowed it changes nothing
    script = (f"echo init=$(cat /proc/1/comm); rmmod {NO_MODULE} 2>&1 | tail -n 1; "
              "v=$(cat /proc/sys/vm/swappiness); echo $v > /proc/sys/vm/swappiness; "
              "echo sysctl_write=$?; echo swappiness=$v")
    proc = lab.run("busybox", "sh", "-c", script)
    text = proc.stdout
    got = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    lab.observe("container_init", got.get("init", ""))
    lab.observe("host_init", host_init)
    lab.expect(got.get("init") == "sh", "the container's pid 1 is its program, not an init "
               "system", f"host pid 1: {host_init}")
    lab.observe("rmmod_default", _error(text))
    lab.expect("Operation not permitted" in text, "module removal is refused by default")
    lab.observe("sysctl_write_status", got.get("sysctl_write"))
    lab.expect(got.get("sysctl_write") not in (None, "0"), "writing a host sysctl is refused")
    lab.observe("swappiness_inside", got.get("swappiness"))
    lab.expect(got.get("swappiness") == host_swappiness,
               "vm.swappiness inside is the host's value (not namespaced)")
    lab.say("Privileged, the same removal reaches the host's kernel:")
    proc = lab.run("--privileged", "busybox", "sh", "-c", f"rmmod {NO_MODULE} 2>&1; true")
    lab.observe("rmmod_privileged", _error(proc.stdout))
    lab.expect("Operation not permitted" not in proc.stdout and proc.stdout.strip() != "",
               "privileged, module calls reach the host's kernel")


def _error(text: str) -> str:
    for line in text.splitlines():
        if line.startswith("rmmod:"):
            return line
    return ""
