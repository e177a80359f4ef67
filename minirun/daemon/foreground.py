"""A foreground `minirun run` in the daemon (the client is minirun/client.py).

  CLI -> daemon  {"op": "run", "root", "image", "opts", "console_size", "trace"}
                 opts: RunOptions' fields; console_size: [rows, cols] of the client's
                 terminal, for a -t container; trace (run --trace): the client's span
                 id, for the spans of the prepare and start (minirun/monitor/trace.py)
                 <- {"ok": true, "id", "tty", "stdin", "trace"} + [pty master | stdin pipe]
                    | {"error", "kind"}  (kind: the MiniRunError class, for 125/126/127)
                 then as an attach (server.py): the output as stream messages until the
                 exit status; the client may send {"op": "close_stdin"} and
                 {"op": "kill", "signal"} (a signal it received, for the container)

The container is made and started as for `run -d`: the keeper parents it, the daemon logs
its output. The client is attached before the daemon reads any of that output, so it
gets all of it. When the client goes away (killed, its CI timed out) the container runs
on, as docker's does when its CLI dies; its exit is recorded and `--rm` applied all
the same.

Why the output is relayed rather than written by the daemon to the client's own stdout
and stderr (passed with SCM_RIGHTS): those are the caller's files, often its terminal,
shared with its shell. The daemon would have to make them non-blocking (a flag on the
shared open file: the caller's shell would then get EAGAIN) or risk a stalled reader
stalling every container's logging; and it would keep writing into the caller's terminal
after the client died. The relay costs a copy per chunk and nothing on a run's start
(bench/README.md: `run --rm busybox true`, and 200 MiB through `cat`).
"""

from __future__ import annotations

import contextlib
import os

from ..errors import MiniRunError
from ..monitor import trace as spans


def handle_run(daemon, conn, msg: dict) -> None:
    """Make, start and attach: the reply goes out once the container is started."""
    with spans.serving(msg.get("trace")):
        _handle_run(daemon, conn, msg)


def _handle_run(daemon, conn, msg: dict) -> None:
    from ..engine import RunOptions, check_run_options
    from ..image.store import ImageStore

    engine = daemon.engine
    root = msg.get("root")
    if root and os.path.realpath(root) != os.path.realpath(engine.root):
        raise MiniRunError(f"the minirun daemon on {engine.run_root} serves the root "
                           f"{engine.root}, not {root}: give each root its own run root")
    try:
        opts = RunOptions(**msg["opts"])
    except TypeError as e:
        raise MiniRunError(f"bad run request: {e}") from None
    if opts.detach:
        raise MiniRunError("a foreground run has no -d")
    check_run_options(opts)
    with callers_view(msg.get("env"), msg.get("cwd")):
        cid = engine.prepare(msg["image"], opts)
    try:
        if opts.tty and msg.get("console_size"):
            set_console_size(os.path.join(engine.root, "containers", cid), *msg["console_size"])
        daemon.start(cid, on_started=lambda: attach_starter(daemon, conn, cid))
    except BaseException:
        if engine.get_status_only(cid) is not None:
            engine._remove_everything(cid, ImageStore(engine.root))
        raise


@contextlib.contextmanager
def callers_view(env: dict | None, cwd: str | None):
    """The caller's environment and working directory while its container is prepared,
    as if the client had done it: `-e NAME` takes the caller's value, a relative
    --env-file or seccomp profile is the caller's, MINIRUN_USERNS_RANGE and the like are
    the caller's settings. The daemon serves one request at a time, so swapping its own
    for the request's length is safe; both are put back whatever happens."""
    saved_env = dict(os.environ)
    saved_cwd = os.getcwd()
    try:
        if env is not None:
            os.environ.clear()
            os.environ.update({str(k): str(v) for k, v in env.items()})
        if cwd:
            try:
                os.chdir(cwd)
            except OSError as e:
                raise MiniRunError(f"the caller's directory {cwd}: {e.strerror}") from None
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        os.chdir(saved_cwd)


def set_console_size(bundle: str, rows: int, cols: int) -> None:
    """The client's terminal size for the container's from the start (the runtime sets
    process.consoleSize on the new pty): a command that asks at once must not see 0x0,
    and the client can set the size only once the container has started."""
    import json

    path = os.path.join(bundle, "config.json")
    with open(path) as f:
        cfg = json.load(f)
    cfg["process"]["consoleSize"] = {"height": int(rows), "width": int(cols)}
    with open(path, "w") as f:
        f.write(json.dumps(cfg))


def attach_starter(daemon, conn, cid: str) -> None:
    """The client that started the container, attached with its input (-i) before the
    daemon reads the first of its output."""
    st = daemon.stdio[cid]
    stdin = st.interactive and st.input_fd is not None
    fds = [st.input_fd] if stdin or st.tty else []
    reply = {"ok": True, "id": cid, "tty": st.tty, "stdin": stdin}
    if spans.ON:
        reply["trace"] = spans.take()
    try:
        daemon.add_client(conn, cid, reply, fds)
    except OSError:
        pass  # the client died while we made the container: it runs on, as if detached
