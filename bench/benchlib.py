"""What the bench scripts share: statistics, rotating order, output, signals, temp-dir
cleanup, cgroup and mount helpers, the crun helper process, timed commands and minirun's
launchers.

Standard library only, importable by any python3 >= 3.9: the scripts run as
`sudo python3 bench/X.py` as well as with the checkout's venv, and find this module next
to them.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import TextIO

HERE = os.path.dirname(os.path.abspath(__file__))
CHECKOUT = os.path.dirname(HERE)
VENV = os.path.join(CHECKOUT, ".venv")
MINIRUN_CONSOLE = os.path.join(VENV, "bin", "minirun")  # pip's console script
CLEANUP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class BenchError(Exception):
    """The bench cannot go on; the script prints it and exits 1 after cleaning up."""


# --- statistics and order -----------------------------------------------------------------

def summary(values: list[float], *, mean: bool = True) -> dict:
    """median, p90, min, max (and mean) of the samples, and their number."""
    values = sorted(values)
    p90 = statistics.quantiles(values, n=10, method="inclusive")[8] if len(values) > 1 \
        else values[0]
    out = {"median": statistics.median(values), "p90": p90, "min": values[0],
           "max": values[-1]}
    if mean:
        out["mean"] = statistics.fmean(values)
    out["n"] = len(values)
    return out


def ratio(a: dict, b: dict) -> dict:
    """a over b, of two summaries' medians and p90s."""
    return {stat: a[stat] / b[stat] for stat in ("median", "p90")}


def rotated(items: list, i: int) -> list:
    """The order for iteration i: it rotates, so that drift on the machine hits every
    item alike."""
    k = i % len(items)
    return items[k:] + items[:k]


def progress(i: int, total: int, log: TextIO) -> None:
    """`  n/total` after every tenth iteration and the last (i counts from 0)."""
    if (i + 1) % 10 == 0 or i + 1 == total:
        print(f"  {i + 1}/{total}", file=log)


# --- arguments and output -----------------------------------------------------------------

def add_iteration_args(p: argparse.ArgumentParser, iterations: int, warmup: int) -> None:
    p.add_argument("--iterations", "-n", type=int, default=iterations)
    p.add_argument("--warmup", type=int, default=warmup)


def add_output_args(p: argparse.ArgumentParser,
                    tmpdir_help: str = "parent of the temp dir (default $TMPDIR)") -> None:
    p.add_argument("--tmpdir", default=None, help=tmpdir_help)
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON ('-' for "
                   "stdout, then no table)")


def log_stream(json_dest: str | None) -> TextIO:
    """Where progress goes: stderr when the JSON goes to stdout."""
    return sys.stderr if json_dest == "-" else sys.stdout


def write_json(result: dict, dest: str | None) -> None:
    """The results as JSON to dest: a file, '-' for stdout, None for nowhere."""
    if not dest:
        return
    text = json.dumps(result, indent=2)
    if dest == "-":
        print(text)
    else:
        with open(dest, "w") as f:
            f.write(text + "\n")


def stats_header(title: str, width: int, keys: tuple[str, ...]) -> str:
    return f"{title:<{width}}" + "".join(f"{k:>9}" for k in keys)


def stats_row(label: str, s: dict, width: int, keys: tuple[str, ...],
              scale: float = 1.0) -> str:
    """label, then these statistics of a summary times scale (1e3: seconds as ms)."""
    return f"{label:<{width}}" + "".join(f"{s[k] * scale:9.2f}" for k in keys)


# --- the machine and the checkout ---------------------------------------------------------

def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def read_ip_forward() -> str:
    with open("/proc/sys/net/ipv4/ip_forward") as f:
        return f.read().strip()


def _git(*args: str) -> str:
    out = subprocess.run(["git", "-C", CHECKOUT, *args], capture_output=True, text=True,
                         check=False)
    return out.stdout.strip()


def checkout_commit() -> str:
    return _git("rev-parse", "--short", "HEAD")


def checkout_state() -> dict:
    """The commit measured, and whether minirun/ had uncommitted changes."""
    return {"commit": checkout_commit(),
            "dirty": _git("status", "--porcelain", "--", "minirun").splitlines()}


def describe_checkout(state: dict, load: str) -> str:
    return (f"minirun at {state['commit']}"
            + (f" plus uncommitted changes to {len(state['dirty'])} file(s) in minirun/"
               if state["dirty"] else "") + f"; load average {load}")


def machine_and_checkout(state: dict, load_before: str) -> dict:
    """The last keys of a result's config: kernel, CPUs, checkout, load before and now."""
    return {"kernel": os.uname().release, "cpus": os.cpu_count(), "checkout": state,
            "loadavg_before": load_before, "loadavg_after": loadavg()}


# --- signals ------------------------------------------------------------------------------

def interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def catch_signals(handler: Callable = interrupt,
                  signals: tuple[int, ...] = CLEANUP_SIGNALS) -> None:
    """Turn these signals into KeyboardInterrupt, so that the bench's finally cleans up.

    SIGINT explicitly: a shell starts background jobs with it ignored, and `kill -INT`
    must still clean up. SIGHUP only if nohup did not ask to ignore it.
    """
    for sig in signals:
        if sig != signal.SIGHUP or signal.getsignal(sig) != signal.SIG_IGN:
            signal.signal(sig, handler)


def ignore_signals(signals: tuple[int, ...] = CLEANUP_SIGNALS) -> None:
    """While cleaning up: a second Ctrl-C must not cut the cleanup short."""
    for sig in signals:
        signal.signal(sig, signal.SIG_IGN)


# --- mounts and temp dirs -----------------------------------------------------------------

def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as \ooo
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mountinfo() -> list[tuple[str, str]]:
    """(mount point, filesystem type) of every mount this process sees, in order."""
    mounts = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            mounts.append((_unescape(fields[4]), fields[fields.index("-") + 1]))
    return mounts


def mounts_under(path: str) -> list[str]:
    path = os.path.realpath(path)
    return [target for target, _ in mountinfo()
            if target == path or target.startswith(path + "/")]


def remove_tree(path: str) -> list[str]:
    """rm -rf --one-file-system, after detaching anything mounted inside; returns a
    problem if the tree is still there."""
    if not os.path.lexists(path):
        return []
    libc = ctypes.CDLL(None, use_errno=True)
    for target in sorted(mounts_under(path), key=len, reverse=True):
        libc.umount2(target.encode(), 2)  # MNT_DETACH
    subprocess.run(["rm", "-rf", "--one-file-system", "--", path], check=False)
    if os.path.exists(path):
        return [f"{path} could not be removed: {mounts_under(path)}"]
    return []


# --- cgroups ------------------------------------------------------------------------------

def cgroup_mounts() -> list[tuple[str, str]]:
    """(mount point, "cgroup" or "cgroup2") of every cgroup hierarchy."""
    return [(mp, fstype) for mp, fstype in mountinfo() if fstype in ("cgroup", "cgroup2")]


def cgroup_dirs(rel: str) -> list[str]:
    """The directories of cgroup `rel` (from the root) in the hierarchies that have it."""
    return [d for d in (os.path.join(mp, rel.lstrip("/")) for mp, _ in cgroup_mounts())
            if os.path.isdir(d)]


def cgroup_procs(directory: str) -> list[int]:
    """The processes in this cgroup and below."""
    pids = []
    for dirpath, _dirs, _files in os.walk(directory):
        try:
            with open(os.path.join(dirpath, "cgroup.procs")) as f:
                pids += [int(p) for p in f.read().split()]
        except OSError:
            pass
    return pids


def kill_cgroup_procs(top: str, attempts: int = 50) -> None:
    """SIGKILL what is in top and below until it is empty (at most `attempts` rounds).
    Frozen v1 freezer cgroups are thawed first: a frozen process does not die."""
    for _ in range(attempts):
        pids = cgroup_procs(top)
        if not pids:
            return
        for dirpath, _dirs, files in os.walk(top):
            if "freezer.state" in files:
                try:
                    with open(os.path.join(dirpath, "freezer.state"), "w") as f:
                        f.write("THAWED")
                except OSError:
                    pass
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)


def _mount_fstype(path: str) -> str | None:
    return next((fstype for target, fstype in mountinfo() if target == path), None)


def crun_needs_private_ns() -> bool:
    """crun's own test: a hybrid host whose cgroup2 mount has controllers enabled."""
    if _mount_fstype("/sys/fs/cgroup") == "cgroup2" or \
            _mount_fstype("/sys/fs/cgroup/unified") != "cgroup2":
        return False
    try:
        with open("/sys/fs/cgroup/unified/cgroup.controllers") as f:
            return bool(f.read().strip())
    except OSError:
        return False


def enter_private_cgroup_view() -> None:
    """A private mount namespace with a tmpfs over /sys/fs/cgroup/unified: crun then sees
    a plain v1 host, and the host's mounts stay as they are."""
    libc = ctypes.CDLL(None, use_errno=True)

    def check(ret: int, what: str) -> None:
        if ret != 0:
            e = ctypes.get_errno()
            raise OSError(e, f"{what}: {os.strerror(e)}")

    check(libc.unshare(0x00020000), "unshare(CLONE_NEWNS)")
    # MS_REC | MS_PRIVATE: nothing below propagates back to the host.
    check(libc.mount(b"none", b"/", None, 0x4000 | 0x40000, None), "mount --make-rprivate /")
    check(libc.mount(b"tmpfs", b"/sys/fs/cgroup/unified", b"tmpfs", 0x2 | 0x4 | 0x8,
                     b"mode=755,size=1m"), "mount tmpfs on /sys/fs/cgroup/unified")


class PrivateCgroupHelper:
    """A forked process in enter_private_cgroup_view(), answering JSON requests over a
    socketpair with handle(request) -> reply (for crun on a hybrid host)."""

    def __init__(self, handle: Callable[[dict], dict], ready_timeout: float,
                 exit_timeout: float | None = None) -> None:
        """exit_timeout: how long close() waits for the request in flight before SIGKILL
        (None: as long as it takes)."""
        self.exit_timeout = exit_timeout
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.pid = os.fork()
        if self.pid == 0:
            parent.close()
            code = 1
            try:
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGHUP, signal.SIG_DFL)
                enter_private_cgroup_view()
                child.send(b'{"ready": true}')
                while True:
                    data = child.recv(1 << 20)
                    if not data:
                        break
                    child.send(json.dumps(handle(json.loads(data))).encode())
                code = 0
            except BaseException as e:  # noqa: BLE001  (a fork must never return)
                try:
                    child.send(json.dumps({"error": f"helper: {e}"}).encode())
                except OSError:
                    pass
            os._exit(code)
        child.close()
        self.sock = parent
        reply = self.recv(ready_timeout)
        if "error" in reply:
            self.close()
            raise BenchError(reply["error"])

    def send(self, request: dict) -> None:
        self.sock.send(json.dumps(request).encode())

    def recv(self, timeout: float) -> dict:
        self.sock.settimeout(timeout)
        data = self.sock.recv(1 << 20)
        if not data:
            raise BenchError("the crun helper exited")
        return json.loads(data)

    def close(self) -> None:
        """EOF ends the helper once its request in flight is done."""
        try:
            self.sock.close()
        finally:
            if self.exit_timeout is None:
                try:
                    os.waitpid(self.pid, 0)
                except ChildProcessError:
                    pass
            else:
                deadline = time.monotonic() + self.exit_timeout
                while time.monotonic() < deadline:
                    if os.waitpid(self.pid, os.WNOHANG)[0]:
                        return
                    time.sleep(0.05)
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)


# --- commands -----------------------------------------------------------------------------

def timed(argv: list[str], env: dict | None, timeout: float) -> dict:
    """Run argv, timed from spawn to exit; never raises for the command's own failure.
    The output is cut to its end, so that a reply fits in the helper's messages."""
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"elapsed": time.perf_counter() - t0, "code": None,
                "stderr": f"timed out after {timeout:.0f}s"}
    elapsed = time.perf_counter() - t0
    return {"elapsed": elapsed, "code": proc.returncode,
            "stdout": proc.stdout.decode(errors="replace")[-4000:],
            "stderr": proc.stderr.decode(errors="replace").strip()[-2000:]}


def checked(argv: list[str], env: dict | None, timeout: float,
            what: str | None = None) -> dict:
    """timed(), raising BenchError if the command fails."""
    result = timed(argv, env, timeout)
    if result["code"] != 0:
        what = what or f"{' '.join(argv[:3])} ..."
        raise BenchError(f"{what} failed ({result['code']}): "
                         f"{result['stderr'] or '(no stderr)'}")
    return result


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- minirun's launchers ------------------------------------------------------------------

def venv_python() -> str:
    path = os.path.join(VENV, "bin", "python")
    if not os.access(path, os.X_OK):
        raise BenchError(f"no venv at {VENV}: run scripts/install.sh first")
    return path


def site_packages(python: str) -> str:
    return subprocess.run(
        [python, "-c", 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
        check=True, capture_output=True, text=True).stdout.strip()


def write_fast_launcher(path: str, module: str, ending: str) -> str:
    """A launcher like the minirun-oci-fast that scripts/install.sh writes: the venv's
    python -SE (no site, no editable-install finder), the checkout first on sys.path,
    site-packages last, then `module`'s main.

    ending: "main_and_exit" (flush, os._exit) or "teardown" (raise SystemExit(main()):
    the interpreter's normal finalization).
    """
    python = venv_python()
    call = (f"from {module} import main_and_exit\n\nmain_and_exit()\n"
            if ending == "main_and_exit" else
            f"from {module} import main\n\nraise SystemExit(main())\n")
    with open(path, "w") as f:
        f.write(f"#!{python} -SE\n"
                "# Like the -SE launcher scripts/install.sh writes; generated by bench/.\n"
                "import sys\n\n"
                f"sys.path[0] = {CHECKOUT!r}\n"
                f"sys.path.append({site_packages(python)!r})\n" + call)
    os.chmod(path, 0o755)
    return path


def installed_launcher(name: str) -> str | None:
    """.venv/bin/<name>, if scripts/install.sh wrote it for this checkout."""
    path = os.path.join(VENV, "bin", name)
    try:
        with open(path) as f:
            if f'sys.path[0] = "{CHECKOUT}"' in f.read():
                return path
    except OSError:
        pass
    return None


def minirun_command(arg: str | None) -> tuple[list[str], str]:
    """The `minirun` command and where it came from: "--minirun" (arg), "launcher"
    (scripts/install.sh's minirun-launcher) or "console" (pip's console script)."""
    if arg:
        return arg.split(), "--minirun"
    launcher = installed_launcher("minirun-launcher")
    if launcher:
        return [launcher], "launcher"
    if os.access(MINIRUN_CONSOLE, os.X_OK):
        return [MINIRUN_CONSOLE], "console"
    raise BenchError(f"no minirun in {VENV}: run scripts/install.sh first")
