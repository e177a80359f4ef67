"""One health check, as a process of its own the daemon starts (daemon/health.py):

    python -m minirun.monitor.probe OCI_ROOT ID TIMEOUT_NS REPORT_FD CMD...

It execs CMD in the container through minirun-oci's exec code (the container's user,
working directory and environment, as docker's health exec), with our stdout and stderr
(the daemon's pipe) as the check's. The timeout counts from the exec's start, as
dockerd's (starting an exec on a loaded host is not the check's time). On the timeout,
or on SIGTERM (the daemon cancels: the container stopped), the check's process group is
killed with SIGKILL and reaped, so no check outlives its turn. Last, one JSON line on
REPORT_FD (the daemon reads it when the fd closes, that is when we exit):

    {"exit_code": N}   the check ended (128+N when killed by signal N)
    {"timeout": true}  it ran past the timeout and was killed
    {"paused": true}   the container is paused: no check (docker runs none then)
    {"error": "..."}   the exec failed (no such command, container gone, ...)

The daemon does not fork this code itself: exec makes the caller a child subreaper and
forks into the container's namespaces, which the daemon's loop must not wait on.
"""

from __future__ import annotations

import json
import os
import select
import signal
import sys
import time


class Cancelled(Exception):
    pass


def _kill_group(pid: int) -> None:
    """The check and what it started (its session: exec made it a session leader)."""
    for kill in (os.killpg, os.kill):
        try:
            kill(pid, signal.SIGKILL)
            return
        except (ProcessLookupError, PermissionError):
            continue


def _exited(pid: int, timeout: float) -> bool:
    """Whether the process ends within the timeout (it is not reaped here)."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:  # a kernel before 5.3: poll
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return True
            time.sleep(0.02)
        return False
    try:
        return bool(select.select([pidfd], [], [], max(0.0, timeout))[0])
    finally:
        os.close(pidfd)


def _wait(pid: int, timeout: float) -> int | None:
    """Its exit code, or None at the timeout (then killed and reaped)."""
    try:
        ended = _exited(pid, timeout)
    except Cancelled:
        _kill_group(pid)
        os.waitpid(pid, 0)
        raise
    if not ended:
        _kill_group(pid)
        os.waitpid(pid, 0)
        return None
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) \
        else 128 + os.WTERMSIG(status)


def run(oci_root: str, cid: str, timeout_ns: int, command: list[str]) -> dict:
    from .. import execproc
    from ..errors import ContainerStateError, MiniRunError
    from ..layout import seccomp_cache_dir
    from ..runtime import Container

    try:
        c = Container.load(oci_root, cid)
        if c.status() == "paused":
            return {"paused": True}
        process = execproc.build_process(c, command)
        # the engine's compiled profiles: the container's own was compiled at its start
        cache = seccomp_cache_dir(c.data["bundle"]) if c.data.get("bundle") else None
        pid = execproc.exec_process(oci_root, cid, process,
                                    execproc.ExecOptions(seccomp_cache=cache))
    except ContainerStateError as e:
        return {"paused": True} if "paused" in str(e) else {"error": str(e)}
    except MiniRunError as e:
        return {"error": str(e)}
    code = _wait(pid, timeout_ns / 1e9)
    return {"timeout": True} if code is None else {"exit_code": code}


def main(argv: list[str]) -> int:
    oci_root, cid, timeout_ns, report_fd, *command = argv
    fd = int(report_fd)
    os.set_inheritable(fd, False)  # the check must not hold it open after we exit

    def cancel(*_):
        raise Cancelled()

    signal.signal(signal.SIGTERM, cancel)
    try:
        report = run(oci_root, cid, int(timeout_ns), command)
    except Cancelled:
        report = {"cancelled": True}
    except Exception as e:  # noqa: BLE001 - reported to the daemon as the check's result
        report = {"error": f"{type(e).__name__}: {e}"}
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        os.write(fd, (json.dumps(report) + "\n").encode())
    except OSError:
        pass  # the daemon that asked is gone
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
