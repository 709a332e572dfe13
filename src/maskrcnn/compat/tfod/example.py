"""``tf.train.Example`` messages without TensorFlow: the protobuf classes built from a descriptor
defined here (no generated ``_pb2`` files, no ``protoc``), in a private descriptor pool.

The messages (``tensorflow/core/example/{example,feature}.proto``)::

    message BytesList { repeated bytes value = 1; }
    message FloatList { repeated float value = 1 [packed = true]; }
    message Int64List { repeated int64 value = 1 [packed = true]; }
    message Feature { oneof kind { BytesList bytes_list = 1; FloatList float_list = 2; Int64List int64_list = 3; } }
    message Features { map<string, Feature> feature = 1; }
    message Example { Features features = 1; }

:func:`decode_example` gives ``{feature name: list of bytes | float | int}``;
:func:`encode_example` writes one (tests, and anyone writing TFRecords for TF users).
Needs the ``protobuf`` package (``pip install 'maskrcnn[tfod]'``).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from ...errors import DataError

__all__ = ["example_class", "decode_example", "encode_example", "ExampleError"]


class ExampleError(ValueError):
    """The bytes are not a ``tf.train.Example`` (the message says why, in a few words)."""


@lru_cache(maxsize=1)
def example_class() -> Any:
    """The ``Example`` message class (built once)."""
    try:
        from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    except ImportError:
        raise DataError("reading TFRecords needs the protobuf package; install it with: pip install 'maskrcnn[tfod]' "
                        "(or pip install protobuf)") from None
    F = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(name="maskrcnn_tf_example.proto", package="tensorflow", syntax="proto3")

    def add(name: str, fields: list[tuple[str, int, int, int, str | None]]) -> descriptor_pb2.DescriptorProto:
        msg = fdp.message_type.add(name=name)
        for fname, number, ftype, label, type_name in fields:
            f = msg.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                f.type_name = type_name
        return msg

    rep, opt = F.LABEL_REPEATED, F.LABEL_OPTIONAL
    add("BytesList", [("value", 1, F.TYPE_BYTES, rep, None)])
    add("FloatList", [("value", 1, F.TYPE_FLOAT, rep, None)])
    add("Int64List", [("value", 1, F.TYPE_INT64, rep, None)])
    feature = add("Feature", [("bytes_list", 1, F.TYPE_MESSAGE, opt, ".tensorflow.BytesList"),
                              ("float_list", 2, F.TYPE_MESSAGE, opt, ".tensorflow.FloatList"),
                              ("int64_list", 3, F.TYPE_MESSAGE, opt, ".tensorflow.Int64List")])
    feature.oneof_decl.add(name="kind")
    for f in feature.field:
        f.oneof_index = 0
    features = add("Features", [("feature", 1, F.TYPE_MESSAGE, rep, ".tensorflow.Features.FeatureEntry")])
    entry = features.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=F.TYPE_STRING, label=opt)
    entry.field.add(name="value", number=2, type=F.TYPE_MESSAGE, label=opt, type_name=".tensorflow.Feature")
    add("Example", [("features", 1, F.TYPE_MESSAGE, opt, ".tensorflow.Features")])
    pool = descriptor_pool.DescriptorPool()  # private: no clash with TensorFlow's own classes
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.Example"))


def decode_example(data: bytes) -> dict[str, list[Any]]:
    """``{name: values}`` of a serialized ``tf.train.Example``: bytes, float or int lists.

    Raises :class:`ExampleError` when the bytes are not a protobuf message of that shape or it
    has no features (random bytes may parse as an empty message).
    """
    msg = example_class()()  # first: a missing protobuf package is a one-line DataError naming the extra
    from google.protobuf.message import DecodeError

    try:
        msg.ParseFromString(bytes(data))
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise ExampleError(f"not a tf.train.Example ({' '.join(str(exc).split()) or 'protobuf decode error'})") from None
    if not msg.HasField("features") or not len(msg.features.feature):
        raise ExampleError("not a tf.train.Example (no features)")
    out: dict[str, list[Any]] = {}
    for name, feature in msg.features.feature.items():
        kind = feature.WhichOneof("kind")
        out[name] = [] if kind is None else list(getattr(feature, kind).value)
    return out


def encode_example(features: dict[str, list[Any] | Any]) -> bytes:
    """A serialized ``tf.train.Example`` of ``{name: values}``: bytes/str values become a
    ``bytes_list``, floats a ``float_list``, ints an ``int64_list`` (a scalar is a one-value list)."""
    msg = example_class()()
    for name, values in features.items():
        values = values if isinstance(values, (list, tuple)) else [values]
        feature = msg.features.feature[name]
        if values and isinstance(values[0], (bytes, str)):
            feature.bytes_list.value.extend(v.encode() if isinstance(v, str) else v for v in values)
        elif values and isinstance(values[0], float):
            feature.float_list.value.extend(values)
        elif values:
            feature.int64_list.value.extend(int(v) for v in values)
        else:
            feature.bytes_list.SetInParent()
    return msg.SerializeToString()
