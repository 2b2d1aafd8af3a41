"""The model registry, declarative models, generated Triton repositories and the CLI."""

from __future__ import annotations

import numpy as np
import pytest

from mapper.cli.models import main as models_cli
from mapper.faces import registry, runtimes
from mapper.triton.repository import write_repository

from .conftest import ROOT_DIR


def test_committed_model_repository_is_current(tmp_path):
    written = write_repository(tmp_path, list(registry.BUILTIN))
    for path in written:
        committed = ROOT_DIR / "model_repository" / path.relative_to(tmp_path)
        assert committed.read_text() == path.read_text(), (
            f"{committed} is stale: run mapper-models repository"
        )


def test_gpu_variant_uses_native_backends(tmp_path, face_zoo):
    write_repository(tmp_path, list(registry.BUILTIN), gpu=True, weights_dir=face_zoo / "models")
    mfn = (tmp_path / "mobilefacenet-arcface" / "config.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in mfn and "KIND_GPU" in mfn
    onnx = tmp_path / "mobilefacenet-arcface" / "1" / "model.onnx"
    assert onnx.resolve() == (face_zoo / "models" / "mobilefacenet-arcface" / "mobilefacenet.onnx").resolve()
    reid = (tmp_path / "face-reid-retail-0095" / "config.pbtxt").read_text()
    assert 'backend: "openvino"' in reid and (tmp_path / "face-reid-retail-0095" / "1" / "model.xml").exists()
    for python_model in ("dlib-resnet-v1", "sface-2021dec-int8bq", "yunet-2023mar-int8bq"):
        assert 'backend: "python"' in (tmp_path / python_model / "config.pbtxt").read_text()


def test_a_new_onnx_model_is_one_declarative_entry(tmp_path, face_zoo):
    weights = tmp_path / "weights"
    (weights / "my-arcface").mkdir(parents=True)
    (weights / "my-arcface" / "model.onnx").symlink_to(
        face_zoo / "models" / "mobilefacenet-arcface" / "mobilefacenet.onnx"
    )
    sha = registry.get("mobilefacenet-arcface").files[0].sha256
    toml = tmp_path / "registry.toml"
    toml.write_text(
        '[[model]]\nname = "my-arcface"\nruntime = "onnxruntime"\ndim = 128\ninput_size = 112\n'
        'alignment = "arcface"\nmean = 127.5\nstd = 127.5\n'
        f'files = [{{ path = "model.onnx", sha256 = "{sha}" }}]\n'
        'source = "downloaded by the user"\n'
    )
    reg = registry.load(toml)
    assert "my-arcface" in reg and len(reg) == len(registry.BUILTIN) + 1
    run = runtimes.load(reg["my-arcface"], weights)
    x = np.random.default_rng(0).standard_normal((2, 3, 112, 112)).astype(np.float32)
    ref = runtimes.load(registry.get("mobilefacenet-arcface"), face_zoo / "models")(x)
    np.testing.assert_allclose(run(x), ref, rtol=1e-6)
    write_repository(tmp_path / "repo", [reg["my-arcface"]])
    assert 'name: "my-arcface"' in (tmp_path / "repo" / "my-arcface" / "config.pbtxt").read_text()
    toml.write_text(
        '[[model]]\nname = "x"\nruntime = "tensorflow"\ndim = 1\ninput_size = 1\nalignment = "arcface"\n'
    )
    with pytest.raises(ValueError, match="runtime must be one of"):
        registry.load(toml)


def test_cli_lists_and_verifies(capsys, tmp_path, face_zoo):
    assert models_cli(["list"]) == 0
    listed = capsys.readouterr().out
    assert "face-recognition-models==0.3.0" in listed and "sha256" in listed
    assert models_cli(["--weights-dir", str(face_zoo / "models"), "verify"]) == 0
    assert models_cli(["--weights-dir", str(tmp_path), "verify"]) == 1
    assert "missing" in capsys.readouterr().out
    with pytest.raises(registry.UnknownModelError, match="known"):
        registry.get("resnet-9000")
