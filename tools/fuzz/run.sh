#!/usr/bin/env bash
# Long fuzz run of every parser harness under atheris: see tools/fuzz/README.md.
#   tools/fuzz/run.sh --minutes 10 [--target NAME] [--engine auto|atheris|mutate] [--json]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
python="${TCU_PYTHON:-$repo/.venv/bin/python}"
# atheris is the project's "fuzz" extra; install it on first use.
"$python" -c "import atheris" 2>/dev/null || "$python" -m pip install --quiet "atheris>=2.3" || true
exec "$python" "$here/run.py" "$@"
