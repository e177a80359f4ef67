#!/bin/sh
# Regenerate minirun/cri/api/api_pb2.py and api_pb2_grpc.py from api.proto.
#
#   scripts/gen-cri-proto.sh            # uses ./.venv/bin/python, else python3
#   PYTHON=/path/to/python scripts/gen-cri-proto.sh
#
# Run it after editing minirun/cri/api/api.proto and check the three files in together.
# grpcio-tools is pinned (installed into the chosen Python if it is missing or another
# version): the gencode it writes checks the runtime at import, api_pb2.py needs
# protobuf >= the "Protobuf Python Version" in its header and api_pb2_grpc.py needs
# grpcio >= its GRPC_GENERATED_VERSION; pyproject.toml's lower bounds follow those two.
# protoc writes `import api_pb2` in the grpc module; it is rewritten to the package path
# so the modules import as minirun.cri.api.api_pb2 / api_pb2_grpc.
set -eu

GRPCIO_TOOLS_VERSION=1.85.4

cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
have=$("$PYTHON" -c 'import importlib.metadata as m; print(m.version("grpcio-tools"))' 2>/dev/null || true)
if [ "$have" != "$GRPCIO_TOOLS_VERSION" ]; then
    "$PYTHON" -m pip install -q "grpcio-tools==$GRPCIO_TOOLS_VERSION"
fi

out=minirun/cri/api
"$PYTHON" -m grpc_tools.protoc -I "$out" --python_out="$out" --grpc_python_out="$out" \
    "$out/api.proto"
sed -i 's/^import api_pb2 as api__pb2$/from minirun.cri.api import api_pb2 as api__pb2/' \
    "$out/api_pb2_grpc.py"
grep -q '^from minirun.cri.api import api_pb2 as api__pb2$' "$out/api_pb2_grpc.py" || {
    echo "gen-cri-proto: the import line of api_pb2_grpc.py was not rewritten" >&2
    exit 1
}
"$PYTHON" -c 'from minirun.cri.api import api_pb2, api_pb2_grpc'
echo "regenerated $out/api_pb2.py and $out/api_pb2_grpc.py (grpcio-tools $GRPCIO_TOOLS_VERSION)"
