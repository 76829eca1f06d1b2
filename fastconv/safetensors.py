"""The safetensors format, read and written with NumPy (no dependency): named arrays in one flat file.

Layout: an 8-byte little-endian header length, a JSON header ``{name: {"dtype", "shape", "data_offsets":
[begin, end]}, "__metadata__": {str: str}}`` padded with spaces to a multiple of 8 bytes, then the arrays'
bytes back to back (little-endian, C order). The same file loads in PyTorch (``safetensors.torch``), JAX
and the Hugging Face tools; nothing in it is executed on load, unlike a pickle.
"""
from __future__ import annotations

import json
import os
import struct

import numpy as np

__all__ = ["save_file", "load_file"]

DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
          "I16": np.int16, "I8": np.int8, "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8,
          "BOOL": np.bool_}
CODES = {np.dtype(v): k for k, v in DTYPES.items()}
MAX_HEADER = 100 << 20  # as the reference implementation: a larger header is a corrupt or hostile file


def save_file(arrays, path, metadata=None):
    """Write ``{name: array}`` to ``path`` (float, int and bool arrays; ``metadata``: str -> str)."""
    header, chunks, offset = {}, [], 0
    for name, value in arrays.items():
        if not isinstance(name, str):
            raise TypeError(f"array names must be strings, got {name!r}")
        array = np.ascontiguousarray(value)
        if array.dtype not in CODES:
            raise TypeError(f"{name}: safetensors cannot store dtype {array.dtype}")
        data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": CODES[array.dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for data in chunks:
            f.write(data)


def load_file(path, with_metadata=False):
    """``{name: array}`` from a safetensors file (``bfloat16`` becomes float32); with ``with_metadata``
    also the header's metadata. A ValueError names what is wrong with a malformed file."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < 8:
        raise ValueError(f"{path} is not a safetensors file (too short)")
    (size,) = struct.unpack("<Q", blob[:8])
    if size > min(MAX_HEADER, len(blob) - 8):
        raise ValueError(f"{path} is not a safetensors file (header length {size} out of range)")
    try:
        header = json.loads(blob[8:8 + size])
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not a safetensors file (header is not JSON: {err})") from None
    metadata = header.pop("__metadata__", None) or {}
    data = memoryview(blob)[8 + size:]
    arrays = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        shape = tuple(info["shape"])
        if info["dtype"] == "BF16":  # the upper half of a float32
            raw = np.frombuffer(data[begin:end], dtype="<u2").astype(np.uint32) << 16
            arrays[name] = raw.view(np.float32).reshape(shape)
            continue
        if info["dtype"] not in DTYPES:
            raise ValueError(f"{path}: {name} has dtype {info['dtype']}, which fastconv cannot read")
        dtype = np.dtype(DTYPES[info["dtype"]]).newbyteorder("<")
        if end - begin != int(np.prod(shape)) * dtype.itemsize or end > len(data):
            raise ValueError(f"{path}: {name} has {end - begin} bytes, not those of shape {shape} "
                             f"{info['dtype']}")
        arrays[name] = np.frombuffer(data[begin:end], dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))
    return (arrays, metadata) if with_metadata else arrays
