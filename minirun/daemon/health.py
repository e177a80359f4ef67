"""The daemon's health checks: when each container's next check is due, the checks
running, their output and results. Part of the daemon's one-threaded loop (server.py):
timers are a heap the loop's select waits on, and a running check is a child process
(monitor/probe.py) whose output pipe and report pipe are in the loop's selector, so a
check never blocks the daemon, however long it runs.

  daemon -> probe   argv: OCI root, id, timeout (ns), report fd, the command
  probe -> daemon   the check's stdout+stderr on one pipe (the first 4096 bytes kept),
                    then one JSON line on the report pipe (monitor/probe.py), which
                    closes when the probe exits

Docker's timing (moby daemon/health.go): the first check an interval after the start,
each next one an interval after the end of the last; during the start period, while
still "starting", every start interval (default 5s), and never past the period's end.
A probe that has not reported 30 s after its timeout (dockerd's bound on starting an
exec) is killed and counted as a failure. At a container's stop its timer goes and a
running check is cancelled (SIGTERM: the probe kills the check and exits); its result,
if any, is dropped.

Every container the daemon starts or adopts is checked if its config has a check:
foreground runs (`minirun run` without -d) are the daemon's containers too (the keeper
parents them), so they are checked as docker checks every container. A daemon that
comes back after a crash adopts the running containers and checks them again from
their last recorded status (docker's live-restore resets it to "starting"; here the
container did not restart, so its status stands).
"""

from __future__ import annotations

import functools
import os
import selectors
import signal
import subprocess
import sys
import time

from ..healthcheck import probe_command, setting
from ..monitor import health
from .timers import Timers

EXEC_START_BOUND = 30.0  # dockerd's timeout on starting a check's exec


def logged(method):
    """The entry points from the daemon's loop: a health check's trouble (a database
    error, a failed fork) is logged and never stops a start, an exit's handling or the
    loop."""

    @functools.wraps(method)
    def wrapper(self, *args, **kw):
        try:
            return method(self, *args, **kw)
        except Exception as e:  # noqa: BLE001 - see above
            from .server import log_line

            log_line(f"health checks: {method.__name__}: {type(e).__name__}: {e}", "error")
            return 1.0 if method.__name__ == "run_due" else None  # run_due: look again soon

    return wrapper


class Probe:
    def __init__(self, cid: str, proc: subprocess.Popen, out_fd: int, report_fd: int,
                 deadline: float) -> None:
        self.cid = cid
        self.proc = proc
        self.out_fd = out_fd
        self.report_fd = report_fd
        self.deadline = deadline  # monotonic: past it the probe is killed
        self.start_ns = time.time_ns()
        self.output = bytearray()
        self.truncated = False
        self.report = b""
        self.cancelled = False


class Watch:
    """A running container's check: its config and when it started."""

    def __init__(self, config: dict, command: list[str], started: float) -> None:
        self.config = config
        self.command = command
        self.started_ns = int(started * 1e9)


class HealthChecks:
    def __init__(self, daemon) -> None:
        self.daemon = daemon
        self.engine = daemon.engine
        self.sel: selectors.BaseSelector = daemon.sel
        self.watches: dict[str, Watch] = {}
        self.timers = Timers()  # id -> when its next check is due
        self.probes: dict[str, Probe] = {}  # the check running for each container
        self.dying: set[Probe] = set()  # cancelled, not reaped yet

    # --- lifecycle ---------------------------------------------------------------------------

    @logged
    def started(self, cid: str, opts: dict, adopted: bool = False) -> None:
        """A container started (or adopted running): its checks begin, the first an
        interval from now. A start resets its status to starting; an adopted one keeps
        what was recorded (a row is made if there is none)."""
        self.stopped(cid, record=False)
        config = opts.get("healthcheck") or {}
        command = probe_command(config)
        if command is None:
            return
        db = self.engine.db
        row = self.engine.db.execute("SELECT started FROM containers WHERE id = ?",
                                     (cid,)).fetchone()
        if not adopted or health.read(db, cid) is None:
            health.reset(db, cid)
        self.watches[cid] = Watch(config, command, (row[0] if row else None) or time.time())
        self.timers.set(cid, self._interval(cid))

    @logged
    def stopped(self, cid: str, record: bool = True) -> None:
        """The container exited: no more checks, a running one cancelled, its status
        unhealthy (docker's, at the monitor's stop)."""
        watched = self.watches.pop(cid, None) is not None
        self.timers.cancel(cid)
        probe = self.probes.pop(cid, None)
        if probe is not None:
            probe.cancelled = True
            self.dying.add(probe)
            self._signal(probe, signal.SIGTERM)
        if record and watched:
            health.stopped(self.engine.db, cid)

    def cancel_probes(self) -> None:
        """The daemon exits: the running checks end with it (each probe kills its check)
        rather than run out their timeouts. Signals only: this runs in a signal handler."""
        for probe in list(self.probes.values()):
            self._signal(probe, signal.SIGTERM)

    # --- timers ------------------------------------------------------------------------------

    def _interval(self, cid: str) -> float:
        """moby's getInterval: the next check's delay, in seconds."""
        w = self.watches[cid]
        interval = setting(w.config, "Interval")
        start_period = setting(w.config, "StartPeriod")
        elapsed = time.time_ns() - w.started_ns
        if elapsed >= start_period:
            return interval / 1e9
        remaining = start_period - elapsed
        if remaining < interval:
            return remaining / 1e9
        state = health.read(self.engine.db, cid)
        if state is not None and state["status"] == "starting":
            return setting(w.config, "StartInterval") / 1e9
        return interval / 1e9

    @logged
    def run_due(self) -> float | None:
        """Start the checks that are due, kill probes past their bound; the seconds
        until the next of either."""
        now = time.monotonic()
        for probe in list(self.probes.values()) + list(self.dying):
            if probe.deadline <= now and probe.proc.poll() is None:
                self._signal(probe, signal.SIGKILL)
                probe.deadline = now + 3600  # once
        while (cid := self.timers.pop_due()) is not None:
            try:
                self._launch(cid)
            except Exception as e:  # noqa: BLE001 - one container's trouble
                from .server import log_line

                log_line(f"health check of {cid[:12]} not started: {type(e).__name__}: {e}", "error",
                         {"id": cid}, "health_status")
                self._finish_result(cid, health.Result(time.time_ns(), time.time_ns(), -1,
                                                       str(e)))
        waits = [p.deadline - now for p in list(self.probes.values()) + list(self.dying)]
        next_check = self.timers.next_in()
        if next_check is not None:
            waits.append(next_check)
        return max(0.0, min(waits)) if waits else None

    # --- probes ------------------------------------------------------------------------------

    def _launch(self, cid: str) -> None:
        w = self.watches[cid]
        timeout = setting(w.config, "Timeout")
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        rep_r, rep_w = os.pipe2(os.O_CLOEXEC)
        try:
            with open(os.devnull, "rb") as null:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "minirun.monitor.probe", self.engine.oci_root,
                     cid, str(timeout), str(rep_w), *w.command],
                    stdin=null, stdout=out_w, stderr=out_w, pass_fds=(rep_w,),
                    close_fds=True, cwd="/", start_new_session=True)
        except BaseException:
            for fd in (out_r, rep_r):
                os.close(fd)
            raise
        finally:
            os.close(out_w)
            os.close(rep_w)
        probe = Probe(cid, proc, out_r, rep_r, time.monotonic() + timeout / 1e9 +
                      EXEC_START_BOUND)
        self.probes[cid] = probe
        for fd, which in ((out_r, "out"), (rep_r, "report")):
            os.set_blocking(fd, False)
            self.sel.register(fd, selectors.EVENT_READ, ("probe", probe, which))

    def _signal(self, probe: Probe, signum: int) -> None:
        try:
            os.kill(probe.proc.pid, signum)
        except ProcessLookupError:
            pass

    @logged
    def on_ready(self, probe: Probe, which: str) -> None:
        """Output or the report of a probe is readable."""
        if which == "out":
            self._read_output(probe)
            return
        try:
            data = os.read(probe.report_fd, 4096)
        except BlockingIOError:
            return
        if data:
            probe.report += data
            return
        self._reap(probe)

    def _read_output(self, probe: Probe) -> bool:
        """Read what is there; False at the end (the pipe is then closed)."""
        while probe.out_fd >= 0:
            try:
                data = os.read(probe.out_fd, 65536)
            except BlockingIOError:
                return True
            if not data:
                self.sel.unregister(probe.out_fd)
                os.close(probe.out_fd)
                probe.out_fd = -1
                return False
            room = health.MAX_OUTPUT - len(probe.output)
            if len(data) > room:
                probe.truncated = True
            probe.output += data[:max(0, room)]
        return False

    def _reap(self, probe: Probe) -> None:
        """The probe has exited (its report pipe closed): its result."""
        import json

        self.sel.unregister(probe.report_fd)
        os.close(probe.report_fd)
        self._read_output(probe)
        if probe.out_fd >= 0:  # a process the check left behind holds the pipe: let go
            self.sel.unregister(probe.out_fd)
            os.close(probe.out_fd)
            probe.out_fd = -1
        try:
            probe.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            probe.proc.kill()
            probe.proc.wait()
        self.dying.discard(probe)
        if self.probes.get(probe.cid) is probe:
            del self.probes[probe.cid]
        if probe.cancelled or probe.cid not in self.watches:
            return
        try:
            report = json.loads(probe.report.decode() or "{}")
        except ValueError:
            report = {}
        w = self.watches[probe.cid]
        output = health.cap_output(bytes(probe.output), probe.truncated)
        if report.get("paused"):
            self.timers.set(probe.cid, self._interval(probe.cid))
            return
        if "exit_code" in report:
            code = int(report["exit_code"])
        elif report.get("timeout"):
            from ..healthcheck import go_duration

            timeout = go_duration(setting(w.config, "Timeout"))
            code, output = -1, (f"Health check exceeded timeout ({timeout}): {output}"
                                if output else f"Health check exceeded timeout ({timeout})")
        elif "error" in report:
            code, output = -1, report["error"]
        else:  # killed: past its bound
            code, output = -1, (f"timed out starting health check for container "
                                f"{probe.cid}")
        self._finish_result(probe.cid, health.Result(probe.start_ns, time.time_ns(), code,
                                                     output))

    def _finish_result(self, cid: str, result: health.Result) -> None:
        w = self.watches.get(cid)
        if w is None:
            return
        health.record(self.engine, cid, result, setting(w.config, "Retries"),
                      setting(w.config, "StartPeriod"), w.started_ns)
        self.timers.set(cid, self._interval(cid))
