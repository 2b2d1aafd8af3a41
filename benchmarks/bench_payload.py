"""Embeddings on the wire: packed float32 ``bytes`` against ``repeated float``.

Encodes and decodes a batch of n x 512 float32 both ways (protobuf's own serialisation),
and prints size and time; the proto's Embeddings message uses the winner.
"""

from __future__ import annotations

import timeit

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from mapper_service import convert
from mapper_service.gen import mapper_pb2 as pb


def repeated_float_message() -> type:
    """A message with one packed ``repeated float`` field, built at run time for comparison."""
    fdp = descriptor_pb2.FileDescriptorProto(name="bench_repeated.proto", package="bench", syntax="proto3")
    msg = fdp.message_type.add(name="Floats")
    msg.field.add(
        name="values",
        number=1,
        type=descriptor_pb2.FieldDescriptorProto.TYPE_FLOAT,
        label=descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED,
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("bench.Floats"))


def best(fn) -> float:
    return min(timeit.repeat(fn, number=1, repeat=7))


def main() -> None:
    Floats = repeated_float_message()
    print(f"{'rows x 512':>11} {'encoding':<15} {'bytes':>10} {'encode ms':>10} {'decode ms':>10}")
    for n in (1, 32, 256, 4096):
        x = np.random.default_rng(0).standard_normal((n, 512)).astype(np.float32)
        packed = convert.from_array(x).SerializeToString()
        rep = Floats(values=x.ravel().tolist()).SerializeToString()
        t_pe = best(lambda: convert.from_array(x).SerializeToString())
        t_pd = best(lambda: convert.to_array(pb.Embeddings.FromString(packed)))
        t_re = best(lambda: Floats(values=x.ravel().tolist()).SerializeToString())
        t_rd = best(lambda: np.asarray(Floats.FromString(rep).values, np.float32).reshape(n, 512))
        print(f"{n:>11} {'bytes (packed)':<15} {len(packed):>10} {t_pe * 1e3:>10.3f} {t_pd * 1e3:>10.3f}")
        print(
            f"{n:>11} {'repeated float':<15} {len(rep):>10} {t_re * 1e3:>10.3f} {t_rd * 1e3:>10.3f}"
            f"   -> bytes is {(t_re + t_rd) / (t_pe + t_pd):.1f}x faster"
        )


if __name__ == "__main__":
    main()
