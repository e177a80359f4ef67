"""`minirun inspect --isolation`: its report for containers made with different flags,
compared with what /proc/<pid>/status, /proc/<pid>/ns/* and uid_map say, read here."""

from __future__ import annotations

import json
import os

import pytest
from ocitest import needs_root
from test_demo import engine  # noqa: F401 - the engine under a searchable directory

pytestmark = [needs_root, pytest.mark.root]


def status_of(pid: int) -> dict:
    with open(f"/proc/{pid}/status") as f:
        return {k: v.strip() for k, _, v in (line.partition(":") for line in f)}


def caps_in(mask_hex: str) -> int:
    return int(mask_hex, 16).bit_count()


@pytest.fixture
def containers(engine, tmp_path):  # noqa: F811
    data = tmp_path / "data"
    data.mkdir()
    made = {
        "iso-a": [],
        "iso-b": ["--privileged", "--network", "container:iso-a", "-m", "64m",
                  "--pids-limit", "20", "--cpus", "0.5", "-v", f"{data}:/data"],
        "iso-c": ["--userns", "auto", "--network", "none", "--cap-drop", "ALL"],
    }
    try:
        for name, flags in made.items():
            engine("run", "-d", "--name", name, *flags, "busybox", "sleep", "300", check=True)
        yield {n: int(engine("inspect", "-f", "{{.State.Pid}}", n).stdout) for n in made}
    finally:
        for name in made:
            engine("rm", "-f", name)


def test_isolation_matches_the_kernel(engine, containers):  # noqa: F811
    proc = engine("inspect", "--isolation", "-f", "json", *containers)
    assert proc.returncode == 0, proc.stderr
    docs = {d["name"]: d for d in json.loads(proc.stdout)}
    for name, pid in containers.items():
        d = docs[name]
        assert d["pid"] == pid
        st = status_of(pid)
        for kind, verdict in d["namespaces"].items():
            same = os.readlink(f"/proc/{pid}/ns/{kind}") == os.readlink(f"/proc/self/ns/{kind}")
            assert (verdict == "host") == same, (name, kind, verdict)
        assert len(d["capabilities"]["effective"]) == caps_in(st["CapEff"])
        assert len(d["capabilities"]["bounding"]) == caps_in(st["CapBnd"])
        assert d["seccomp"]["mode"] == {"0": "disabled", "2": "filter"}[st["Seccomp"]]
        assert d["no_new_privs"] == (st["NoNewPrivs"] == "1")
        with open(f"/proc/{pid}/uid_map") as f:
            assert d["user_namespace"]["uid_map"] == " ".join(f.read().split())
    a, b, c = docs["iso-a"], docs["iso-b"], docs["iso-c"]
    assert a["namespaces"]["net"] == "shared with iso-b"
    assert b["namespaces"]["net"] == "shared with iso-a"
    assert c["namespaces"]["user"] == "private" and c["capabilities"]["effective"] == []
    assert b["limits"] == {"memory": 64 << 20, "pids": 20, "cpu": 0.5}
    assert a["limits"]["memory"] == "max" and a["limits"]["cpu"] == "max"
    assert any(r.startswith("privileged") for r in b["risks"])
    assert not any(r.startswith("privileged") for r in a["risks"] + c["risks"])
    assert "/proc/sys writable" in b["risks"] and "/proc/sys writable" not in a["risks"]
    assert any(m["destination"] == "/data" for m in b["writable_host_mounts"])
    assert a["writable_host_mounts"] == []  # the runtime's own /etc files are not listed
    assert any("host's root" in r for r in a["risks"])
    assert not any("host's root" in r for r in c["risks"])
    text = engine("inspect", "--isolation", "iso-b").stdout
    assert "risks: privileged" in text and "limits: memory 67108864, pids 20, cpu 0.5" in text


def test_isolation_of_a_missing_container(engine):  # noqa: F811
    proc = engine("inspect", "--isolation", "no-such-box")
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip() == "Error: No such container: no-such-box"
