"""The committed generated gRPC code is what proto/ produces today."""

from __future__ import annotations

from service.protogen import ROOT, generate


def test_generated_code_is_current(tmp_path):
    for fresh in generate(tmp_path):
        committed = ROOT / "service" / "gen" / fresh.name
        assert committed.read_text() == fresh.read_text(), (
            f"{committed} is stale: run python -m service.protogen"
        )
