#!/usr/bin/env bash
# Prepare osmo-smdpp (osmocom pySim's minimal SGP.22 SM-DP+, ES9+ over HTTPS) from the snapshot
# in ../shared/third_party/ in a cache folder outside the repository, for the eSIM download tests.
#
#   tools/build_smdpp.sh           # prints the prepared tree (it holds osmo-smdpp.py) as the last line
#
# What it does, once (stamped; concurrent runs wait on a lock):
#   1. unpacks pysim-<commit>.tar.gz into $SMDPP_BUILD_ROOT/pysim-<commit>/ (the commit from the name);
#   2. makes a venv there (venv/) with the PyPI packages osmo-smdpp imports (pySim's own
#      requirements.txt names git URLs; these PyPI releases replace them, see
#      ../shared/third_party/PROVENANCE.md). pyscard is built from source: pySim.filesystem
#      imports smartcard.util, so it needs swig and libpcsclite-dev; the cmd2/smpp packages
#      are imported too (pySim.filesystem, pySim.log) and are installed;
#   3. runs pySim's contrib/generate_smdpp_certs.py, which writes a test certificate set
#      (CI, DPauth, DPpb, DPtls for testsmdpplus1.example.com, EUM, eUICC; NIST and Brainpool)
#      to smdpp-data/generated/. The script hard-codes the DPtls validity 2024-07-09..2025-08-11,
#      expired today: it is run with that one window moved to [now - 1 day, now + 10 years]
#      (its generate_tls_cert wrapped; see below). It also writes the TLS server's PEM and the
#      2048-bit DH parameters osmo-smdpp would otherwise make on its first start.
# Missing system packages are installed with apt-get when run as root; otherwise the script
# prints the exact command and exits 3.
#
# Environment:
#   PYSIM_TARBALL     the source snapshot (default: $TCU_SHARED_DATA/../third_party/pysim-597f1e0.tar.gz,
#                     TCU_SHARED_DATA defaulting to ../shared/data beside the checkout)
#   SMDPP_BUILD_ROOT  where it goes (default: ${XDG_CACHE_HOME:-$HOME/.cache}/tcu)
#   PYTHON            the interpreter for the venv (default: python3)
#
# Exit codes: 0 prepared or found; 2 no source snapshot; 3 system packages missing (not root, or
# apt-get failed); 4 the venv or the certificate set failed (log kept in the build root).
# pySim is GPL-2.0, osmo-smdpp.py AGPL-3.0: it runs as a separate test peer and none of its code
# enters this project.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
shared=${TCU_SHARED_DATA:-$repo/../shared/data}
tarball=${PYSIM_TARBALL:-$shared/../third_party/pysim-597f1e0.tar.gz}
root=${SMDPP_BUILD_ROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/tcu}
python=${PYTHON:-python3}

say() { echo "build_smdpp: $*" >&2; }

if [[ ! -f $tarball ]]; then
    say "no pySim source snapshot at $tarball"
    exit 2
fi
name=$(basename "$tarball" .tar.gz)   # pysim-597f1e0
dest=$root/$name
sha=$(sha256sum "$tarball" | cut -c1-16)
recipe=3  # raise when this script changes what it prepares
stamp=$dest/.done-$sha-r$recipe

if [[ -f $stamp ]]; then
    echo "$dest"
    exit 0
fi

mkdir -p "$root"
exec 9>"$root/.$name.lock"
flock 9
if [[ -f $stamp ]]; then  # another run prepared it while we waited
    echo "$dest"
    exit 0
fi

missing_packages() {
    local missing=()
    command -v swig >/dev/null || missing+=(swig)
    command -v cc >/dev/null || missing+=(gcc libc6-dev)
    [[ -f /usr/include/PCSC/winscard.h ]] || missing+=(libpcsclite-dev)
    "$python" -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
    [[ -f $("$python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')/Python.h ]] ||
        missing+=(python3-dev)
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
        say "missing system packages: $missing; run: sudo apt-get install -y $missing"
        exit 3
    fi
fi

# The PyPI packages osmo-smdpp needs (PROVENANCE.md's list; asn1tools from PyPI replaces osmocom's fork).
# Not installed: smpp.twisted3 (only pySim-smpp2sim.py imports it; it pins
# Twisted 23.10, whose TLS breaks with today's pyOpenSSL: "Context has already been used").
packages=(klein 'twisted[tls]>=24.7' pyosmocom asn1tools cryptography pycryptodomex construct bidict pyyaml
    jsonpath-ng termcolor colorlog packaging pytlv pyserial 'cmd2>=2.6.2,<4' pyscard smpp.pdu3 requests)

log=$root/build-$name.log
say "preparing osmo-smdpp from $tarball in $dest (log: $log)"
start=$(date +%s)
rm -rf "$dest"
mkdir -p "$dest"
if ! {
    tar -xzf "$tarball" -C "$dest" --strip-components=1 &&
        "$python" -m venv "$dest/venv" &&
        "$dest/venv/bin/python" -m pip install --quiet "${packages[@]}" &&
        "$dest/venv/bin/python" - "$dest" <<'EOF'
# Run pySim's own contrib/generate_smdpp_certs.py (its main(), from the tree), with one change:
# it hard-codes the DPtls validity as 2024-07-09 .. 2025-08-11 (expired today), so the TLS
# certificates get a window around now instead (one day back, ten years on). Everything else
# (keys, names, policies, extensions, the other certificates' windows) is the script's.
import datetime as dt
import importlib.util
import os
import sys
from pathlib import Path

os.chdir(sys.argv[1])  # the script writes smdpp-data/generated/ below the working directory

spec = importlib.util.spec_from_file_location("generate_smdpp_certs", "contrib/generate_smdpp_certs.py")
assert spec is not None and spec.loader is not None
gen = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gen)
original = gen.SimplifiedCertificateGenerator.generate_tls_cert
now = dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)

def generate_tls_cert(self, curve_type, subject_cn, dns_name, serial, key_hex, rid_oid, start, end):
    print(f"DPtls {subject_cn} {curve_type}: validity {start}..{end} from the script moved to a window around now")
    return original(self, curve_type, subject_cn, dns_name, serial, key_hex, rid_oid,
                    now - dt.timedelta(days=1), now + dt.timedelta(days=3650))

gen.SimplifiedCertificateGenerator.generate_tls_cert = generate_tls_cert
gen.main()

# The TLS server's PEM and the DH parameters osmo-smdpp would otherwise write on its first start.
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import dh
from cryptography.hazmat.primitives.serialization import Encoding, ParameterFormat
folder = Path("smdpp-data/generated")
for curve in ("NIST", "BRP"):
    der = folder / "DPtls" / f"CERT_S_SM_DP_TLS_{curve}.der"
    der.with_suffix(".pem").write_bytes(x509.load_der_x509_certificate(der.read_bytes()).public_bytes(Encoding.PEM))
params = dh.generate_parameters(generator=2, key_size=2048)
(folder / "dhparam2048.pem").write_bytes(params.parameter_bytes(Encoding.PEM, ParameterFormat.PKCS3))
EOF
} >"$log" 2>&1; then
    say "osmo-smdpp preparation failed; last lines of $log:"
    tail -n 15 "$log" >&2
    exit 4
fi
for f in CertificateIssuer/CERT_CI_ECDSA_NIST.der eUICC/CERT_EUICC_ECDSA_NIST.der eUICC/SK_EUICC_ECDSA_NIST.pem \
    EUM/CERT_EUM_ECDSA_NIST.der DPtls/CERT_S_SM_DP_TLS_NIST.pem DPtls/SK_S_SM_DP_TLS_NIST.pem; do
    if [[ ! -f $dest/smdpp-data/generated/$f ]]; then
        say "generate_smdpp_certs.py did not write smdpp-data/generated/$f"
        exit 4
    fi
done
touch "$stamp"
say "prepared in $(($(date +%s) - start)) s"
echo "$dest"
