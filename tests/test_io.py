"""Map files: bit-exact round trips, refusal of corrupt, truncated and tampered files."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from mapper import CanonicalSpace, LinearMap, MLPMap, RotationMap
from mapper.core import mapfile
from mapper.core.mapfile import MapFileError


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((400, 16)) + 1
    Y = X @ rng.standard_normal((16, 12)) + 0.1 * rng.standard_normal((400, 12))
    return X, Y


@pytest.fixture(scope="module")
def fitted(data):
    X, Y = data
    return {
        "linear": LinearMap(source_id="a", target_id="b").fit(X, Y),
        "rotation": RotationMap(source_id="a", target_id="b").fit(X, Y),
        "mlp": MLPMap(hidden=(32,), epochs=20, source_id="a", target_id="b").fit(X, Y),
    }


@pytest.mark.parametrize("kind", ["linear", "rotation", "mlp"])
def test_map_round_trip_is_bit_exact(tmp_path, data, fitted, kind):
    m = fitted[kind]
    path = mapfile.save(m, tmp_path / f"{kind}.safetensors", provenance={"dataset": "unit"})
    loaded = mapfile.load(path)
    assert type(loaded) is type(m)
    assert loaded.get_params() == m.get_params()
    for name, tensor in m._state_tensors().items():  # the stored bytes themselves: exact
        assert np.array_equal(loaded._state_tensors()[name], tensor), name
    # Applying them is BLAS on arrays of another memory layout: kernels may round differently.
    np.testing.assert_allclose(loaded.transform(data[0]), m.transform(data[0]), rtol=1e-6, atol=1e-9)
    meta = mapfile.read_metadata(path.read_bytes())
    assert meta["provenance"] == {"dataset": "unit"}
    entry = meta["maps"][0]
    assert (entry["source_id"], entry["target_id"], entry["d_source"], entry["d_target"]) == (
        "a",
        "b",
        16,
        12,
    )
    assert entry["fit_info"]["n_pairs"] == 400


def test_hub_round_trip(tmp_path, data):
    X, Y = data
    hub = CanonicalSpace().fit({"a": X, "b": Y, "c": Y[:, ::-1] * 2})
    loaded = mapfile.load(mapfile.save(hub, tmp_path / "hub.safetensors"))
    assert isinstance(loaded, CanonicalSpace) and loaded.models_ == ["a", "b", "c"]
    # Same weights, other memory layout: BLAS kernels may differ in the last bits (seen on AMD).
    np.testing.assert_allclose(
        loaded.translate(X, "a", "c"), hub.translate(X, "a", "c"), rtol=1e-6, atol=1e-9
    )


def _tensor_region(blob: bytes) -> int:
    return 8 + struct.unpack("<Q", blob[:8])[0]


def test_flipped_tensor_byte_is_refused(fitted):
    blob = bytearray(mapfile.dumps(fitted["linear"]))
    blob[_tensor_region(blob) + 100] ^= 0x01
    with pytest.raises(MapFileError, match="checksum"):
        mapfile.loads(bytes(blob))


def test_truncated_file_is_refused(tmp_path, fitted):
    blob = mapfile.dumps(fitted["rotation"])
    path = tmp_path / "cut.safetensors"
    for cut in (4, 50, len(blob) - 1):
        path.write_bytes(blob[:cut])
        with pytest.raises(MapFileError, match=str(path)):
            mapfile.load(path)


def test_tampered_metadata_is_refused(fitted):
    blob = mapfile.dumps(fitted["linear"])
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8 : 8 + n])
    meta = json.loads(header["__metadata__"]["mapper"])
    meta["maps"][0]["target_id"] = "someone-else"
    header["__metadata__"]["mapper"] = json.dumps(meta)
    new_header = json.dumps(header).encode()
    new_header += b" " * ((8 - len(new_header) % 8) % 8)
    tampered = struct.pack("<Q", len(new_header)) + new_header + blob[8 + n :]
    with pytest.raises(MapFileError, match="checksum"):
        mapfile.loads(tampered)


def test_other_files_are_refused(tmp_path):
    from safetensors.numpy import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({"w": np.zeros((2, 2))}, plain)
    with pytest.raises(MapFileError, match="not a face-mapper map file"):
        mapfile.load(plain)
    with pytest.raises(MapFileError, match="cannot read"):
        mapfile.load(tmp_path / "missing.safetensors")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\xff" * 64)
    with pytest.raises(MapFileError):
        mapfile.load(garbage)


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path, fitted):
    path = tmp_path / "m.safetensors"
    mapfile.save(fitted["linear"], path)
    mapfile.save(fitted["rotation"], path)
    assert isinstance(mapfile.load(path), RotationMap)
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]
