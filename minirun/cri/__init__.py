"""The CRI face of minirun: a gRPC server kubelet talks to (see server.py).

gRPC's fork support is off in this process, set before grpc is first imported (every
grpc import in minirun goes through this package): with it on, grpc's fork handlers
start its threads again in every forked child, so a child of `minirun cri` (or of any
process that imported grpc) is multithreaded, and the kernel refuses it a new user
namespace (unshare(CLONE_NEWUSER): EINVAL) and more. minirun never uses grpc in a child.
"""

import os

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")
