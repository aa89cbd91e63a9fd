"""Regenerate the Python stubs of proto/autoswarm/v1/*.proto (run from anywhere).

    python proto/generate.py          # write the stubs
    python proto/generate.py --check  # exit 1 when the committed stubs are stale
"""

from __future__ import annotations

import argparse
import pathlib
import shutil
import sys
import tempfile

PROTO_ROOT = pathlib.Path(__file__).resolve().parent
PACKAGE_DIR = PROTO_ROOT / "autoswarm" / "v1"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def generate(out_dir: pathlib.Path) -> list[pathlib.Path]:
    """Run protoc (grpcio-tools) over every .proto into out_dir; return the written files."""
    from grpc_tools import protoc

    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PACKAGE_DIR.glob("*.proto"))
    include = pathlib.Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sorted(p for p in (out_dir / "autoswarm" / "v1").iterdir() if p.name.endswith(GENERATED_SUFFIXES))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail when committed stubs differ")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(pathlib.Path(tmp))
        stale = []
        for path in fresh:
            target = PACKAGE_DIR / path.name
            if not target.exists() or target.read_bytes() != path.read_bytes():
                stale.append(path.name)
                if not args.check:
                    shutil.copyfile(path, target)
    if args.check and stale:
        print("stale generated stubs: " + ", ".join(stale) + " (run: python proto/generate.py)")
        return 1
    print("stubs up to date" if not stale else "regenerated: " + ", ".join(stale))
    return 0


if __name__ == "__main__":
    sys.exit(main())
