#!/bin/bash
# Install everything (scripts/install.sh) and run the whole test suite. Run as root.
# Extra arguments go to pytest, e.g. scripts/test.sh -k lifecycle
set -euo pipefail
CHECKOUT=$(cd "$(dirname "$0")/.." && pwd)
"$CHECKOUT/scripts/install.sh"
cd "$CHECKOUT"
set +e
.venv/bin/python -m pytest -ra -p no:cacheprovider "$@"
rc=$?
set -e
# pytest's 5 means no test was collected: that is a failure here, never a pass
[ "$rc" = 5 ] && echo "test.sh: no tests were collected" >&2
exit "$rc"
