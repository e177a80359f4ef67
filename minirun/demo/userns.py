"""Root without a user namespace is the host's root [seguridad]."""

from __future__ import annotations

import os

from . import CannotRun

NAME = "userns"
TITLE = "root in a container is the host's root, unless --userns maps it away"
EXPLAIN = """
Without a user namespace, uid 0 in the container is uid 0 on the host: the capabilities
are fewer, but every file the container can reach (a bind-mounted host directory, say) is
read and written as the host's root. A file it creates on the host belongs to root, and a
root-only host file is readable. With `--userns auto` the container's uid 0 is mapped to
an unprivileged host uid (its uid_map shows the range): the same write lands as that uid,
and the root-only file is refused. Inside, it still looks like root.
"""


def run(lab) -> None:
    directory = lab.tempdir()
    os.chmod(directory, 0o777)  # so that a mapped, unprivileged root may create a file
    secret = os.path.join(directory, "root-only")
    with open(secret, "w") as f:
        f.write("host secret\n")
    os.chmod(secret, 0o600)
    for label, flags in (("host", ()), ("auto", ("--userns", "auto"))):
        lab.say(f"--userns {label}: id, a file written into a host directory, a root-only "
                "host file read:")
        made = f"made-by-{label}"
        proc = lab.run(*flags, "-v", f"{directory}:/data", "busybox", "sh", "-c",
                       f"id -u; cat /proc/self/uid_map; touch /data/{made}; "
                       "cat /data/root-only && echo read=yes || echo read=no")
        lines = proc.stdout.splitlines()
        try:
            owner = os.stat(os.path.join(directory, made)).st_uid
        except OSError:
            raise CannotRun(f"the container could not write the file: {proc.stderr}") from None
        lab.host("ls", "-ln", directory)
        read = "read=yes" in lines
        lab.observe(f"uid_inside[{label}]", lines[0] if lines else "")
        lab.observe(f"host_owner[{label}]", owner)
        lab.observe(f"read_root_only[{label}]", read)
        if label == "host":
            lab.expect(owner == 0, "without a user namespace the file is the host root's")
            lab.expect(read, "and a root-only host file is readable")
        else:
            lab.expect(lines[:1] == ["0"] and owner != 0,
                       "with --userns auto root inside writes as an unprivileged host uid",
                       f"host uid {owner}")
            lab.expect(not read, "and the root-only host file is refused")
