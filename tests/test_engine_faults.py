"""Fault injection (issue 10): SIGKILL to the client or to the daemon at random moments
of `run`, `run -d`, `stop` and `rm`, 200 cycles in all on a seeded schedule. After each
batch `ps -a` must be the truth (what it lists is what the runtime, the cgroups and the
processes say; nothing exists that it does not list), and at the end `rm -f`, `network
prune` and `container prune` must leave no mount, cgroup, link, netns, nftables rule,
lease or process of this root.

The seed is printed; MINIRUN_FAULT_SEED=N reproduces a schedule (MINIRUN_FAULT_CYCLES
changes the count). Only two kinds of process are ever killed: the client this test
spawned, and the daemon of this test's run root, by the pid in daemon.pid once
/proc/locks shows that pid holding daemon.lock."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from enginetest import engine  # noqa: F401
from ocitest import needs_root, wait_for

pytestmark = [needs_root, pytest.mark.root]

CYCLES = int(os.environ.get("MINIRUN_FAULT_CYCLES", "200"))
BATCH = 25
BRIDGE_SHARE = 0.25  # real veth, netns and nftables; the rest --network none, for speed
VERBS = ("run", "run -d", "stop", "rm")
VICTIMS = ("client", "daemon")


# --- the host's state -------------------------------------------------------------------------

def cgroup_mounts() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return sorted({line.split()[4] for line in f
                       if line.split(" - ")[1].split()[0] in ("cgroup", "cgroup2")})


def cgroup_dirs(cid: str) -> list[str]:
    return [d for m in cgroup_mounts() if os.path.isdir(d := os.path.join(m, "minirun", cid))]


def cgroup_procs(cid: str) -> set[int]:
    out: set[int] = set()
    for d in cgroup_dirs(cid):
        try:
            with open(os.path.join(d, "cgroup.procs")) as f:
                out |= {int(p) for p in f.read().split()}
        except OSError:
            pass
    return out


def minirun_cgroups() -> set[str]:
    out = set()
    for m in cgroup_mounts():
        try:
            out |= set(os.listdir(os.path.join(m, "minirun")))
        except OSError:
            pass
    return {n for n in out if len(n) == 64}


def links() -> set[str]:
    return set(os.listdir("/sys/class/net"))


def netns_names() -> set[str]:
    try:
        return set(os.listdir("/run/netns"))
    except FileNotFoundError:
        return set()


def mounts_under(top: str) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(top + "/")]


def rooted_under(top: str) -> dict[int, str]:
    """Processes whose root directory is under top (the containers' inits and children)."""
    out = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            root = os.readlink(f"/proc/{pid}/root")
        except OSError:
            continue
        if root.startswith(top + "/"):
            out[int(pid)] = root
    return out


def naming(top: str) -> list[int]:
    """Processes with top in their command line (clients, the daemon, the keeper)."""
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if top.encode() in f.read() and int(pid) != os.getpid():
                    out.append(int(pid))
        except OSError:
            continue
    return out


def cgroup_of(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            return f.read().split()[-1]
    except OSError:
        return "gone"


def nft_table(name: str) -> str | None:
    proc = subprocess.run(["nft", "list", "table", "ip", name], capture_output=True, text=True)
    return proc.stdout if proc.returncode == 0 else None


def leases(root: str) -> list:
    db = sqlite3.connect(os.path.join(root, "engine.db"))
    try:
        return db.execute("SELECT container FROM endpoints").fetchall()
    except sqlite3.OperationalError:  # no network table: nothing was leased
        return []
    finally:
        db.close()


def lock_pid(path: str) -> int | None:
    """The pid /proc/locks shows holding an flock on path."""
    st = os.stat(path)
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    with open("/proc/locks") as f:
        for line in f:
            fields = line.split()
            if "->" in fields:
                continue  # a waiter
            if fields[1] == "FLOCK" and fields[5] == dev:
                return int(fields[4])
    return None


# --- the faults --------------------------------------------------------------------------------

class Faults:
    def __init__(self, engine, seed: int) -> None:
        from minirun.network.manager import _root_tag

        self.engine = engine
        self.rng = random.Random(seed)
        self.seed = seed
        self.tag = _root_tag(engine.root)
        self.table = f"minirun_{self.tag}"
        self.bridge = f"mr{self.tag}b0"
        self.sock = os.path.join(engine.run_root, "minirun.sock")
        self.seen: set[str] = set()  # every container id this root ever had
        self.log: list[str] = []
        self.cycle_of: dict[str, int] = {}  # container id -> the cycle that made it
        self.hung: list[str] = []
        self.n = 0

    def note_ids(self) -> None:
        for d in (os.path.join(self.engine.root, "containers"),
                  os.path.join(self.engine.run_root, "engine")):
            try:
                self.seen |= {n for n in os.listdir(d) if len(n) == 64}
            except OSError:
                pass
        for cid in self.seen:
            self.cycle_of.setdefault(cid, self.n)

    def connections(self) -> int:
        """Sockets bound to or connected to the daemon's path (the listener, and one per
        client from its connect on)."""
        count = 0
        with open("/proc/net/unix") as f:
            for line in f:
                if line.rstrip().endswith(" " + self.sock):
                    count += 1
        return count

    def kill_daemon(self) -> int | None:
        pid = self.engine.pid_of("daemon")
        try:
            holder = lock_pid(os.path.join(self.engine.run_root, "daemon.lock"))
        except OSError:
            return None
        if pid is None or holder != pid:
            return None  # between daemons: nothing we may kill
        os.kill(pid, signal.SIGKILL)
        return pid

    def spawn(self, *args) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "minirun.client", *args],
                                env=self.engine.env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def setup(self, name: str, net: str, running: bool) -> None:
        cmd = ["sleep", "60"] if running else ["true"]
        proc = self.engine("run", "-d", "--network", net, "--name", name, "busybox", *cmd)
        if proc.returncode == 0 and not running:
            wait_for(lambda: self.status(name) == "exited", timeout=10)

    def status(self, name: str) -> str | None:
        proc = self.engine("inspect", name)
        return json.loads(proc.stdout)[0]["State"]["Status"] if proc.returncode == 0 else None

    def cycle(self, verb: str, victim: str) -> None:
        self.n += 1
        rng = self.rng
        name = f"f{self.n}"
        net = "bridge" if rng.random() < BRIDGE_SHARE else "none"
        fixed = rng.random() < 0.25  # killed right after the client connects
        delay = rng.uniform(0, 0.3)
        if verb == "run":
            args = ["run", "--network", net, "--name", name, "busybox", "sh", "-c",
                    f"sleep {rng.choice(['0', '0.2', '0.5'])}"]
        elif verb == "run -d":
            args = ["run", "-d", "--network", net, "--name", name] + \
                (["--rm"] if rng.random() < 0.3 else []) + ["busybox", "sleep", "60"]
        elif verb == "stop":
            self.setup(name, net, running=True)
            args = ["stop", "-t", "1", name]
        else:
            self.setup(name, net, running=rng.random() < 0.7)
            args = ["rm", "-f", name]
        base = self.connections()
        proc = self.spawn(*args)
        begun = time.monotonic()
        if fixed:
            while time.monotonic() - begun < 5 and proc.poll() is None and \
                    self.connections() <= base:
                time.sleep(0.001)
        else:
            while time.monotonic() - begun < delay and proc.poll() is None:
                time.sleep(0.005)
        killed = None
        if proc.poll() is None:
            if victim == "client":
                proc.kill()
                killed = proc.pid
            else:
                killed = self.kill_daemon()
        at = f"{(time.monotonic() - begun) * 1000:.0f}ms" + (" (connected)" if fixed else "")
        self.log.append(f"#{self.n} {' '.join(args[:2])} {net} {victim} {killed} at {at}")
        try:
            proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            self.hung.append(self.log[-1])
        self.note_ids()

    # --- the checks ------------------------------------------------------------------------

    def listed(self) -> dict[str, str]:
        proc = self.engine("ps", "-a", "--no-trunc", "--format", "json")
        assert proc.returncode == 0, proc.stderr
        return {c["ID"]: c["State"] for c in map(json.loads, proc.stdout.splitlines())}

    def truth_problems(self) -> list[str]:
        """What `ps -a` gets wrong, compared with the runtime, cgroups and processes."""
        from minirun.container import Container
        from minirun.errors import NotFound

        listed = self.listed()
        self.seen |= set(listed)
        self.note_ids()
        problems = []
        top = self.engine.top
        rooted = rooted_under(top)
        ns, lk = netns_names(), links()
        for cid, state in listed.items():
            try:
                c = Container.load(self.engine.run_root + "/engine", cid)
                rt, init = c.status(), c.pid
            except NotFound:
                rt, init = "missing", 0
            procs = cgroup_procs(cid)
            who = f"{cid[:12]} (cycle #{self.cycle_of.get(cid)})"
            if state == "running":
                if rt != "running" or not init or init not in procs:
                    problems.append(f"{who} listed running: runtime {rt}, init {init}, "
                                    f"cgroup procs {sorted(procs)}")
            elif state in ("exited", "created"):
                inside = [p for p, r in rooted.items() if cid in r]
                if procs or inside or rt == "running":
                    problems.append(f"{who} listed {state}: runtime {rt}, cgroup "
                                    f"procs {sorted(procs)}, processes {inside}")
            else:
                problems.append(f"{cid[:12]} listed as {state}")
        for cid in self.seen - set(listed):
            left = [f"cgroup {d}" for d in cgroup_dirs(cid)]
            left += [f"netns minirun-{cid[:12]}"] if f"minirun-{cid[:12]}" in ns else []
            left += [f"link mr{cid[:12]}"] if f"mr{cid[:12]}" in lk else []
            left += [f"mount {m}" for m in mounts_under(os.path.join(self.engine.root,
                                                                     "containers", cid))]
            left += [f"process {p}" for p, r in rooted.items() if cid in r]
            state = os.path.join(self.engine.run_root, "engine", cid)
            if os.path.exists(state):
                left.append(f"runtime state {sorted(os.listdir(state))}")
            if left:
                problems.append(f"{cid[:12]} (cycle #{self.cycle_of.get(cid)}) not listed, "
                                f"yet: {', '.join(left)}")
        stray = [p for p, r in rooted.items() if not any(c in r for c in self.seen)]
        if stray:
            problems.append(f"processes rooted under the test's root, no container: {stray}")
        # an init not exec'd yet still has the keeper's command line (our root in it)
        ours = {self.engine.pid_of("daemon"), self.engine.pid_of("keeper")}
        for cid in listed:
            ours |= cgroup_procs(cid)
        stray = [p for p in naming(top) if p not in ours]
        if stray:
            problems.append(f"processes of no listed container: "
                            f"{[(p, cgroup_of(p)) for p in stray]}")
        for cid in minirun_cgroups() - self.seen:
            mine = [p for p in cgroup_procs(cid) if p in rooted]
            if mine:
                problems.append(f"cgroup {cid[:12]} of no listed container holds {mine}")
        return problems

    def check_truth(self, when: str) -> None:
        """ps -a, retried for a few seconds (a container may be exiting as we look)."""
        problems = []
        for _ in range(10):
            problems = self.truth_problems()
            if not problems:
                return
            time.sleep(0.5)
        pytest.fail(f"seed {self.seed}, {when}: ps -a is not the truth: {problems}\n"
                    + "\n".join(self.log[-BATCH:]) + "\n" + self.engine.daemon_logs())

    def daemon_back(self) -> bool:
        """A killed daemon is back by itself (the keeper) or with the next command."""
        pid = self.engine.pid_of("daemon")
        if pid is not None and lock_pid(os.path.join(self.engine.run_root,
                                                     "daemon.lock")) == pid:
            return True
        return self.engine("ps").returncode == 0 and wait_for(
            lambda: lock_pid(os.path.join(self.engine.run_root, "daemon.lock")) is not None,
            timeout=10)


def test_kill_client_or_daemon_200_cycles(engine):
    seed = int(os.environ.get("MINIRUN_FAULT_SEED") or random.SystemRandom().randrange(1 << 31))
    print(f"\nfault injection seed: {seed} (MINIRUN_FAULT_SEED={seed} reproduces it)")
    faults = Faults(engine, seed)
    before = {"links": links(), "netns": netns_names()}
    plan = [(faults.rng.choice(VERBS), VICTIMS[i % 2]) for i in range(CYCLES)]
    faults.rng.shuffle(plan)
    begun = time.monotonic()
    for start in range(0, len(plan), BATCH):
        for verb, victim in plan[start:start + BATCH]:
            faults.cycle(verb, victim)
        assert not faults.hung, f"seed {seed}: a command hung after a kill: {faults.hung}"
        assert faults.daemon_back(), engine.daemon_logs()
        faults.check_truth(f"after cycle {faults.n}")
        # a batch's containers go, so that the host holds at most a batch's worth
        ids = list(faults.listed())
        if ids:
            proc = engine("rm", "-f", *ids)
            assert proc.returncode == 0, f"seed {seed}: rm -f: {proc.stderr}"
        faults.check_truth(f"after rm -f, cycle {faults.n}")
    took = time.monotonic() - begun
    print(f"{CYCLES} cycles in {took:.0f}s")

    for args in (["network", "prune", "-f"], ["container", "prune", "-f"]):
        proc = engine(*args)
        assert proc.returncode == 0, f"seed {seed}: {args}: {proc.stderr}"
    assert faults.listed() == {}
    faults.note_ids()
    top = engine.top
    mine = {c[:12] for c in faults.seen}
    left = {
        "mounts": mounts_under(top),
        "cgroups": sorted(minirun_cgroups() & faults.seen),
        "links": sorted(n for n in links() - before["links"]
                        if n == faults.bridge or (n.startswith("mr") and n[2:] in mine)),
        "netns": sorted(n for n in netns_names() - before["netns"]
                        if n.startswith("minirun-") and n[8:] in mine),
        "leases": leases(engine.root),
        "processes": rooted_under(top),
        "commands": [p for p in naming(top) if p not in (engine.pid_of("keeper"),
                                                        engine.pid_of("daemon"))],
    }
    table = nft_table(faults.table)
    rules = [ln.strip() for ln in (table or "").splitlines()
             if ln.strip() and not ln.strip().startswith(("table", "chain", "type", "}"))]
    if rules:
        left["nft rules"] = rules
    # the daemon and keeper only: stopped by pid, the keeper first (else it restarts the
    # daemon), each verified by its lock
    keeper = engine.pid_of("keeper")
    if keeper and lock_pid(os.path.join(engine.run_root, "keeper.lock")) == keeper:
        os.kill(keeper, signal.SIGKILL)
    daemon = faults.kill_daemon()
    for pid in (keeper, daemon):
        if pid:
            wait_for(lambda p=pid: not os.path.exists(f"/proc/{p}"), timeout=5)
    left["daemon or keeper"] = naming(top)
    left = {k: v for k, v in left.items() if v}
    assert not left, f"seed {seed}: left behind: {left}\n{engine.daemon_logs()}"


def test_removal_of_a_tree_another_removal_empties_meanwhile(tmp_path, monkeypatch):
    """Two removals of one container at once (`rm -f` of a `run -d --rm` container: the
    CLI's and the daemon's, once the kill makes it exit) both succeed: entries the
    other one removed first are not an error (seed 293273703 of the test above)."""
    from minirun.image import store

    tree = tmp_path / "c"
    (tree / "upper" / "etc").mkdir(parents=True)
    (tree / "upper" / "etc" / "f").write_text("x")
    real = os.listdir

    def listdir_then_the_other_removal(fd):
        names = real(fd)
        if "etc" in names:  # the other removal takes upper's content and upper
            (tree / "upper" / "etc" / "f").unlink()
            (tree / "upper" / "etc").rmdir()
        return names

    monkeypatch.setattr(store.os, "listdir", listdir_then_the_other_removal)
    store.remove_tree(str(tree))
    assert not tree.exists()


def test_unmount_of_a_snapshot_another_removal_unmounts_meanwhile(tmp_path, monkeypatch):
    """The same race one step earlier (seed 1357924680): the snapshot's overlay is busy,
    and before the lazy detach the other removal has unmounted it: EINVAL there is not an
    error either."""
    from minirun import sys as msys
    from minirun.image import store

    merged = tmp_path / "merged"
    merged.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(merged)], check=True)
    real = msys.umount2
    calls = []

    def busy_then_gone(target, flags=0):
        calls.append(flags)
        if len(calls) == 1:
            real(target)  # the other removal's unmount, just before ours
            raise msys.SysError("umount", target, errno.EBUSY)
        return real(target, flags)

    monkeypatch.setattr(msys, "umount2", busy_then_gone)
    try:
        store._unmount_all(str(merged))
        assert calls == [0, msys.MNT_DETACH]
        assert str(merged) not in store.mounts_under(str(merged))
    finally:
        monkeypatch.undo()
        if str(merged) in store.mounts_under(str(merged)):
            subprocess.run(["umount", "-l", str(merged)], check=False)


def start_in_the_keeper(engine):
    """A `run -d` container prepared and started by the keeper as for a daemon that
    dies before it records the start: (its Engine, id, init pid)."""
    from minirun.daemon import proto
    from minirun.engine import Engine, RunOptions

    eng = Engine(root=engine.root, run_root=engine.run_root)
    cid = eng.prepare("busybox", RunOptions(network="none", detach=True,
                                             command=["sleep", "60"]))
    keeper = proto.connect(os.path.join(engine.run_root, "keeper.sock"))
    proto.send(keeper, {"op": "start", "id": cid, "oci_root": eng.oci_root,
                        "bundle": os.path.join(engine.root, "containers", cid)})
    reply, fds = proto.recv(keeper)
    for fd in fds:
        os.close(fd)
    keeper.close()
    assert reply.get("ok"), reply
    assert cgroup_procs(cid) >= {reply["pid"]}
    return eng, cid, reply["pid"]


def kill_the_daemon(engine) -> None:
    daemon = engine.pid_of("daemon")
    assert lock_pid(os.path.join(engine.run_root, "daemon.lock")) == daemon
    os.kill(daemon, signal.SIGKILL)


def remove_by_hand(eng, cid: str) -> None:
    from minirun import container as ctr
    from minirun.image.store import ImageStore

    try:
        ctr.delete(eng.oci_root, cid, force=True)
    except Exception:  # noqa: BLE001 - gone already, as it should be
        pass
    eng._remove_everything(cid, ImageStore(eng.root))


def test_a_container_started_after_its_removal_goes(engine):
    """The daemon is killed while the keeper starts a `run -d` container; the client sees
    the daemon go and removes the record, snapshot and network; the keeper finishes the
    start after that. The next daemon removes that container (process, cgroups, runtime
    state) instead of leaving it running where no `ps` lists it (seed 293273703)."""
    from minirun.container import Container
    from minirun.errors import NotFound
    from minirun.image.store import ImageStore

    engine("run", "-d", "--network", "none", "--name", "first", "busybox", "sleep", "60",
           check=True)
    eng, cid, init = start_in_the_keeper(engine)
    try:
        eng.networks.detach(cid)
        ImageStore(engine.root).release(cid)
        eng.db.execute("DELETE FROM containers WHERE id = ?", (cid,))
        kill_the_daemon(engine)
        # the keeper starts the next daemon, which takes the container away
        assert wait_for(lambda: not cgroup_dirs(cid), timeout=10), engine.daemon_logs()
        assert not os.path.exists(f"/proc/{init}") or \
            open(f"/proc/{init}/stat").read().split()[2] == "Z"
        with pytest.raises(NotFound):
            Container.load(eng.oci_root, cid)
        assert cid[:12] not in engine("ps", "-a", "-q").stdout
        assert "first" in engine("ps").stdout
    finally:
        remove_by_hand(eng, cid)
        engine("rm", "-f", "first")


def test_a_start_the_dead_daemon_did_not_record_is_running(engine):
    """The `run -d` client is killed once it asked, then the daemon while the keeper
    starts the container: the next daemon records it running with its pid (ps said
    "created" for a running container; seed 1148473484)."""
    engine("run", "-d", "--network", "none", "--name", "first", "busybox", "sleep", "60",
           check=True)
    eng, cid, init = start_in_the_keeper(engine)
    try:
        kill_the_daemon(engine)
        assert wait_for(lambda: engine("inspect", "-f", "{{.State.Status}} {{.State.Pid}}",
                                       cid).stdout == f"running {init}\n", timeout=10)
        assert engine("stop", "-t", "1", cid).returncode == 0
        assert json.loads(engine("inspect", cid).stdout)[0]["State"]["Status"] == "exited"
        assert not cgroup_procs(cid)
    finally:
        remove_by_hand(eng, cid)
        engine("rm", "-f", "first")


def test_delete_finishes_a_delete_killed_after_the_state_went(tmp_path):
    """A `rm -f` killed between unlinking state.json and removing the directory (seed
    616924120 of the cycles above): the next delete of the id removes what is left,
    and still says the container does not exist."""
    from minirun import container as ctr
    from minirun.errors import NotFound

    cid = "a" * 64
    (tmp_path / cid).mkdir()
    os.mkfifo(tmp_path / cid / "exec.fifo")
    with pytest.raises(NotFound):
        ctr.delete(str(tmp_path), cid, force=True)
    assert not (tmp_path / cid).exists()


@pytest.mark.parametrize("verb", [["ps"], ["stats", "--no-stream"], ["events", "--until", "0s"],
                                  ["run", "--rm", "busybox", "true"], ["doctor"]])
def test_an_engine_root_that_is_a_file_is_one_line(tmp_path, verb):
    """MINIRUN_ROOT naming a file: every verb says so in one line (no traceback), with
    its usual error code, and makes nothing."""
    root = tmp_path / "root"
    root.write_text("not a directory\n")
    run_root = tmp_path / "run"
    env = {**os.environ, "MINIRUN_ROOT": str(root), "MINIRUN_RUN_ROOT": str(run_root)}
    proc = subprocess.run([sys.executable, "-m", "minirun.cli", *verb], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode in (1, 2, 125), proc
    # run opens the image store first: its line names the same path
    assert proc.stderr in (f"minirun: error: the engine root {root} is not a directory\n",
                           f"minirun: doctor: the audit failed: the engine root {root} is not"
                           " a directory\n",
                           f"minirun: error: cannot open the image store: Not a directory: "
                           f"{root}/blobs\n"), proc.stderr
    assert root.read_text() == "not a directory\n"
    assert not run_root.exists()
