"""The committed generated gRPC code is what proto/ produces today."""

from __future__ import annotations

from tools.protogen import ROOT, generate


def test_generated_code_is_current(tmp_path):
    for fresh in generate(tmp_path):
        committed = ROOT / "mapper_service" / "gen" / fresh.name
        assert committed.read_text() == fresh.read_text(), (
            f"{committed} is stale: run python -m tools.protogen"
        )


def test_the_proto_map_kinds_are_the_library_kinds():
    """MapKind in the .proto and kinds.REQUESTABLE are one fact written in two languages: a
    kind added to one and not the other fails here, not in a client."""
    from mapper.core.kinds import REQUESTABLE
    from mapper_service.convert import KIND_NAMES

    assert sorted(KIND_NAMES.values()) == sorted(REQUESTABLE)
    assert KIND_NAMES[0] == "any"  # proto3's default value asks for any kind
