#!/usr/bin/python3
"""Minimal safetensors reader/writer (no dependency besides torch and numpy).

Layout: 8-byte little-endian header length N, N bytes of JSON header padded with
spaces to a multiple of 8, then the data section. Each header entry is
{"dtype", "shape", "data_offsets": [begin, end]} relative to the data section; an
optional "__metadata__" entry maps strings to strings. We write tensors in sorted
name order, contiguous and without gaps, which is what engine/safetensors.h expects.

torch is used for tensors (numpy has no bfloat16); numpy arrays are accepted on save.
"""
import json
import struct

import numpy as np
import torch

# safetensors dtype tag -> (torch dtype, bytes per element)
_DTYPES = {
    "F32": (torch.float32, 4),
    "F16": (torch.float16, 2),
    "BF16": (torch.bfloat16, 2),
    "I32": (torch.int32, 4),
}
_TAG_OF = {td: tag for tag, (td, _) in _DTYPES.items()}


def _as_torch(value):
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, torch.Tensor):
        return value
    raise TypeError("expected a torch tensor or numpy array, got %r" % type(value))


def _to_bytes_view(t):
    """A zero-copy byte view of a contiguous CPU tensor (bf16 via an int16 view)."""
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return memoryview(t.numpy()).cast("B")


def save(path, tensors, metadata=None, cast=None):
    """Writes tensors (name -> torch tensor or numpy array) to path.

    cast, if given, is a torch float dtype that floating tensors are converted to
    while writing, one tensor at a time: converting a multi-GB checkpoint then never
    holds a second full copy in memory.
    """
    names = sorted(tensors)
    header = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for name in names:
        t = _as_torch(tensors[name])
        dtype = cast if (cast is not None and t.is_floating_point()) else t.dtype
        if dtype not in _TAG_OF:
            raise ValueError("%s: unsupported dtype %s" % (name, dtype))
        tag = _TAG_OF[dtype]
        nbytes = t.numel() * _DTYPES[tag][1]
        header[name] = {"dtype": tag, "shape": list(t.shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name in names:
            t = _as_torch(tensors[name])
            if cast is not None and t.is_floating_point():
                t = t.to(cast)
            f.write(_to_bytes_view(t))


def read_header(path):
    """Returns (header dict without __metadata__, metadata dict, data start offset)."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError("%s: too short for a safetensors file" % path)
        (n,) = struct.unpack("<Q", raw)
        header = json.loads(f.read(n).decode("utf-8"))
    metadata = header.pop("__metadata__", None) or {}
    return header, metadata, 8 + n


def load(path, with_metadata=False):
    """Reads every tensor of path into a dict name -> torch tensor (copies, writable).

    With with_metadata=True, returns (tensors, metadata).
    """
    header, metadata, start = read_header(path)
    # A read-only mapping: each tensor is copied out once, never the whole file twice.
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=start)
    out = {}
    for name, entry in header.items():
        tag = entry["dtype"]
        if tag not in _DTYPES:
            raise ValueError("%s: tensor %s has unsupported dtype %s" % (path, name, tag))
        tdtype, size = _DTYPES[tag]
        shape = [int(d) for d in entry["shape"]]
        begin, end = entry["data_offsets"]
        count = int(np.prod(shape, dtype=np.int64))
        if end - begin != count * size or end > len(data) or begin < 0:
            raise ValueError("%s: tensor %s has bad data_offsets %r for shape %r"
                             % (path, name, entry["data_offsets"], shape))
        np_dtype = {"F32": np.float32, "F16": np.float16, "BF16": np.int16,
                    "I32": np.int32}[tag]
        arr = np.array(data[begin:end]).view(np_dtype)
        t = torch.from_numpy(arr)
        if tag == "BF16":
            t = t.view(torch.bfloat16)
        out[name] = t.reshape(shape)
    return (out, metadata) if with_metadata else out
