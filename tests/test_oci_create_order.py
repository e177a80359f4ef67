"""create when the init gets ahead of its parent's word on its pid.

C (create's child) forks the init I and then sends I's pid; I sends its ready on the same
socket. Under load C can be descheduled right after its fork for longer than I takes to
set itself up: the ready came first, create saved the state with pid 0, and the start
that followed failed with "cannot start a container that has stopped" (seen about once
in 300 pods under a busy host). Here C is made to wait, in a real create, until I has
sent its ready; create must still come back with I's pid and a container that starts.
"""

import os
import subprocess
import sys
import textwrap

import pytest
from ocitest import base_config, needs_root, oci, rootfs  # noqa: F401

pytestmark = [needs_root, pytest.mark.root]

CREATE = textwrap.dedent("""
    import os, select, sys
    from minirun import container, runtime
    root, cid, bundle = sys.argv[1:4]
    said_ready_r, said_ready_w = os.pipe()  # I's mounts hide the host's files: a pipe
    send = runtime._send
    def ordered(sock, msg):
        if "pid" in msg:  # C: I's pid, only once I has said it is ready
            seen = select.select([said_ready_r], [], [], 30)[0]
            if not seen:
                msg = dict(msg, pid=0)  # fail loudly: the ordering was not made
        send(sock, msg)
        if msg.get("ready"):  # I
            os.write(said_ready_w, b"r")
    runtime._send = ordered
    c = runtime.create(root, cid, bundle, runtime.CreateOptions())
    ready_first = bool(select.select([said_ready_r], [], [], 0)[0])
    print("created", c.pid, ready_first, flush=True)
    container.start(root, cid)
    print("started", flush=True)
""")


def test_an_init_ready_before_its_pid_is_known_still_starts(oci, rootfs, tmp_path):  # noqa: F811
    cid = oci.new_id()
    bundle = oci.bundle(base_config(["true"]), rootfs)
    os.makedirs(oci.root, exist_ok=True)
    with open(tmp_path / "out", "w") as out, open(tmp_path / "err", "w") as err:
        proc = subprocess.run([sys.executable, "-c", CREATE, oci.root, cid, bundle], stdout=out, stderr=err, timeout=120, check=False)
    said = (tmp_path / "out").read_text().split("\n")
    problem = (tmp_path / "err").read_text()[-800:]
    assert proc.returncode == 0, f"{said} {problem}"
    words = said[0].split()
    assert words[0] == "created" and int(words[1]) > 0 and words[2] == "True", said
    assert said[1] == "started", said
    oci("delete", "--force", cid)
