"""minirun-oci: the runc-compatible command line. It parses, calls minirun.runtime and prints.

argparse rather than click here: click's import alone costs ~35 ms, more than the rest of
a container start, and this command is on every start driven by podman or containerd.

Exit codes: 0 success; 1 any runtime error (as runc); 2 bad usage; `run` in the
foreground exits with the container's status (128+N when killed by signal N).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from . import __version__, OCI_VERSION
from .errors import InvalidArgument, MiniRunError


class _Log:
    """runc's --log/--log-format: errors go to stderr and, if asked, to the log file."""

    def __init__(self) -> None:
        self.path: str | None = None
        self.fmt = "text"
        self.debug = False

    def write(self, level: str, msg: str) -> None:
        if self.path:
            now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            if self.fmt == "json":
                line = json.dumps({"level": level, "msg": msg, "time": now})
            else:
                line = f'time="{now}" level={level} msg="{msg}"'
            try:
                with open(self.path, "a") as f:
                    f.write(line + "\n")
            except OSError:
                pass


LOG = _Log()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="minirun-oci", description="runc-compatible OCI runtime")
    p.add_argument("--version", "-v", action="store_true")
    p.add_argument("--root", default=None, help="state directory (default /run/minirun/oci)")
    p.add_argument("--log", default=None)
    p.add_argument("--log-format", default="text", choices=["text", "json"])
    p.add_argument("--debug", action="store_true")
    p.add_argument("--systemd-cgroup", action="store_true")
    p.add_argument("--criu", default=None, help=argparse.SUPPRESS)
    p.add_argument("--rootless", default=None, help=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="verb")

    s = sub.add_parser("spec", help="write a default config.json")
    s.add_argument("--rootless", action="store_true")
    s.add_argument("--bundle", "-b", default=".")

    for name in ("create", "run"):
        s = sub.add_parser(name)
        s.add_argument("id")
        s.add_argument("--bundle", "-b", default=".")
        s.add_argument("--console-socket", default=None)
        s.add_argument("--pid-file", default=None)
        s.add_argument("--no-pivot", action="store_true")
        s.add_argument("--no-new-keyring", action="store_true")
        s.add_argument("--preserve-fds", type=int, default=0)
        if name == "run":
            s.add_argument("--detach", "-d", action="store_true")
            s.add_argument("--keep", action="store_true")

    for name in ("start", "state", "pause", "resume"):
        s = sub.add_parser(name)
        s.add_argument("id")

    s = sub.add_parser("kill")
    s.add_argument("--all", "-a", action="store_true")
    s.add_argument("id")
    s.add_argument("signal", nargs="?", default="SIGTERM")

    s = sub.add_parser("delete")
    s.add_argument("--force", "-f", action="store_true")
    s.add_argument("id")

    s = sub.add_parser("list")
    s.add_argument("--format", "-f", default="table", choices=["table", "json"])
    s.add_argument("--quiet", "-q", action="store_true")

    sub.add_parser("features")
    return p


def _root(args) -> str:
    from .runtime import default_root

    return os.path.abspath(args.root) if args.root else default_root()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    LOG.path, LOG.fmt, LOG.debug = args.log, args.log_format, args.debug
    if args.version:
        print(f"minirun-oci version {__version__}\nspec: {OCI_VERSION}")
        return 0
    if not args.verb:
        _parser().print_usage(sys.stderr)
        return 2
    try:
        if args.systemd_cgroup:
            raise InvalidArgument("--systemd-cgroup is not supported: minirun manages cgroupfs "
                                  "directly")
        return _dispatch(args) or 0
    except MiniRunError as e:
        msg = str(e)
        LOG.write("error", msg)
        print(f"minirun-oci: {msg}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130


def _dispatch(args) -> int | None:
    verb = args.verb
    if verb == "spec":
        from . import spec

        spec.write_default_spec(args.bundle, rootless=args.rootless)
        return 0
    if verb == "features":
        from . import spec

        print(json.dumps(spec.features(), indent=2))
        return 0

    from . import runtime

    root = _root(args)
    if verb == "create":
        runtime.create(root, args.id, args.bundle, _create_opts(args))
    elif verb == "run":
        return _run(runtime, root, args)
    elif verb == "start":
        runtime.start(root, args.id)
    elif verb == "state":
        print(json.dumps(runtime.Container.load(root, args.id).oci_state(), indent=2))
    elif verb == "kill":
        runtime.kill(root, args.id, runtime.parse_signal(args.signal), args.all)
    elif verb == "delete":
        try:
            runtime.delete(root, args.id, args.force)
        except MiniRunError as e:
            # runc: deleting a missing container with --force is not an error
            if not (args.force and type(e).__name__ == "NotFound"):
                raise
    elif verb == "pause":
        runtime.pause(root, args.id)
    elif verb == "resume":
        runtime.resume(root, args.id)
    elif verb == "list":
        _list(runtime, root, args)
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
    cfg = spec.load_config(os.path.abspath(args.bundle))
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
        if proxy:
            status = proxy.run_until_exit(c)
        else:
            status = runtime.wait_init(c)
    finally:
        if proxy:
            proxy.close()
        if not args.keep:
            runtime.delete(root, args.id, force=True)
    return status


def _list(runtime, root: str, args) -> None:
    containers = runtime.list_containers(root)
    if args.quiet:
        for c in containers:
            print(c.id)
        return
    states = [c.oci_state() for c in containers]
    if args.format == "json":
        print(json.dumps(states))
        return
    rows = [("ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER")]
    rows += [(s["id"], str(s["pid"]), s["status"], s["bundle"], s["created"], s["owner"] or
              _owner()) for s in states]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("   ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())


def _owner() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


if __name__ == "__main__":
    sys.exit(main())
