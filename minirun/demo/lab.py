"""The runner: runs a scenario's commands through the `minirun` CLI (the commands a learner
would type), narrates them, records what was observed and the lessons, and removes what
the scenario made."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from . import EXIT_CANNOT_RUN, EXIT_HELD, EXIT_NOT_HELD, CannotRun, load

IMAGE = "busybox"


@dataclass
class Result:
    """What one scenario observed and whether its lessons held."""

    name: str
    verdict: str = "held"  # held | not held | cannot run
    reason: str = ""
    observed: dict = field(default_factory=dict)
    lessons: list = field(default_factory=list)  # [{"lesson", "held", "detail"}]
    seconds: float = 0.0
    kept: list = field(default_factory=list)  # containers left by --keep

    @property
    def exit_status(self) -> int:
        return {"held": EXIT_HELD, "not held": EXIT_NOT_HELD}.get(self.verdict, EXIT_CANNOT_RUN)

    def to_dict(self) -> dict:
        return {"name": self.name, "verdict": self.verdict, "exit_status": self.exit_status,
                "reason": self.reason, "observed": self.observed, "lessons": self.lessons,
                "seconds": round(self.seconds, 2), "kept": self.kept}


class Lab:
    def __init__(self, root: str | None = None, run_root: str | None = None,
                 out: Callable[[str], None] = print, keep: bool = False,
                 explain: bool = False) -> None:
        self.root, self.run_root = root, run_root
        self.out, self.keep, self.explain = out, keep, explain
        self.env = dict(os.environ)
        if root:
            self.env["MINIRUN_ROOT"] = root
        if run_root:
            self.env["MINIRUN_RUN_ROOT"] = run_root
        # the commands run this minirun, not one the working directory happens to hold:
        # -P keeps the cwd off sys.path, PYTHONPATH names this package's tree first
        top = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        self.env["PYTHONPATH"] = os.pathsep.join(
            [top] + [p for p in self.env.get("PYTHONPATH", "").split(os.pathsep) if p])
        self.result: Result | None = None
        self.containers: list[str] = []
        self.tempdirs: list[str] = []
        self.networks: list[str] = []
        self._serial = 0

    # --- what scenarios call -------------------------------------------------------------

    def say(self, text: str) -> None:
        self.out(text)

    def minirun(self, *args: str, timeout: float = 60, quiet: bool = False
                ) -> subprocess.CompletedProcess:
        """`minirun ARGS` in a subprocess, as a learner would type it (the --root and
        --run-root of the lab go in the environment)."""
        return self._run([sys.executable, "-P", "-m", "minirun.cli", *args], "$ minirun",
                         list(args), timeout, quiet)

    def host(self, *argv: str, timeout: float = 30, quiet: bool = False
             ) -> subprocess.CompletedProcess:
        """A command on the host, for contrast."""
        return self._run(list(argv), "host$", list(argv), timeout, quiet)

    def name(self, what: str) -> str:
        """A container name for this run; the runner removes it at the end."""
        self._serial += 1
        name = f"demo-{self.result.name}-{what}-{os.getpid()}-{self._serial}"
        self.containers.append(name)
        return name

    def run(self, *args: str, name: str = "c", timeout: float = 60, quiet: bool = False,
            remove: bool = True) -> subprocess.CompletedProcess:
        """`minirun run --rm --pull never --name N ARGS` (ARGS: flags, then the image and
        the command), in the foreground; without --rm when not remove (the name is in
        self.last_name)."""
        self.last_name = self.name(name)
        remove = remove and not self.keep  # --keep: every container stays for a look
        proc = self.minirun("run", *(["--rm"] if remove else []), "--pull", "never",
                            "--name", self.last_name, *args, timeout=timeout, quiet=quiet)
        if remove and proc.returncode != 124:  # gone with --rm unless it timed out
            self.containers.remove(self.last_name)
        return proc

    def start(self, *args: str, name: str = "c") -> str:
        """`minirun run -d --name N ARGS`; returns the name. CannotRun if it fails."""
        cname = self.name(name)
        proc = self.minirun("run", "-d", "--pull", "never", "--name", cname, *args,
                            quiet=True)
        if proc.returncode != 0:
            raise CannotRun(f"minirun run -d failed: {proc.stderr.strip()}")
        self.out(f"  (started {cname})")
        return cname

    def pid_of(self, container: str) -> int:
        """The host pid of a running container's pid 1."""
        proc = self.minirun("inspect", "-f", "{{.State.Pid}}", container, quiet=True)
        try:
            return int(proc.stdout.strip())
        except ValueError:
            raise CannotRun(f"no pid for {container}: {proc.stderr.strip()}") from None

    def cgroup_dir(self, pid: int, controller: str = "pids") -> str:
        """The directory of a host process's cgroup holding `controller`'s files, found
        from /proc (minirun.isolation.cgroup_dir); CannotRun where there is none."""
        from ..isolation import CgroupNotFound, cgroup_dir

        try:
            return cgroup_dir(pid, controller)
        except (CgroupNotFound, OSError) as e:
            raise CannotRun(str(e)) from None

    def remove(self, container: str) -> None:
        self.minirun("rm", "-f", container, quiet=True)
        if container in self.containers:
            self.containers.remove(container)

    def network(self, what: str) -> str:
        """`minirun network create` a network for this run; removed at the end."""
        self._serial += 1
        name = f"demo-{what}-{os.getpid()}-{self._serial}"
        proc = self.minirun("network", "create", name, quiet=True)
        if proc.returncode != 0:
            raise CannotRun(f"minirun network create failed: {proc.stderr.strip()}")
        self.networks.append(name)
        self.out(f"  (created network {name})")
        return name

    def tempdir(self) -> str:
        """A host directory for this scenario (files to bind-mount); removed at the end."""
        import tempfile

        path = tempfile.mkdtemp(prefix="minirun-demo-")
        os.chmod(path, 0o755)
        self.tempdirs.append(path)
        return path

    def observe(self, key: str, value) -> None:
        self.result.observed[key] = value
        self.out(f"  -> {key}: {value}")

    def expect(self, ok: bool, lesson: str, detail: str = "") -> bool:
        self.result.lessons.append({"lesson": lesson, "held": bool(ok), "detail": detail})
        mark = "held" if ok else "NOT HELD"
        self.out(f"  [{mark}] {lesson}" + (f" ({detail})" if detail else ""))
        return bool(ok)

    # --- the runner ---------------------------------------------------------------------

    def _run(self, argv: list[str], prompt: str, shown: list[str], timeout: float,
             quiet: bool) -> subprocess.CompletedProcess:
        if not quiet:
            self.out(f"{prompt} {shlex.join(shown)}")
        try:
            proc = subprocess.run(argv, env=self.env, capture_output=True, text=True,
                                  timeout=timeout, check=False)
        except subprocess.TimeoutExpired as e:
            proc = subprocess.CompletedProcess(argv, 124, _text(e.stdout),
                                               _text(e.stderr) + f"timed out after {timeout}s")
        if not quiet:
            for line in (proc.stdout + proc.stderr).rstrip("\n").splitlines()[:40]:
                self.out(f"    {line}")
            if proc.returncode:
                self.out(f"    (exit status {proc.returncode})")
        return proc

    def preflight(self) -> None:
        proc = self.minirun("run", "--rm", "--pull", "never", IMAGE, "true", quiet=True)
        if proc.returncode != 0:
            raise CannotRun(f"cannot run the {IMAGE} image here: {proc.stderr.strip()} "
                            f"(import it: rootfs/build.sh --tar F && minirun import F {IMAGE})")

    def _cleanup(self, result: Result) -> None:
        """Remove what the scenario made (containers, then networks, then files), or
        with --keep list the containers and networks left."""
        if self.keep:
            result.kept = list(self.containers) + list(self.networks)
        else:
            for c in list(self.containers):
                self.minirun("rm", "-f", c, quiet=True)
            # an interrupted `run -d` may have asked the daemon for a container that it
            # finishes making after the rm above: look again, for a second or so
            for _ in range(4):
                listed = self.minirun("ps", "-a", "--format", "{{.Names}}", quiet=True)
                late = [c for c in listed.stdout.split() if c in self.containers]
                if not late:
                    break
                for c in late:
                    self.minirun("rm", "-f", c, quiet=True)
                time.sleep(0.3)
            self.containers = []
            for net in self.networks:  # after their containers
                self.minirun("network", "rm", net, quiet=True)
            self.networks = []
        for path in self.tempdirs:  # only files, never a mount: the containers are gone
            shutil.rmtree(path, ignore_errors=True)
        self.tempdirs = []

    def run_scenario(self, name: str) -> Result:
        module = load(name)
        self.result = result = Result(name)
        self.containers = []
        started = time.monotonic()
        self.out(f"=== {name}: {module.TITLE}")
        if self.explain:
            self.out(module.EXPLAIN.strip() + "\n")
        try:
            self.preflight()
            module.run(self)
        except CannotRun as e:
            result.verdict, result.reason = "cannot run", str(e)
        finally:
            with _signals_held():  # a second Ctrl-C must not stop the cleanup half-way
                self._cleanup(result)
        if result.verdict != "cannot run" and not all(x["held"] for x in result.lessons):
            result.verdict = "not held"
            result.reason = "; ".join(x["lesson"] for x in result.lessons if not x["held"])
        if result.verdict == "held" and not result.lessons:
            result.verdict, result.reason = "cannot run", "the scenario checked nothing"
        result.seconds = time.monotonic() - started
        tail = f": {result.reason}" if result.reason else ""
        self.out(f"--- verdict: {result.verdict.upper()}{tail}")
        if result.kept:
            self.out(f"    kept: {' '.join(result.kept)} (remove with minirun rm -f)")
        self.out("")
        return result


@contextlib.contextmanager
def _signals_held():
    """SIGINT and SIGTERM ignored meanwhile (in the main thread; elsewhere a no-op)."""
    try:
        saved = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT,
                                                                      signal.SIGTERM)}
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def _text(data) -> str:
    if isinstance(data, bytes):
        return data.decode(errors="replace")
    return data or ""


def exit_status(results: list[Result]) -> int:
    """The worst: a lesson that did not hold, then a scenario that could not run."""
    codes = {r.exit_status for r in results}
    for code in (EXIT_NOT_HELD, EXIT_CANNOT_RUN):
        if code in codes:
            return code
    return EXIT_HELD
