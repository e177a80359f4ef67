"""minirun-oci: the runc-compatible command line. It parses, calls minirun.runtime and prints.

A small table-driven parser rather than click or argparse: click's import alone costs
~35 ms and argparse's parser construction ~15 ms, more than the rest of a container start,
and this command is on every start driven by podman or containerd.

Exit codes: 0 success; 1 any runtime error (as runc); 2 bad usage; `run` in the
foreground exits with the container's status (128+N when killed by signal N).

MINIRUN_TRACE=1: when the verb ends, the waterfall of its steps on stderr (and over OTLP
with OTEL_EXPORTER_OTLP_ENDPOINT: minirun/monitor/trace.py); --debug prints each step's
time as it happens.
"""

from __future__ import annotations

import gc
import os
import sys

from . import __version__, OCI_VERSION, trace_requested
from . import runlog
from .errors import InvalidArgument, MiniRunError


# Flags: name -> (aliases, default, kind) where kind is bool, str, int, list (a flag that
# may repeat) or a tuple of choices. Both "--flag value" and "--flag=value" work, and, as
# with runc (urfave/cli), a single dash works for long names too. A positional named
# "*name" takes everything that is left (exec's command); flags stop at the first
# positional for such a verb, as runc's exec needs.
_GLOBAL = {
    "version": (("v",), False, bool), "root": ((), None, str), "log": ((), None, str),
    "log-format": ((), "text", ("text", "json")), "debug": ((), False, bool),
    "systemd-cgroup": ((), False, bool), "criu": ((), None, str), "rootless": ((), None, str),
    "help": (("h",), False, bool),
}
_CREATE = {
    "bundle": (("b",), ".", str), "console-socket": ((), None, str), "pid-file": ((), None, str),
    "no-pivot": ((), False, bool), "no-new-keyring": ((), False, bool),
    "preserve-fds": ((), 0, int),
}
# verb -> (flags, positional names, how many positionals may be left out at the end)
VERBS = {
    "spec": ({"rootless": ((), False, bool), "bundle": (("b",), ".", str)}, [], 0),
    "create": (_CREATE, ["id"], 0),
    "run": ({**_CREATE, "detach": (("d",), False, bool), "keep": ((), False, bool)}, ["id"], 0),
    "start": ({}, ["id"], 0),
    "state": ({}, ["id"], 0),
    "pause": ({}, ["id"], 0),
    "resume": ({}, ["id"], 0),
    "kill": ({"all": (("a",), False, bool)}, ["id", "signal"], 1),
    "delete": ({"force": (("f",), False, bool)}, ["id"], 0),
    "list": ({"format": (("f",), "table", ("table", "json")), "quiet": (("q",), False, bool)},
             [], 0),
    "features": ({}, [], 0),
    "ps": ({"format": (("f",), "table", ("table", "json"))}, ["id", "*ps_args"], 1),
    "update": ({"resources": (("r",), None, str), "cpu-share": (("cpu-shares",), None, str),
                **{name: ((), None, str) for name in (
                    "memory", "memory-reservation", "memory-swap", "kernel-memory",
                    "kernel-memory-tcp", "cpu-period", "cpu-quota", "cpu-rt-period",
                    "cpu-rt-runtime", "cpuset-cpus", "cpuset-mems", "pids-limit",
                    "blkio-weight", "l3-cache-schema", "mem-bw-schema")}},
               ["id"], 0),
    "events": ({"stats": ((), False, bool), "interval": ((), "5s", str)}, ["id"], 0),
    "exec": ({"process": (("p",), None, str), "tty": (("t",), False, bool),
              "console-socket": ((), None, str), "detach": (("d",), False, bool),
              "pid-file": ((), None, str), "cwd": ((), None, str), "env": (("e",), None, list),
              "user": (("u",), None, str), "additional-gids": (("g",), None, list),
              "cap": (("c",), None, list), "no-new-privs": ((), False, bool),
              "preserve-fds": ((), 0, int), "process-label": ((), None, str),
              "apparmor": ((), None, str), "ignore-paused": ((), False, bool),
              "cgroup": ((), None, list)},
             ["id", "*args"], 1),
}
USAGE = ("usage: minirun-oci [--root DIR] [--log FILE] [--log-format text|json] [--debug] "
         "VERB [FLAGS] [ID]\nverbs: " + ", ".join(VERBS))


class UsageError(Exception):
    pass


class Args:
    def __init__(self) -> None:
        self.verb: str | None = None
        self.signal = "SIGTERM"


def _parse_flags(argv: list[str], table: dict, args: Args, stop_at_positional: bool) -> list[str]:
    """Consume flags of `table` from argv into args; return what is left."""
    lookup = {}
    for name, (aliases, default, kind) in table.items():
        setattr(args, name.replace("-", "_"), [] if kind is list else default)
        for key in (name, *aliases):
            lookup[key] = name
    rest = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest += argv[i + 1:]
            break
        if not arg.startswith("-") or arg == "-":
            if stop_at_positional:
                return rest + argv[i:]
            rest.append(arg)
            i += 1
            continue
        key, eq, value = arg.lstrip("-").partition("=")
        name = lookup.get(key)
        if name is None:
            raise UsageError(f"unknown flag {arg!r}")
        kind = table[name][2]
        if kind is bool:
            setattr(args, name.replace("-", "_"),
                    value.lower() not in ("false", "0") if eq else True)
            i += 1
            continue
        if not eq:
            i += 1
            if i >= len(argv):
                raise UsageError(f"flag {arg} needs a value")
            value = argv[i]
        if kind is int:
            try:
                value = int(value)
            except ValueError:
                raise UsageError(f"flag {arg}: {value!r} is not a number") from None
        elif isinstance(kind, tuple) and value not in kind:
            raise UsageError(f"flag {arg}: {value!r} is not one of {', '.join(kind)}")
        if kind is list:
            getattr(args, name.replace("-", "_")).append(value)
        else:
            setattr(args, name.replace("-", "_"), value)
        i += 1
    return rest


def parse_args(argv: list[str]) -> Args:
    args = Args()
    rest = _parse_flags(argv, _GLOBAL, args, stop_at_positional=True)
    if not rest:
        return args
    verb, rest = rest[0], rest[1:]
    if verb not in VERBS:
        raise UsageError(f"unknown verb {verb!r}")
    args.verb = verb
    table, positionals, optional = VERBS[verb]
    args.rootless_spec = False
    if verb == "spec":
        saved = args.rootless
        rest = _parse_flags(rest, table, args, stop_at_positional=False)
        args.rootless_spec, args.rootless = args.rootless, saved
    else:
        variadic = bool(positionals) and positionals[-1].startswith("*")
        rest = _parse_flags(rest, table, args, stop_at_positional=variadic)
    fixed = [p for p in positionals if not p.startswith("*")]
    if positionals and positionals[-1].startswith("*"):
        extra = rest[len(fixed):]
        if extra and extra[0] == "--":
            extra = extra[1:]
        setattr(args, positionals[-1][1:], extra)
        rest = rest[:len(fixed)]
        positionals = fixed
        optional = 0
    if len(rest) > len(positionals) or len(rest) < len(positionals) - optional:
        want = " ".join(f"<{p.lstrip('*')}>" for p in VERBS[verb][1]) or "no arguments"
        raise UsageError(f"{verb}: expects {want}")
    for name, value in zip(positionals, rest):
        setattr(args, name, value)
    return args


def _root(args) -> str:
    from .container import default_root

    return os.path.abspath(args.root) if args.root else default_root()


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
    except UsageError as e:
        print(f"minirun-oci: {e}\n{USAGE}", file=sys.stderr)
        return 2
    if args.log:
        # runc opens its log on every invocation, before the verb runs, so the file
        # exists even when nothing goes wrong (conmon reads it back after each call).
        try:
            runlog.open_log(args.log, json_format=args.log_format == "json")
        except OSError as e:
            print(f"minirun-oci: --log {args.log}: {e.strerror}", file=sys.stderr)
            return 1
    if args.version:
        print(f"minirun-oci version {__version__}\nspec: {OCI_VERSION}")
        return 0
    if args.help or not args.verb:
        print(USAGE, file=sys.stdout if args.help else sys.stderr)
        return 0 if args.help else 2
    if trace_requested():  # the verb's waterfall when it ends
        from .monitor import trace as spans

        cid = getattr(args, "id", None)
        spans.start_root(f"minirun-oci {args.verb}", **({"container.id": cid} if cid else {}))
    try:
        if args.systemd_cgroup:
            raise InvalidArgument("--systemd-cgroup is not supported: minirun manages cgroupfs "
                                  "directly")
        return _dispatch(args) or 0
    except MiniRunError as e:
        msg = str(e)
        runlog.log("error", msg)
        print(f"minirun-oci: {msg}", file=sys.stderr)
        # runc's exec answers 255 when the process could not be started, so that it is
        # not mistaken for the process's own status
        return 255 if args.verb == "exec" else e.exit_code
    except KeyboardInterrupt:
        return 130
    finally:
        spans = sys.modules.get("minirun.monitor.trace")
        if spans is not None:
            spans.finish()


def _dispatch(args) -> int | None:
    verb = args.verb
    if verb == "spec":
        from . import spec

        spec.write_default_spec(args.bundle, rootless=args.rootless_spec)
        return 0
    if verb == "features":
        from . import spec

        import json

        print(json.dumps(spec.features(), indent=2))
        return 0
    if verb in ("ps", "update", "events"):
        from . import ops

        return {"ps": ops.cli_ps, "update": ops.cli_update,
                "events": ops.cli_events}[verb](_root(args), args)

    # The light verbs only need the container's state (minirun.container); create, run
    # and exec bring in the setup code (minirun.runtime, ctypes and all).
    from . import container

    if args.debug:
        container.enable_trace()
    root = _root(args)
    if verb in ("create", "run", "exec"):
        spans = sys.modules.get("minirun.monitor.trace")
        imports = spans.begin("import runtime") if spans else None
        from . import runtime

        runtime.spans.end(imports)

        if verb == "create":
            runtime.create(root, args.id, args.bundle, _create_opts(args))
        elif verb == "run":
            return _run(runtime, root, args)
        else:
            return _exec(runtime, root, args)
    elif verb == "start":
        container.start(root, args.id)
    elif verb == "state":
        import json

        print(json.dumps(container.Container.load(root, args.id).oci_state(), indent=2))
    elif verb == "kill":
        container.kill(root, args.id, container.parse_signal(args.signal), args.all)
    elif verb == "delete":
        try:
            container.delete(root, args.id, args.force)
        except MiniRunError as e:
            # runc: deleting a missing container with --force is not an error
            if not (args.force and type(e).__name__ == "NotFound"):
                raise
    elif verb == "pause":
        container.pause(root, args.id)
    elif verb == "resume":
        container.resume(root, args.id)
    elif verb == "list":
        _list(container, root, args)
    return 0


def _create_opts(args):
    from .runtime import CreateOptions

    return CreateOptions(console_socket=args.console_socket, pid_file=args.pid_file,
                         no_pivot=args.no_pivot, no_new_keyring=args.no_new_keyring,
                         preserve_fds=args.preserve_fds)


def _run(runtime, root: str, args) -> int:
    opts = _create_opts(args)
    if args.detach:
        runtime.create(root, args.id, args.bundle, opts)
        runtime.start(root, args.id)
        return 0
    from . import spec

    proxy = None
    cfg = spec.load_config(os.path.abspath(args.bundle), warn=False)  # create warns
    if (cfg.get("process") or {}).get("terminal") and not args.console_socket:
        from .terminal import TerminalProxy

        proxy = TerminalProxy()
        opts.console_fd = proxy.container_end
    try:
        c = runtime.create(root, args.id, args.bundle, opts)
    except BaseException:
        if proxy:
            proxy.close()
        raise
    try:
        if proxy:
            proxy.receive_master()
        runtime.start(root, args.id)
        runtime.spans.end_root()  # the waterfall is the start's; printed at the exit
        runtime.trace("run: started")
        if proxy:
            status = proxy.run_until_exit(c.pid)
        else:
            status = runtime.wait_init(c)
        runtime.trace("run: container exited")
    finally:
        if proxy:
            proxy.close()
        if not args.keep:
            runtime.delete(root, args.id, force=True)
            runtime.trace("run: deleted")
    return status


def _exec(runtime, root: str, args) -> int:
    from . import execproc

    c = runtime.Container.load(root, args.id)
    process = execproc.build_process(
        c, args.args, process_file=args.process, tty=args.tty, cwd=args.cwd, env=args.env,
        user=args.user, additional_gids=args.additional_gids, caps=args.cap,
        no_new_privs=args.no_new_privs)
    opts = execproc.ExecOptions(console_socket=args.console_socket, pid_file=args.pid_file,
                                detach=args.detach, preserve_fds=args.preserve_fds,
                                ignore_paused=args.ignore_paused, cgroups=args.cgroup)
    return execproc.exec_and_wait(root, args.id, process, opts, terminal_proxy=bool(
        process.get("terminal") and not args.console_socket and not args.detach))


def _list(runtime, root: str, args) -> None:
    containers = runtime.list_containers(root)
    if args.quiet:
        for c in containers:
            print(c.id)
        return
    states = []
    for c in containers:
        state = c.oci_state()
        # runc's owner: who owns the state directory; its key comes last, after the
        # optional annotations
        del state["owner"]
        state["owner"] = _owner(os.path.join(root, c.id))
        states.append(state)
    if args.format == "json":
        import json

        # runc's compact one-line form, and "null" (a nil slice in Go) when there is none
        print(json.dumps(states or None, separators=(",", ":"), ensure_ascii=False))
        return
    rows = [("ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER")]
    rows += [(s["id"], str(s["pid"]), s["status"], s["bundle"], s["created"], s["owner"])
             for s in states]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("   ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())


def _owner(state_dir: str) -> str:
    import pwd

    try:
        uid = os.stat(state_dir).st_uid
    except OSError:
        uid = os.geteuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"#{uid}"  # as runc, for a uid without a name


def main_and_exit() -> None:
    """The fast launcher's entry: exit without the interpreter's teardown."""
    from . import exit_without_teardown

    # A start allocates ~9000 container objects, and the default threshold (700) ran the
    # cyclic collector 13 times, for 31 objects; the forked children went on collecting.
    # perf put gc_collect_main and visit_* at 3-4% of a `run`'s CPU; with the threshold
    # raised, run of /bin/true took 1 to 1.6 ms less CPU and about 5 ms less wall time
    # (40 interleaved runs, twice, load 6). A verb that lives on (run and exec in the
    # foreground, events) still collects, every 100000 allocations.
    gc.set_threshold(100_000)
    exit_without_teardown(main())


if __name__ == "__main__":
    sys.exit(main())
