"""`minirun`'s entry point, and the thin client of a foreground `minirun run`.

A foreground run is handed to the daemon (started on first need, as for `run -d`): it
resolves the image, makes the snapshot, config and network, and the keeper parents the
container, so the container outlives this client as docker's outlives its CLI. The client
is then an attached client (daemon/foreground.py): the container's output comes back as
stream messages while the daemon also writes it to the container's log; input (-i) goes
to the pty master or stdin pipe the daemon hands over; SIGINT, SIGTERM and the like are
sent on as kill requests; the exit status is the container's, or docker's 125, 126, 127.

Speed: this module imports no click, no engine and no sqlite (`python -X importtime -m
minirun.client run ...`: about 12 ms of imports where the click CLI takes ~60 ms). Anything
it does not recognise (help, an unknown flag, a bad value, `run -d`, another verb) goes to
the click CLI, which gives the usual help or one-line error.
"""

from __future__ import annotations

import os
import sys

from . import trace_requested

# docker's exit statuses for `run`: 125 the engine failed, 126 the command cannot be
# executed, 127 it was not found; otherwise the container's own status.
EXIT_ENGINE, EXIT_CANNOT_EXECUTE, EXIT_NOT_FOUND = 125, 126, 127
EXIT_BY_KIND = {"ExecutableNotFound": EXIT_NOT_FOUND, "NotExecutable": EXIT_CANNOT_EXECUTE}

# `minirun run`'s options as cli_container.run declares them (a test keeps the two equal):
# option -> (RunOptions field, kind): "flag", "value", "int" or "multi" (repeatable).
RUN_OPTIONS: dict[str, tuple[str, str]] = {}
for _names, _field, _kind in (
        (("--root",), "root", "value"), (("-d", "--detach"), "detach", "flag"),
        (("-i", "--interactive"), "interactive", "flag"), (("-t", "--tty"), "tty", "flag"),
        (("--rm",), "remove", "flag"), (("--name",), "name", "value"),
        (("-e", "--env"), "env", "multi"), (("--env-file",), "env_files", "multi"),
        (("-w", "--workdir"), "workdir", "value"), (("-u", "--user"), "user", "value"),
        (("-v", "--volume"), "volumes", "multi"), (("--tmpfs",), "tmpfs", "multi"),
        (("-h", "--hostname"), "hostname", "value"), (("--pids-limit",), "pids_limit", "int"),
        (("--read-only",), "read_only", "flag"), (("--cap-add",), "cap_add", "multi"),
        (("--cap-drop",), "cap_drop", "multi"), (("--privileged",), "privileged", "flag"),
        (("--security-opt",), "security_opt", "multi"), (("--init",), "init", "flag"),
        (("--restart",), "restart", "value"), (("--entrypoint",), "entrypoint", "value"),
        (("--network", "--net"), "network", "value"), (("-p", "--publish"), "publish", "multi"),
        (("-P", "--publish-all"), "publish_all", "flag"), (("--dns",), "dns", "multi"),
        (("--dns-search",), "dns_search", "multi"), (("--dns-option",), "dns_option", "multi"),
        (("--add-host",), "add_host", "multi"), (("--userns",), "userns", "value"),
        (("--log-opt",), "log_opts", "multi"), (("--pull",), "pull", "value"),
        (("--trace",), "trace", "flag")):
    for _name in _names:
        RUN_OPTIONS[_name] = (_field, _kind)
# flags docker reads in ways of their own (runflags: sizes, labels, --mount, ...): a run
# that has one goes to the click CLI, which turns them into RunOptions fields
for _name in ("-m", "--memory", "--memory-swap", "--memory-reservation", "--oom-kill-disable",
              "--cpus", "-c", "--cpu-shares", "--cpuset-cpus", "--device", "--ulimit",
              "--shm-size", "--stop-signal", "--stop-timeout", "--sysctl", "--group-add",
              "--platform", "--pid", "--ipc", "--uts", "--cgroup-parent", "--oom-score-adj",
              "-l", "--label", "--label-file", "--mount", "--health-cmd", "--health-interval",
              "--health-timeout", "--health-retries", "--health-start-period",
              "--health-start-interval", "--no-healthcheck"):
    RUN_OPTIONS[_name] = ("", "click")
RUN_DEFAULTS = {"network": "bridge", "restart": "no", "userns": "host"}
# signals the client passes on to the container (docker's --sig-proxy)
FORWARDED_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2")


def parse_run(args: list[str]) -> tuple[str, dict] | None:
    """`run`'s arguments as (image, options by RunOptions field, plus "root"); None for
    anything the click parser must see (help, an unknown flag, a missing value)."""
    opts: dict = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            i += 1
            break
        if not arg.startswith("-") or arg == "-":
            break
        value = None
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            value = value if eq else None
            names = [name]
        elif arg[:2] in RUN_OPTIONS and RUN_OPTIONS[arg[:2]][1] != "flag" and len(arg) > 2:
            names, value = [arg[:2]], arg[2:]  # -eFOO=bar
        else:
            names = [f"-{c}" for c in arg[1:]]  # -it
        for n, name in enumerate(names):
            if name not in RUN_OPTIONS or RUN_OPTIONS[name][1] == "click":
                return None
            field, kind = RUN_OPTIONS[name]
            if kind == "flag":
                if value is not None:
                    return None
                opts[field] = True
                continue
            if value is None:
                if n != len(names) - 1 or i + 1 >= len(args):
                    return None
                i += 1
                value = args[i]
            if kind == "int":
                try:
                    value = int(value)
                except ValueError:
                    return None
            if kind == "multi":
                opts.setdefault(field, []).append(value)
            else:
                opts[field] = value
        i += 1
    if i >= len(args):
        return None  # no image: click says so
    opts["command"] = args[i + 1:]
    return args[i], opts


def main(argv: list[str] | None = None) -> int:
    """The `minirun` command: a foreground run here, everything else in the click CLI."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv == ["--version"]:  # as click's version_option prints it, without click's 50 ms
        from . import __version__

        print(f"minirun {__version__}")
        return 0
    verb = 2 if argv[:2] == ["container", "run"] else 1 if argv[:1] == ["run"] else 0
    parsed = parse_run(argv[verb:]) if verb else None
    if parsed and parsed[1].get("trace") or \
            trace_requested() and parsed is not None:
        start_trace("run")  # the click CLI's main starts it for the rest
    try:
        if parsed is None or parsed[1].get("detach") or \
                parsed[1].get("restart", "no") != "no" or \
                parsed[1].get("pull", "missing") not in ("missing", "never"):
            from .cli import main as cli_main

            return cli_main(argv)
        image, opts = parsed
        opts.pop("trace", None)
        return run_in_daemon(image, opts)
    finally:
        finish_trace()


def finish_trace() -> None:
    """The waterfall (after the container's own output) and the OTLP export, if tracing."""
    tracing = sys.modules.get("minirun.monitor.trace")
    if tracing is not None:
        tracing.finish()


def start_trace(verb: str) -> None:
    """--trace or MINIRUN_TRACE=1: the verb's spans, printed (and sent over OTLP) at its
    end (minirun/monitor/trace.py; imported only then)."""
    from .monitor import trace as spans

    spans.enable()
    spans.start_root(f"minirun {verb}".strip())


def end_trace(cid: str, image: str) -> None:
    """The run's span ends when its container has started (not when it exits)."""
    tracing = sys.modules.get("minirun.monitor.trace")
    if tracing is not None and tracing.ON:
        tracing.end_root(**{"container.id": cid, "container.image.name": image})


def _trace_parent() -> str | None:
    tracing = sys.modules.get("minirun.monitor.trace")
    return tracing.parent_id() if tracing is not None and tracing.ON else None


def main_and_exit() -> None:
    """The fast launcher's entry (scripts/install.sh): exit without the teardown."""
    from . import exit_without_teardown

    exit_without_teardown(main())


def run_in_daemon(image: str, opts: dict) -> int:
    """A foreground run through the daemon: the container's exit status, or 125/126/127
    with a line on stderr when minirun or the exec fails."""
    import termios
    import tty

    root = opts.pop("root", None) or os.environ.get("MINIRUN_ROOT")
    run_root = os.environ.get("MINIRUN_RUN_ROOT")
    opts = {**RUN_DEFAULTS, **opts}
    saved = None
    if opts.get("tty") and opts.get("interactive") and os.isatty(0):
        # raw at once, and without TCSAFLUSH: what is typed before the container is up
        # stays queued for it (tty.setraw's default flush would drop it)
        saved = termios.tcgetattr(0)
        tty.setraw(0, termios.TCSANOW)
    pull = opts.pop("pull", "missing")
    try:
        try:
            return _run(root, run_root, image, opts, may_pull=pull == "missing")
        except ImageMissing:
            # --pull missing (the default), found out by the daemon: pulling costs the
            # image code's imports, which a run of a present image never pays
            from .cli_pull import ensure_image
            from .errors import MiniRunError

            try:
                ensure_image(root, image, pull)
            except MiniRunError as e:
                return _fail(str(e), EXIT_ENGINE)
            return _run(root, run_root, image, opts, may_pull=False)
    finally:
        if saved is not None:
            termios.tcsetattr(0, termios.TCSADRAIN, saved)


def _run(root: str | None, run_root: str | None, image: str, opts: dict,
         may_pull: bool = False) -> int:
    import signal

    from .daemon import proto

    sock = None
    early: list[int] = []  # signals received before the container was started

    def forward(signum, _frame) -> None:
        if sock is None:
            early.append(signum)
            return
        try:
            proto.send(sock, {"op": "kill", "signal": signum})
        except OSError:
            pass

    for name in FORWARDED_SIGNALS:
        signal.signal(getattr(signal, name), forward)
    try:
        conn = _connect(root, run_root)
        # the caller's environment and directory: what `-e NAME`, a relative --env-file
        # or seccomp profile and MINIRUN_* settings mean is the caller's, not the daemon's
        proto.send(conn, {"op": "run", "root": root, "image": image, "opts": opts,
                          "env": dict(os.environ), "cwd": _cwd(),
                          "console_size": _terminal_size() if opts.get("tty") else None,
                          "trace": _trace_parent()})
        reply, fds = proto.recv(conn)
    except OSError as e:
        return _fail(f"the minirun daemon: {e.strerror or e}", EXIT_ENGINE)
    except Exception as e:  # noqa: BLE001 - MiniRunError from ensure_daemon
        return _fail(str(e), EXIT_ENGINE)
    if reply is None:
        return _fail("the minirun daemon closed the connection", EXIT_ENGINE)
    if "error" in reply:
        if may_pull and reply.get("kind") == "NotFound" and \
                reply["error"].startswith("no such image"):
            conn.close()
            raise ImageMissing(image)
        return _fail(reply["error"], EXIT_BY_KIND.get(reply.get("kind"), EXIT_ENGINE))
    if "trace" in reply:
        from .monitor import trace as spans

        spans.adopt(reply["trace"])
        end_trace(reply.get("id", ""), image)
    conn.settimeout(None)
    sock = conn
    for signum in early:
        forward(signum, None)
    from .terminal import DEFAULT_DETACH_KEYS, AttachSession, parse_detach_keys

    # docker's detach keys work in `run -it` as in attach; without a terminal, no keys
    keys = parse_detach_keys(DEFAULT_DETACH_KEYS) if reply["tty"] and reply["stdin"] else b""
    try:
        return AttachSession(sock, reply["tty"], reply["stdin"], fds[0] if fds else None,
                             keys).run()
    except Exception as e:  # noqa: BLE001 - MiniRunError: the daemon went away
        return _fail(str(e), EXIT_ENGINE)


class ImageMissing(Exception):
    """The daemon has no such image: run_in_daemon pulls it (--pull missing) and retries."""


def _cwd() -> str | None:
    try:
        return os.getcwd()
    except OSError:
        return None  # removed under us: relative paths then fail in the daemon, clearly


def _connect(root: str | None, run_root: str | None):
    """The daemon's socket; the daemon is started (server.ensure_daemon) only when
    nothing answers, so a warm run costs one connect."""
    from .daemon import proto

    path = os.path.join(run_root or "/run/minirun", "minirun.sock")
    try:
        return proto.connect(path, timeout=120)
    except OSError:
        pass
    from .daemon.server import ensure_daemon
    from .engine import Engine

    ensure_daemon(Engine(root=root, run_root=run_root))
    return proto.connect(path, timeout=120)


def _terminal_size() -> list[int] | None:
    for fd in (0, 1):
        try:
            cols, rows = os.get_terminal_size(fd)
            return [rows, cols]
        except OSError:
            continue
    return None


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"minirun: error: {message}\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
