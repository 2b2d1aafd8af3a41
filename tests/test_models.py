"""The model registry, declarative models, generated Triton repositories and the CLI."""

from __future__ import annotations

import numpy as np
import pytest

from mapper.cli.models import main as models_cli
from mapper.errors import WeightsError
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


def native_tensors(model, weights) -> tuple[dict, dict]:
    """({input name: shape}, {output name: shape}) read from the weight file itself."""
    path = str(model.weight_paths(weights)[0])
    if model.runtime == "openvino":
        import openvino as ov

        m = ov.Core().read_model(path)

        def shapes(ports):
            return {
                p.get_any_name(): [d.get_length() if d.is_static else -1 for d in p.get_partial_shape()]
                for p in ports
            }

        return shapes(m.inputs), shapes(m.outputs)
    import onnxruntime as ort

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])

    def shape(v):
        return [d if isinstance(d, int) else -1 for d in v.shape]

    return {i.name: shape(i) for i in sess.get_inputs()}, {o.name: shape(o) for o in sess.get_outputs()}


def test_gpu_variant_matches_each_model_file(tmp_path, face_zoo):
    """Read against Triton's own rules, statically (no GPU here): every config parses as a
    Triton ModelConfig; native models name the tensors their files have, with those shapes;
    each backend gets a device kind it supports; weights are copied in, never linked."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    weights = face_zoo / "models"
    write_repository(tmp_path, list(registry.BUILTIN), gpu=True, weights_dir=weights)
    assert not [p for p in tmp_path.rglob("*") if p.is_symlink()]
    kinds = model_config_pb2.ModelInstanceGroup.Kind
    for model in [*registry.BUILTIN, registry.DETECTOR]:
        text = (tmp_path / model.name / "config.pbtxt").read_text()
        config = text_format.Parse(text, model_config_pb2.ModelConfig())
        (kind,) = {g.kind for g in config.instance_group}
        if config.backend == "python":
            assert kind == kinds.KIND_CPU and (tmp_path / model.name / "1" / "model.py").exists()
            continue
        assert model.runtime in ("onnxruntime", "openvino"), model.name
        if config.backend == "openvino":
            assert kind == kinds.KIND_CPU, "Triton's OpenVINO backend runs on CPU only"
            assert (tmp_path / model.name / "1" / "model.xml").exists()
        else:
            assert config.platform == "onnxruntime_onnx" and kind == kinds.KIND_GPU
        inputs, outputs = native_tensors(model, weights)
        (inp,), (out,) = config.input, config.output
        assert inp.name in inputs and out.name in outputs, (model.name, inputs, outputs)
        file_in, file_out = inputs[inp.name], outputs[out.name]
        assert file_in[0] in (-1, 1) and (file_in[0] == -1 or config.max_batch_size == 1), model.name
        assert [d if d != -1 else e for d, e in zip(file_in[1:], inp.dims, strict=True)] == list(inp.dims)
        assert [d if d != -1 else e for d, e in zip(file_out[1:], out.dims, strict=True)] == list(out.dims)
    for python_model in ("dlib-resnet-v1", "sface-2021dec-int8bq", "yunet-2023mar-int8bq"):
        assert 'backend: "python"' in (tmp_path / python_model / "config.pbtxt").read_text()


def test_sha256_check_refuses_a_corrupted_file(tmp_path, face_zoo):
    model = registry.get("facenet-keras-ms1m")
    (tmp_path / model.name).mkdir()
    data = bytearray((face_zoo / "models" / model.name / model.files[0].path).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / model.name / model.files[0].path).write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        runtimes.load(model, tmp_path)


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
