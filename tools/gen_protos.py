#!/usr/bin/env python3
"""Generate the Python code for proto/ into tcu/api/v1 (committed).

    python tools/gen_protos.py          # regenerate in place
    python tools/gen_protos.py --check  # exit 1 when the committed code is stale

Produces ``*_pb2.py``, ``*_pb2_grpc.py`` and typed stubs (``*_pb2.pyi`` and
``*_pb2_grpc.pyi`` from mypy-protobuf), so hand-written code is type-checked
against the generated API without type-checking generated code itself.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PACKAGE_DIR = Path("tcu/api/v1")


def generate(out_root: Path) -> list[Path]:
    protos = sorted((PROTO_ROOT / PACKAGE_DIR).glob("*.proto"))
    if not protos:
        raise SystemExit(f"no .proto files under {PROTO_ROOT / PACKAGE_DIR}")
    plugin_dir = Path(sys.executable).parent
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"--python_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--plugin=protoc-gen-mypy={plugin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={plugin_dir / 'protoc-gen-mypy_grpc'}",
        f"--mypy_out={out_root}",
        f"--mypy_grpc_out={out_root}",
        *[str(p.relative_to(PROTO_ROOT)) for p in protos],
    ]
    subprocess.run(cmd, check=True, cwd=ROOT)
    out_dir = out_root / PACKAGE_DIR
    (out_dir / "__init__.py").write_text(
        '"""Generated protobuf and gRPC code. Do not edit: run tools/gen_protos.py."""\n'
    )
    (out_dir / "py.typed").write_text("")
    return sorted(p for p in out_dir.iterdir() if p.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="fail when the committed code differs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        files = generate(Path(tmp))
        target = ROOT / PACKAGE_DIR
        if args.check:
            stale = [
                f.name
                for f in files
                if not (target / f.name).exists() or not filecmp.cmp(f, target / f.name, shallow=False)
            ]
            extra = sorted(
                p.name for p in target.iterdir() if p.is_file() and p.name not in {f.name for f in files}
            )
            if stale or extra:
                print(f"generated code in {PACKAGE_DIR} is stale: {stale + extra}; run tools/gen_protos.py")
                return 1
            print(f"generated code in {PACKAGE_DIR} is up to date ({len(files)} files)")
            return 0
        target.mkdir(parents=True, exist_ok=True)
        for f in files:
            shutil.copyfile(f, target / f.name)
        print(f"wrote {len(files)} files to {PACKAGE_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
