#!/usr/bin/env bash
# Build lpac (estkme-group/lpac, a standard SGP.22 LPA in C) from the snapshot in
# ../shared/third_party/ into a cache folder outside the repository, for the interop tests.
#
#   tools/build_lpac.sh            # prints the path of a runnable lpac as the last line
#
# Idempotent: a finished build (stamped with the tarball's SHA-256) is reused; concurrent
# runs wait on a lock. Builds with cmake, the AT and AT+CSIM APDU drivers on, PC/SC off,
# libcurl (HTTP) and cJSON from the system. Missing build packages are installed with apt-get
# when run as root; otherwise the script prints the exact command and exits 3.
#
# Environment:
#   LPAC_TARBALL      the source snapshot (default: $TCU_SHARED_DATA/../third_party/lpac-8f68d5c.tar.gz,
#                     TCU_SHARED_DATA defaulting to ../shared/data beside the checkout)
#   LPAC_BUILD_ROOT   where builds go (default: ${XDG_CACHE_HOME:-$HOME/.cache}/tcu/lpac)
#
# Exit codes: 0 built or found; 2 no source snapshot; 3 build packages missing (not root, or
# apt-get failed); 4 the build failed (log kept in the build root). lpac is AGPL-3.0/LGPL-2.1:
# it runs as a separate test peer and none of its code enters this project.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
shared=${TCU_SHARED_DATA:-$repo/../shared/data}
tarball=${LPAC_TARBALL:-$shared/../third_party/lpac-8f68d5c.tar.gz}
root=${LPAC_BUILD_ROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/tcu/lpac}

say() { echo "build_lpac: $*" >&2; }

if [[ ! -f $tarball ]]; then
    say "no lpac source snapshot at $tarball"
    exit 2
fi
sha=$(sha256sum "$tarball" | cut -c1-16)
dest=$root/$sha
wrapper=$dest/lpac

if [[ -x $wrapper && -f $dest/.done ]]; then
    echo "$wrapper"
    exit 0
fi

mkdir -p "$root"
exec 9>"$root/.lock"
flock 9
if [[ -x $wrapper && -f $dest/.done ]]; then  # another run built it while we waited
    echo "$wrapper"
    exit 0
fi

missing_packages() {
    local missing=()
    command -v cmake >/dev/null || missing+=(cmake)
    command -v make >/dev/null || missing+=(make)
    command -v cc >/dev/null || missing+=(gcc libc6-dev)
    command -v pkg-config >/dev/null || missing+=(pkg-config)
    if ! command -v pkg-config >/dev/null || ! pkg-config --exists libcurl; then
        missing+=(libcurl4-openssl-dev)
    fi
    if ! command -v pkg-config >/dev/null || ! pkg-config --exists libcjson; then
        missing+=(libcjson-dev)
    fi
    echo "${missing[@]}"
}

missing=$(missing_packages)
if [[ -n $missing ]]; then
    # shellcheck disable=SC2086  # word splitting of the package list is intended
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        say "installing $missing"
        export DEBIAN_FRONTEND=noninteractive
        if ! { apt-get install -y --no-install-recommends $missing >&2 ||
            { apt-get update >&2 && apt-get install -y --no-install-recommends $missing >&2; }; }; then
            say "apt-get install $missing failed"
            exit 3
        fi
    else
        say "missing build packages: $missing; run: sudo apt-get install -y $missing"
        exit 3
    fi
fi

work=$(mktemp -d "$root/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT
log=$root/build-$sha.log
say "building lpac from $tarball in $work (log: $log)"
start=$(date +%s)
if ! {
    tar -xzf "$tarball" -C "$work" --strip-components=1 &&
        cmake -S "$work" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX="$dest/inst" \
            -DUSE_SYSTEM_DEPS=ON -DLPAC_WITH_APDU_PCSC=OFF -DLPAC_WITH_APDU_AT=ON -DLPAC_WITH_HTTP_CURL=ON &&
        cmake --build "$work/build" -j"$(nproc)" &&
        rm -rf "$dest" &&
        cmake --install "$work/build"
} >"$log" 2>&1; then
    say "lpac build failed; last lines of $log:"
    tail -n 15 "$log" >&2
    exit 4
fi
# The install's RPATH names lib/lpac only; the wrapper points the loader at lib/ as well.
cat >"$wrapper" <<EOF
#!/bin/sh
LD_LIBRARY_PATH="$dest/inst/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "$dest/inst/bin/lpac" "\$@"
EOF
chmod +x "$wrapper"
touch "$dest/.done"
say "built in $(($(date +%s) - start)) s"
echo "$wrapper"
