"""A stand-in for the kube-apiserver and kubelet pair, just enough for a real kubectl's
exec, attach and port-forward to reach the streaming server, as they do on a node:

  GET  /api/v1/namespaces/NS/pods/NAME              a Running pod with one container
  POST /api/v1/namespaces/NS/pods/NAME/exec?command=..&stdin=..&stdout=..&stderr=..&tty=..
  POST /api/v1/namespaces/NS/pods/NAME/attach?...
  POST /api/v1/namespaces/NS/pods/NAME/portforward
       -> the streaming server's URL for the request (what kubelet gets from the CRI Exec,
          Attach and PortForward rpcs), and the connection spliced to it byte for byte
          with the client's upgrade headers (kubelet's proxy), so kubectl's SPDY or
          WebSocket speaks to our server itself.

`requests` records (method, path, Upgrade header) of each request.
"""

from __future__ import annotations

import json
import socket
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from minirun.cri.streaming import AttachRequest, ExecRequest, PortForwardRequest


class FakeApiServer:
    def __init__(self, streaming, pods: dict[str, dict]) -> None:
        """pods: name -> {"container": container id, "pod": pod id}."""
        self.streaming = streaming
        self.pods = pods
        self.requests: list[tuple[str, str, str]] = []
        outer = self

        class Handler(_Handler):
            api = outer

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.1,),
                                       daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _resource(name: str, kind: str, verbs: list[str]) -> dict:
    return {"name": name, "singularName": "", "namespaced": True, "kind": kind,
            "verbs": verbs}


DISCOVERY = {
    "/api": {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
        {"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]},
    "/apis": {"kind": "APIGroupList", "apiVersion": "v1", "groups": []},
    "/api/v1": {"kind": "APIResourceList", "groupVersion": "v1", "resources": [
        dict(_resource("pods", "Pod", ["get", "list"]), singularName="pod",
             shortNames=["po"]),
        _resource("pods/exec", "PodExecOptions", ["create", "get"]),
        _resource("pods/attach", "PodAttachOptions", ["create", "get"]),
        _resource("pods/portforward", "PodPortForwardOptions", ["create", "get"])]},
}


def _flag(query: dict, name: str) -> bool:
    return query.get(name, ["false"])[0] in ("true", "1")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    api: FakeApiServer

    def log_message(self, fmt, *args) -> None:
        pass

    def do_GET(self) -> None:
        self.close_connection = True
        u = urllib.parse.urlsplit(self.path)
        self.api.requests.append((self.command, u.path, self.headers.get("Upgrade", "")))
        parts = u.path.strip("/").split("/")
        if u.path in DISCOVERY:  # kubectl's RESTMapper asks first
            return self._json(200, DISCOVERY[u.path])
        if len(parts) < 6 or parts[:3] != ["api", "v1", "namespaces"] or parts[4] != "pods":
            return self._json(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                    "reason": "NotFound", "code": 404})
        ns, name = parts[3], parts[5]
        pod = self.api.pods.get(name)
        if pod is None:
            return self._json(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                    "message": f'pods "{name}" not found',
                                    "reason": "NotFound", "code": 404})
        if len(parts) == 6:
            return self._json(200, {
                "kind": "Pod", "apiVersion": "v1",
                "metadata": {"name": name, "namespace": ns, "uid": pod["pod"]},
                "spec": {"containers": [{"name": "c", "image": "busybox"}]},
                "status": {"phase": "Running",
                           "containerStatuses": [{"name": "c", "ready": True}]}})
        q = urllib.parse.parse_qs(u.query)
        s = self.api.streaming
        sub = parts[6]
        if sub == "exec":
            url = s.get_exec(ExecRequest(pod["container"], q.get("command", []),
                                         _flag(q, "tty"), _flag(q, "stdin"),
                                         _flag(q, "stdout"), _flag(q, "stderr")))
        elif sub == "attach":
            url = s.get_attach(AttachRequest(pod["container"], _flag(q, "tty"),
                                             _flag(q, "stdin"), _flag(q, "stdout"),
                                             _flag(q, "stderr")))
        elif sub == "portforward":
            url = s.get_port_forward(PortForwardRequest(
                pod["pod"], [int(p) for p in q.get("ports", [])]))
        else:
            return self._json(404, {"kind": "Status", "status": "Failure", "code": 404})
        self._splice(url)

    do_POST = do_GET

    def _json(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _splice(self, url: str) -> None:
        """kubelet's proxy: the request again to url, then bytes both ways."""
        u = urllib.parse.urlsplit(url)
        up = socket.create_connection((u.hostname, u.port))
        lines = [f"{self.command} {u.path} HTTP/1.1", f"Host: {u.netloc}"]
        lines += [f"{k}: {v}" for k, v in self.headers.items() if k.lower() != "host"]
        up.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())

        def downstream() -> None:
            try:
                while data := up.recv(65536):
                    self.connection.sendall(data)
            except OSError:
                pass
            try:
                self.connection.shutdown(socket.SHUT_WR)
            except OSError:
                pass

        t = threading.Thread(target=downstream, daemon=True)
        t.start()
        try:
            while data := self.rfile.read1(65536):
                up.sendall(data)
        except OSError:
            pass
        try:
            up.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        t.join()
        up.close()
