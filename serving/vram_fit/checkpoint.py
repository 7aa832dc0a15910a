"""A model folder as the estimate reads it (serving/vram_fit/estimation.py): the safetensors headers
(an 8-byte little-endian length, then that many bytes of JSON; the tensors are never read) and
config.json. Every file is checked against what it claims before a figure is taken from it.
"""
from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

# safetensors' own reader refuses headers over 100 MB (MAX_HEADER_SIZE in its Rust core); a
# length above that is a corrupt or hostile file, and reading it would cost that much memory here.
MAX_HEADER_BYTES = 100_000_000
MAX_SHARDS = 4096

# Bits per element of each safetensors dtype (safetensors' Dtype enum).
DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "I64": 64, "U64": 64, "F64": 64,
    "C64": 64,
}
# What vLLM casts to the serving dtype on load; the rest stays as stored.
CAST_DTYPES = frozenset({"F64", "F32", "F16", "BF16"})


class VramEstimateError(ValueError):
    """The folder cannot be estimated; the message says why and what to fix."""


# --- Weights: safetensors headers ---------------------------------------------------------------------

@dataclass(frozen=True)
class Weights:
    checkpoint_bytes_by_dtype: dict[str, int]  # as the headers say, e.g. {"BF16": 988_000_000}
    cast_elements: int  # elements of float tensors, which vLLM holds in the serving dtype
    kept_bytes: int  # bytes of every other tensor, held as stored
    tensors: int
    files: tuple[str, ...]

    @property
    def checkpoint_bytes(self) -> int:
        return sum(self.checkpoint_bytes_by_dtype.values())

    def served_bytes(self, dtype_bytes: int) -> int:
        return self.cast_elements * dtype_bytes + self.kept_bytes


def read_header(path: Path) -> dict:
    """One safetensors file's header as JSON, after checking it describes the file: tensors of known
    dtypes whose byte ranges match their shapes and lie inside the file. Reads the header only."""
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise VramEstimateError(f"{path.name} is not a safetensors file: it is {size} bytes, shorter than the 8-byte header length.")
            (length,) = struct.unpack("<Q", prefix)
            if length > MAX_HEADER_BYTES:
                raise VramEstimateError(f"{path.name} claims a {length:,}-byte header; safetensors allows at most {MAX_HEADER_BYTES:,}, so the file is corrupt.")
            if length > size - 8:
                raise VramEstimateError(f"{path.name} claims a {length:,}-byte header but the file has only {size - 8:,} bytes after the length: it is truncated or corrupt.")
            raw = handle.read(length)
    except OSError as exc:
        raise VramEstimateError(f"{path.name} cannot be read: {exc.strerror or exc}.") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise VramEstimateError(f"{path.name}'s header is not valid JSON: the file is corrupt.") from None
    if not isinstance(header, dict):
        raise VramEstimateError(f"{path.name}'s header is not a JSON object: the file is corrupt.")
    data_bytes = size - 8 - length
    for name, tensor in header.items():
        if name != "__metadata__":
            _check_tensor(path.name, name, tensor, data_bytes)
    return header


def _check_tensor(file: str, name: str, tensor: object, data_bytes: int) -> None:
    where = f"{file}: tensor {name[:80]!r}"
    if not isinstance(tensor, dict) or tensor.get("dtype") not in DTYPE_BITS:
        dtype = tensor.get("dtype") if isinstance(tensor, dict) else None
        raise VramEstimateError(f"{where} has dtype {dtype!r}, which safetensors does not define.")
    shape, offsets = tensor.get("shape"), tensor.get("data_offsets")
    if not (isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise VramEstimateError(f"{where} has a shape that is not a list of sizes: {shape!r:.80}.")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)):
        raise VramEstimateError(f"{where} has data_offsets that are not [begin, end]: {offsets!r:.80}.")
    begin, end = offsets
    expected = math.ceil(math.prod(shape) * DTYPE_BITS[tensor["dtype"]] / 8)
    if not 0 <= begin <= end <= data_bytes or end - begin != expected:
        raise VramEstimateError(
            f"{where} says bytes {begin}-{end}, but a {tensor['dtype']} tensor of shape {shape} takes {expected:,} bytes "
            f"and the file holds {data_bytes:,}: the file is corrupt or truncated."
        )


def weight_files(folder: Path) -> list[Path]:
    """The checkpoint's safetensors files: the shards model.safetensors.index.json names, else every
    *.safetensors in the folder itself."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map")
        except (OSError, UnicodeDecodeError, ValueError, AttributeError):
            raise VramEstimateError(f"{index.name} is not a JSON object with a weight_map: it is corrupt.") from None
        if not isinstance(weight_map, dict) or not weight_map:
            raise VramEstimateError(f"{index.name} has no weight_map naming the shards.")
        names = sorted({str(name) for name in weight_map.values()})
        if len(names) > MAX_SHARDS:
            raise VramEstimateError(f"{index.name} names {len(names)} shards; at most {MAX_SHARDS} are read.")
        for name in names:
            # A shard is a file beside the index: a path would read outside the model folder.
            if Path(name).name != name or name in ("", ".", ".."):
                raise VramEstimateError(f"{index.name} names the shard {name[:80]!r}, which is not a file name in the model folder.")
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise VramEstimateError(f"{index.name} names {len(missing)} shard(s) the folder lacks, e.g. {missing[0]}: the download is incomplete.")
        return [folder / n for n in names]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise VramEstimateError(f"{folder} has no *.safetensors weights: only safetensors checkpoints are estimated (convert .bin weights with safetensors).")
    return files


def read_weights(folder: Path) -> Weights:
    by_dtype: dict[str, int] = {}
    cast_elements = kept = tensors = 0
    files = weight_files(folder)
    for path in files:
        for name, tensor in read_header(path).items():
            if name == "__metadata__":
                continue
            begin, end = tensor["data_offsets"]
            dtype = tensor["dtype"]
            by_dtype[dtype] = by_dtype.get(dtype, 0) + end - begin
            tensors += 1
            if dtype in CAST_DTYPES:
                cast_elements += math.prod(tensor["shape"])
            else:
                kept += end - begin
    return Weights(dict(sorted(by_dtype.items())), cast_elements, kept, tensors, tuple(p.name for p in files))


# --- config.json --------------------------------------------------------------------------------------

def read_config(folder: Path) -> dict:
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise VramEstimateError(f"{folder} has no config.json: it is not a Hugging Face model folder.") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise VramEstimateError(f"config.json cannot be read as JSON ({type(exc).__name__}): the file is corrupt.") from None
    if not isinstance(config, dict):
        raise VramEstimateError("config.json is not a JSON object.")
    # Multimodal configs keep the language model's figures under text_config.
    if "num_hidden_layers" not in config and isinstance(config.get("text_config"), dict):
        config = {**config, **config["text_config"]}
    return config
