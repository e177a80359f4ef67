"""The Docker Engine API on a unix socket: a face of the engine, as the CLI and the CRI are.

`minirun system service [--socket PATH]` serves it (server.py); each resource has its own
module here with a ROUTES table (see server.py's docstring for the interface), and the
server finds them itself, so adding a resource is adding a file.
"""

API_VERSION = "1.41"  # what Debian's docker CLI 20.10 and docker-py 5 speak
MIN_API_VERSION = "1.24"
DEFAULT_SOCKET = "/run/minirun/docker.sock"
