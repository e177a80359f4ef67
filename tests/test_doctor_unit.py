"""doctor's matching logic on fixture trees: a /proc (cgroup, cmdline, stat, environ per
pid), a mountinfo, cgroup hierarchies, /run/netns and /sys/class/net, all in a temporary
directory, and a root whose records are given directly. Which objects are leftovers,
which are claimed, which are none of a scoped audit's business."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from minirun.monitor import doctor as doc

CLAIMED = "c" * 64  # a running container with a record
ORPHAN = "a" * 64  # known to the root (its events), no record left
FOREIGN = "f" * 64  # another root's, never known to this one
POD = "b" * 64
NEW = "e" * 64


def write(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def fake_pid(proc: str, pid: int, cgroup: str | None, argv: list[str], start: int,
             env: dict[str, str] | None = None) -> None:
    base = os.path.join(proc, str(pid))
    write(os.path.join(base, "cgroup"),
          "" if cgroup is None else f"12:pids:{cgroup}\n0::{cgroup}\n")
    write(os.path.join(base, "cmdline"), "\0".join(argv) + "\0")
    write(os.path.join(base, "stat"), f"{pid} (x) S 1 " + " ".join(["0"] * 17) +
          f" {start} 0 0\n")
    write(os.path.join(base, "environ"),
          "".join(f"{k}={v}\0" for k, v in (env or {}).items()))


@pytest.fixture
def host(tmp_path):
    t = str(tmp_path)
    proc, cg, netns, net = (os.path.join(t, n) for n in ("proc", "cg", "netns", "net"))
    root, run_root = os.path.join(t, "lib"), os.path.join(t, "run")
    pids_cg, unified = os.path.join(cg, "pids"), os.path.join(cg, "unified")
    for hierarchy in (pids_cg, unified):
        for path in (f"{CLAIMED}/inner", ORPHAN, FOREIGN, f"pod/{NEW}"):
            os.makedirs(os.path.join(hierarchy, "minirun", path))
    merged = os.path.join(root, "containers", ORPHAN, "merged")
    pin = os.path.join(run_root, "pods", POD, "ns", "ipc")
    write(os.path.join(root, "containers", CLAIMED, "config.json"), "{}")
    os.makedirs(merged)
    write(pin, "")
    mountinfo = "\n".join([
        f"30 1 0:30 / {pids_cg} rw - cgroup cgroup rw,pids",
        f"31 1 0:31 / {unified} rw - cgroup2 cgroup2 rw",
        "32 1 0:32 / /elsewhere rw - cgroup cgroup rw,memory",  # no minirun/ under it
        f"40 1 0:40 / {merged} rw - overlay overlay rw,lowerdir=/x,upperdir=/y,workdir=/z",
        f"41 1 0:4 net:[4026532000] {pin} rw - nsfs nsfs rw",
    ]) + "\n"
    write(os.path.join(t, "mountinfo"), mountinfo)
    fake_pid(proc, 100, f"/minirun/{CLAIMED}", ["sleep", "1000"], 1111)
    fake_pid(proc, 101, f"/minirun/{CLAIMED}/inner", ["sleep", "1000"], 1112)
    fake_pid(proc, 200, f"/minirun/{ORPHAN}", ["sleep", "1000"], 2222)
    fake_pid(proc, 201, f"/minirun/{ORPHAN}", ["sh"], 2223)
    fake_pid(proc, 300, f"/minirun/{FOREIGN}", ["sleep", "1000"], 3333)
    fake_pid(proc, 400, "/", ["python3", "-m", "minirun.daemon.keeper",
                              os.path.join(t, "gone-run")], 4444)
    fake_pid(proc, 500, f"/minirun/{CLAIMED}",
             ["python3", "-m", "minirun.cli", "daemon", "--root", root, "--run-root",
              run_root], 5555)
    fake_pid(proc, 600, "/user.slice", ["/usr/bin/minirun", "daemon"], 6666,
             {"MINIRUN_RUN_ROOT": os.path.join(t, "other-run")})
    for name in (f"minirun-{ORPHAN[:12]}", f"minirun-{FOREIGN[:12]}",
                 f"minirun-{CLAIMED[:12]}", "other"):
        write(os.path.join(netns, name), "")
    for name in (f"mr{ORPHAN[:12]}", f"mr{FOREIGN[:12]}", f"mr{CLAIMED[:12]}", "eth0"):
        os.makedirs(os.path.join(net, name))
    for name, alias in (("mrbr0123456789", "minirun minirun_test gone-net"),
                        ("mrbr9999999999", "minirun minirun_elsewhere theirs"),
                        ("mrpods0", "")):
        os.makedirs(os.path.join(net, name, "bridge"))
        write(os.path.join(net, name, "ifalias"), alias + "\n")
    r = doc.Root(root=root, run_root=run_root, table="minirun_test")
    r.records = {CLAIMED: {"id": CLAIMED, "name": "web", "status": "running", "pid": 100,
                           "created": time.time() - 100}}
    r.states = {CLAIMED: {"pid": 100, "start_time": 1111,
                          "cgroup_path": f"/minirun/{CLAIMED}"}}
    r.endpoints = {CLAIMED: {"container": CLAIMED, "network": "bridge", "ip": "10.9.0.2",
                             "veth": f"mr{CLAIMED[:12]}",
                             "netns": os.path.join(netns, f"minirun-{CLAIMED[:12]}"),
                             "ports": "[]"}}
    r.history = {CLAIMED, ORPHAN, POD}
    leases = os.path.join(t, "cni", "minirun-pods")
    for name, owner in (("10.88.0.5", ORPHAN), ("10.88.0.6", FOREIGN), ("10.88.0.7", CLAIMED),
                        ("last_reserved_ip.0", "10.88.0.7"), ("lock", "")):
        write(os.path.join(leases, name), f"{owner}\neth0" if len(owner) == 64 else owner)
    paths = doc.HostPaths(proc=proc, mountinfo=os.path.join(t, "mountinfo"),
                          netns_dir=netns, sys_net=net, cni_lease_dirs=[leases])
    return r, paths, t


def audit(host, host_wide: bool = False, grace: float = 0.0) -> doc.Audit:
    r, paths, _ = host
    a = doc.Audit([r], None, host_wide, paths, check_host=False, grace=grace)
    a.run()
    return a


def whats(a: doc.Audit, kind: str) -> list[str]:
    return sorted(f.what for f in a.findings if f.kind == kind)


def test_scoped_audit_judges_only_what_its_root_has_known(host):
    r, paths, _ = host
    a = audit(host)
    assert whats(a, "cgroup") == [f"/minirun/{ORPHAN}"]  # not /minirun/pod (nobody's id)
    assert next(f for f in a.findings if f.kind == "process" and "cgroup /minirun/" in f.what
                and "minirun " not in f.what).fix == "kill -9 200 201"
    assert whats(a, "netns") == [os.path.join(paths.netns_dir, f"minirun-{ORPHAN[:12]}")]
    # the bridge of our table no network uses; not another root's, not CNI's mrpods0
    assert whats(a, "link") == [f"mr{ORPHAN[:12]}", "mrbr0123456789"]
    assert whats(a, "snapshot") == [os.path.join(r.root, "containers", ORPHAN)]
    snap = next(f for f in a.findings if f.kind == "snapshot")
    assert snap.fix.startswith(f"umount -l {os.path.join(r.root, 'containers', ORPHAN)}/merged")
    pin = next(f for f in a.findings if f.kind == "pin")
    assert pin.what == os.path.join(r.run_root, "pods", POD) and "umount -l" in pin.fix
    assert not any(CLAIMED in f.what or FOREIGN in f.what for f in a.findings
                   if f.kind != "process")
    assert not any(FOREIGN[:12] in f.what for f in a.findings)
    # host-local's files: only the lease of an id this root knew, never another runtime's
    assert whats(a, "lease") == [f"{paths.cni_lease_dirs[0]}/10.88.0.5 ({ORPHAN[:12]})"]
    # a container's own sub-cgroup and its process are the container's
    assert not any("101" in f.fix or "inner" in f.what for f in a.findings)
    assert not any("101" in f.fix or "inner" in f.what
                   for f in audit(host, host_wide=True).findings)


def test_supervisors_whose_root_is_gone_or_that_sit_in_a_container_cgroup(host):
    r, paths, t = host
    # scoped: only the daemon serving this root: a fork of it (the pid file names
    # another) in a container's cgroup
    procs = [f for f in audit(host).findings if f.kind == "process"
             and f.what.startswith("minirun ")]
    assert [(f.what, f.fix) for f in procs] == [
        (f"minirun daemon pid 500 in cgroup /minirun/{CLAIMED}", "kill -9 500")]
    assert "never reached execve" in procs[0].why
    write(os.path.join(r.run_root, "daemon.pid"), "500")
    [itself] = [f for f in audit(host).findings if f.what.startswith("minirun ")]
    assert "the daemon itself sits in a container's cgroup" in itself.why
    # host-wide: the keeper whose run root is gone too, and nothing about pid 600 (its
    # run root, from its environment, exists)
    os.makedirs(os.path.join(t, "other-run"))
    procs = sorted(f.what for f in audit(host, host_wide=True).findings
                   if f.kind == "process" and f.what.startswith("minirun "))
    assert procs == [f"minirun daemon pid 500 in cgroup /minirun/{CLAIMED}",
                     f"minirun keeper pid 400 (run root {t}/gone-run)"]
    assert doc.served_roots(paths.proc) == {(r.root, r.run_root),
                                             (doc.DEFAULT_ROOT, os.path.join(t, "other-run"))}


def test_an_init_the_keeper_made_and_never_started(host):
    """Until execve, a container's init runs the code (and shows the command line) of
    the process that forked it: the keeper's worker. One whose start never came waits
    on its fifo for ever, in its container's cgroup."""
    r, paths, _ = host
    made = "9" * 64
    fake_pid(paths.proc, 700, f"/minirun/{made}",
             ["python3", "-m", "minirun.daemon.keeper", r.run_root], 7777)
    r.records[made] = {"id": made, "name": "stuck", "status": "created", "pid": 700,
                       "created": time.time() - 100}
    r.states[made] = {"pid": 700, "start_time": 7777, "cgroup_path": f"/minirun/{made}"}
    write(os.path.join(r.oci_root, made, "state.json"), "{}")
    write(os.path.join(r.root, "containers", made, "config.json"), "{}")
    [stuck] = [f for f in audit(host).findings if "pid 700" in f.what]
    assert stuck.what == f"minirun keeper pid 700 in cgroup /minirun/{made}"
    assert "the init of container stuck" in stuck.why and "never started" in stuck.why
    assert stuck.fix.endswith("minirun rm -f stuck") and not stuck.safe
    # the same a moment after its create: a start under way
    assert not [f for f in audit(host, grace=3600).findings if "pid 700" in f.what]


def test_host_wide_audit_judges_unclaimed_objects_after_the_grace_period(host):
    a = audit(host, host_wide=True, grace=0)
    # one finding for a tree: its removal takes the children first
    assert whats(a, "cgroup") == [f"/minirun/{ORPHAN}", f"/minirun/{FOREIGN}",
                                  "/minirun/pod"]
    assert any("300" in f.fix for f in a.findings if f.kind == "process")
    # a cgroup made a moment ago may be a create under way in another process
    young = audit(host, host_wide=True, grace=3600)
    assert whats(young, "cgroup") == []
    assert not any(f.kind == "process" and "kill -9" in f.fix and
                   not f.what.startswith("minirun ") for f in young.findings)


def test_fix_removes_cgroups_children_first_in_every_hierarchy(host):
    t = host[2]
    a = audit(host, host_wide=True)
    cgroups = [f for f in a.findings if f.kind == "cgroup"]
    pod = next(f for f in cgroups if f.what == "/minirun/pod")
    assert all(f.safe for f in cgroups)
    doc.fix([pod])
    assert pod.fixed, pod.error
    for hierarchy in ("pids", "unified"):
        assert not os.path.exists(os.path.join(t, "cg", hierarchy, "minirun", "pod"))
        assert os.path.isdir(os.path.join(t, "cg", hierarchy, "minirun", CLAIMED))


def test_the_printed_cgroup_fix_removes_children_first(host):
    """What doctor prints for a human does what --fix does: a plain rmdir of the top
    fails while a child cgroup is there."""
    t = host[2]
    a = audit(host, host_wide=True)
    pod = next(f for f in a.findings if f.kind == "cgroup" and f.what == "/minirun/pod")
    assert os.listdir(os.path.join(t, "cg", "pids", "minirun", "pod"))  # it has a child
    shown = subprocess.run(["sh", "-c", pod.fix], capture_output=True, text=True,
                           check=False)
    assert shown.returncode == 0, shown.stderr
    for hierarchy in ("pids", "unified"):
        assert not os.path.exists(os.path.join(t, "cg", hierarchy, "minirun", "pod"))
        assert os.path.isdir(os.path.join(t, "cg", hierarchy, "minirun", CLAIMED))


def test_records_without_a_process_or_a_bundle(host):
    r, paths, _ = host
    gone = "d" * 64
    r.records[gone] = {"id": gone, "name": "ghost", "status": "running", "pid": 999,
                       "created": time.time() - 100}
    r.states[gone] = {"pid": 999, "start_time": 1, "cgroup_path": f"/minirun/{gone}"}
    r.records[NEW] = {"id": NEW, "name": "new", "status": "creating", "pid": None,
                      "created": time.time()}
    a = doc.Audit([r], None, False, paths, check_host=False, grace=30)
    a.run()
    records = [f for f in a.findings if f.kind == "record"]
    # ghost: no process (safe: marked exited) and no bundle (by hand); the new one is
    # left alone during the grace period
    assert [(f.what, f.safe) for f in records] == [("ghost (dddddddddddd)", True),
                                                   ("ghost (dddddddddddd)", False)]
    assert "says running but its init (pid 999) is gone" in records[0].why
    assert "status = 'exited'" in records[0].fix
    assert records[1].fix == f"MINIRUN_ROOT={r.root} MINIRUN_RUN_ROOT={r.run_root} " \
        "minirun rm -f ghost"


def test_port_rules_from_nft_json():
    sample = {"nftables": [
        {"metainfo": {"version": "1.0.6"}},
        {"table": {"family": "ip", "name": "minirun_x", "handle": 1}},
        {"chain": {"family": "ip", "table": "minirun_x", "name": "ports", "handle": 1}},
        {"rule": {"family": "ip", "table": "minirun_x", "chain": "ports", "handle": 2, "expr": [
            {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}},
                       "right": "127.0.0.1"}},
            {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}},
                       "right": 8080}},
            {"dnat": {"addr": "10.9.0.2", "port": 80}}]}},
        {"rule": {"family": "ip", "table": "minirun_x", "chain": "ports", "handle": 3, "expr": [
            {"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}},
                       "right": 53}},
            {"dnat": {"addr": "10.9.0.3", "port": 53}}]}},
        {"rule": {"family": "ip", "table": "minirun_x", "chain": "postrouting", "handle": 9,
                  "expr": [{"masquerade": None}]}},
    ]}
    assert doc._port_rules(json.loads(json.dumps(sample))) == [
        (("tcp", 8080, "10.9.0.2", 80), 2), (("udp", 53, "10.9.0.3", 53), 3)]


def test_supervisor_of_reads_argv_and_environment():
    assert doc.supervisor_of(["python3", "-m", "minirun.daemon.keeper", "/r"], {}) == \
        ("keeper", "/r")
    assert doc.supervisor_of(["/usr/local/bin/minirun", "daemon"], {}) == \
        ("daemon", doc.DEFAULT_RUN_ROOT)
    assert doc.supervisor_of(["minirun", "daemon", "--run-root=/x"], {}) == ("daemon", "/x")
    assert doc.supervisor_of(["minirun", "daemon"], {"MINIRUN_RUN_ROOT": "/e"}) == \
        ("daemon", "/e")
    assert doc.supervisor_of(["python3", "-m", "minirun.cli", "run", "daemon"], {}) is None
    assert doc.supervisor_of(["sleep", "daemon"], {}) is None


def test_fix_touches_only_what_a_second_look_finds_again(host):
    """An object the first audit called a leftover and the second does not (its owner's
    row was written meanwhile) is left alone, and does not count as left."""
    first = audit(host, host_wide=True)
    cgroups = [f for f in first.findings if f.kind == "cgroup"]
    claimed_meanwhile = next(f for f in cgroups if f.what == f"/minirun/{FOREIGN}")
    again = [f for f in audit(host, host_wide=True).findings if f is not claimed_meanwhile
             and f.what != claimed_meanwhile.what]
    doc.fix(cgroups, again)
    assert claimed_meanwhile.vanished and not claimed_meanwhile.fixed
    assert os.path.isdir(os.path.join(host[2], "cg", "pids", "minirun", FOREIGN))
    assert all(f.fixed for f in cgroups if f is not claimed_meanwhile)
    first.findings = cgroups
    assert doc.report(first)["summary"] == {"found": 3, "fixed": 2, "vanished": 1, "left": 0}
    assert doc.exit_code(first) == doc.EXIT_CLEAN


def test_host_findings_from_info_and_ip_forward(host):
    from minirun.info import CgroupInfo, Feature, HostInfo

    r, paths, _ = host
    info = HostInfo(version="x", oci_version="1", kernel="6", euid=0, capabilities="all",
                    cgroup=CgroupInfo(mode="v1", root="/sys/fs/cgroup", driver="v1",
                                      v1_controllers={c: "/x" for c in
                                                      ("cpu", "memory", "devices", "freezer")},
                                      unusable_controllers={"pids": "disabled on the "
                                                            "kernel command line"}),
                    namespaces=["mnt"], missing_namespaces={"time": "no time namespace"},
                    features={"seccomp": Feature(False, reason="kernel without seccomp"),
                              "pidfd": Feature(True, "yes")}, runtimes={})
    write(os.path.join(paths.proc, "sys/net/ipv4/ip_forward"), "0\n")
    a = doc.Audit([r], None, False, paths, check_host=False)
    a.check_host_setup(info)
    assert [(f.what, f.why, f.fix) for f in a.findings] == [
        ("cgroup controller pids",
         "the v1 driver cannot use it: disabled on the kernel command line", ""),
        ("time namespace", "no time namespace", ""),
        ("seccomp", "kernel without seccomp", ""),
        ("net.ipv4.ip_forward",
         ("off while minirun's bridges (mrbr0123456789, mrbr9999999999) exist: containers "
          "cannot reach past the host"), "sysctl -w net.ipv4.ip_forward=1")]
    assert a.notes == {"cgroup": {"mode": "v1", "driver": "v1"}}
    write(os.path.join(paths.proc, "sys/net/ipv4/ip_forward"), "1\n")
    a = doc.Audit([r], None, False, paths, check_host=False)
    a.check_host_setup(info)
    assert "net.ipv4.ip_forward" not in [f.what for f in a.findings]


def test_cli_exit_codes_and_text(tmp_path):
    import subprocess
    import sys

    root, run_root = tmp_path / "lib", tmp_path / "run"
    env = dict(os.environ, MINIRUN_ROOT=str(root), MINIRUN_RUN_ROOT=str(run_root))

    def doctor(*args):
        return subprocess.run([sys.executable, "-m", "minirun.cli", "doctor",
                               "--no-host-checks", *args], env=env, capture_output=True,
                              text=True, timeout=60, check=False)

    clean = doctor()
    assert (clean.returncode, clean.stdout) == (0, f"no findings (scoped to {root})\n")
    assert not root.exists(), "an audit made the root"
    assert doctor("--bogus").returncode == 125
    os.makedirs(run_root / "exits")
    (run_root / "exits" / ORPHAN).write_text("0")
    found = doctor()
    assert found.returncode == 1
    assert found.stdout.splitlines() == [
        "file (1)", f"  {run_root}/exits/{ORPHAN}",
        "    why: exit status of a container with no record",
        f"    fix: rm {run_root}/exits/{ORPHAN}  [safe: --fix does it]",
        f"1 finding(s), 0 fixed, 1 left (scoped to {root})"]
    fixed = doctor("--fix", "--json")
    assert fixed.returncode == 0
    assert json.loads(fixed.stdout)["summary"] == {"found": 1, "fixed": 1, "vanished": 0,
                                                   "left": 0}
    os.makedirs(root)
    (root / "engine.db").write_text("not a database, but long enough to be read as one" * 40)
    broken = doctor()
    assert broken.returncode == 2 and broken.stdout == ""
    assert broken.stderr.startswith("minirun: doctor: the audit failed: DatabaseError")
    assert len(broken.stderr.splitlines()) == 1


def test_host_findings_on_a_pure_v2_host_ask_only_for_v2_controllers(host):
    """cgroup2 has no devices or freezer controller (eBPF device rules, cgroup.freeze):
    their absence from cgroup.controllers is not a finding; a missing pids is."""
    from minirun.info import CgroupInfo, HostInfo

    r, paths, _ = host
    reason = "v1 only, or not enabled in the root cgroup"
    info = HostInfo(version="x", oci_version="1", kernel="6", euid=0, capabilities="all",
                    cgroup=CgroupInfo(mode="v2", root="/sys/fs/cgroup", driver="v2",
                                      v2_controllers=["cpu", "io", "memory"],
                                      unusable_controllers={"devices": reason,
                                                            "freezer": reason,
                                                            "pids": reason}),
                    namespaces=["mnt"], missing_namespaces={}, features={}, runtimes={})
    a = doc.Audit([r], None, False, paths, check_host=False)
    a.check_host_setup(info)
    assert [(f.what, f.why) for f in a.findings] == [
        ("cgroup controller pids", f"the v2 driver cannot use it: {reason}")]
