"""The CRI face of minirun: a gRPC server kubelet talks to (see server.py)."""
