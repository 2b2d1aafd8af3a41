"""Regenerate mapper_service/gen/ from proto/ (python -m tools.protogen [OUT_DIR]).

A development tool: it lives in the checkout, not in the wheel.

The generated modules are committed; tests/test_protogen.py checks they are current.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO = "facemapper/v1/mapper.proto"


def generate(out: Path) -> list[Path]:
    from grpc_tools import protoc

    out.mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{ROOT / 'proto'}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
    ]
    if protoc.main([*args, str(ROOT / "proto" / PROTO)]) != 0:
        raise RuntimeError("protoc failed")
    files = []
    for name in ("mapper_pb2.py", "mapper_pb2.pyi", "mapper_pb2_grpc.py"):
        generated = out / "facemapper" / "v1" / name
        text = generated.read_text().replace(
            "from facemapper.v1 import mapper_pb2", "from . import mapper_pb2"
        )
        (out / name).write_text(text)
        files.append(out / name)
    for path in sorted((out / "facemapper").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (out / "facemapper").rmdir()
    return files


if __name__ == "__main__":
    for f in generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "mapper_service" / "gen"):
        print(f)
