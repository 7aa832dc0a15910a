"""A file's md5 the way DVC computes it, and the md5 a `.dvc` file records, so an eval set uploaded
here and a team's `dvc add`-ed copy (and a baseline's `eval_set_dvc_hash`) are compared as equals.

DVC 3 (`.dvc` outs with `hash: md5`) hashes the file's bytes as they are. DVC 2 (no `hash:` key)
hashed text files after turning CRLF into LF ("dos2unix"), so a JSONL saved on Windows has two
md5s. DVC 2's rules are followed to the byte, quirks included, or a legacy hash would not match:
- text or binary is decided once, on the first 512 bytes: no NUL and at most 30 % bytes outside
  printable ASCII and \\n\\r\\t\\f\\b (so UTF-8 heavy in accents can count as binary). DVC 3,
  re-checking a DVC 2 file ("md5-dos2unix"), decides per 1 MiB chunk instead: the two differ only
  for a file whose later chunks look otherwise than its first, which a JSONL eval set does not;
- the file is read in 1 MiB chunks and each chunk is converted alone, so a CRLF split by a chunk
  boundary stays as it is.
"""
from __future__ import annotations

import hashlib
import io
import re
from pathlib import Path
from typing import BinaryIO

import yaml

from serving.spec.parsing import load_yaml, yaml_error_place, yaml_error_problem

CHUNK_SIZE = 2**20  # DVC's LOCAL_CHUNK_SIZE
TEXT_PROBE_SIZE = 512  # DVC's istextfile block
TEXT_CHARS = bytes(range(32, 127)) + b"\n\r\t\f\b"
MD5_RE = re.compile(r"[0-9a-f]{32}")
MAX_DVC_FILE_BYTES = 64 * 1024  # a .dvc file is a few lines; a cap keeps a pasted blob from the YAML parser


class DvcFileError(ValueError):
    """A `.dvc` file this module cannot take an md5 from; the message says what to fix."""


def looks_like_text(block: bytes) -> bool:
    if not block:
        return True  # DVC: an empty file is text
    if b"\x00" in block:
        return False
    return len(block.translate(None, TEXT_CHARS)) / len(block) <= 0.30


def stream_md5(stream: BinaryIO, *, legacy: bool = False) -> str:
    digest = hashlib.md5()
    is_text: bool | None = None
    while chunk := stream.read(CHUNK_SIZE):
        if legacy and is_text is None:
            is_text = looks_like_text(chunk[:TEXT_PROBE_SIZE])
        digest.update(chunk.replace(b"\r\n", b"\n") if legacy and is_text else chunk)
    return digest.hexdigest()


def bytes_md5(data: bytes, *, legacy: bool = False) -> str:
    return stream_md5(io.BytesIO(data), legacy=legacy)


def dvc_md5(path: str | Path, legacy: bool = False) -> str:
    """The md5 DVC 3 (legacy=False) or DVC 2 (legacy=True) records for the file at `path`."""
    with open(path, "rb") as stream:
        return stream_md5(stream, legacy=legacy)


def hash_from_dvc_text(text: str) -> tuple[str, bool]:
    """(md5, legacy) of the one file a `.dvc` file tracks; legacy is True for a DVC 2 file."""
    if len(text.encode("utf-8")) > MAX_DVC_FILE_BYTES:
        raise DvcFileError(f"This is larger than {MAX_DVC_FILE_BYTES // 1024} KiB: a .dvc file is a few lines of YAML.")
    try:
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        raise DvcFileError(f"This is not a .dvc file Gantry can read{yaml_error_place(exc)}: {yaml_error_problem(exc)}.") from None
    except RecursionError:
        raise DvcFileError("This is nested too deeply to be a .dvc file.") from None
    outs = data.get("outs") if isinstance(data, dict) else None
    if not isinstance(outs, list) or len(outs) != 1 or not isinstance(outs[0], dict):
        raise DvcFileError("A .dvc file for an eval set has `outs:` with exactly one entry (md5, path).")
    out = outs[0]
    md5 = str(out.get("md5", ""))
    if md5.endswith(".dir"):
        raise DvcFileError(f"{out.get('path', 'The out')} is a directory in DVC; an eval set is one JSONL file.")
    if not MD5_RE.fullmatch(md5):
        raise DvcFileError("The out's md5 is missing or not 32 hexadecimal digits.")
    hash_name = out.get("hash")
    if hash_name not in (None, "md5"):
        raise DvcFileError(f"The out's hash is {hash_name!r}; Gantry compares md5 (DVC 2, or DVC 3's `hash: md5`).")
    return md5, hash_name is None


def hash_from_dvc_file(path: str | Path) -> tuple[str, bool]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DvcFileError(f"Cannot read {path}: {exc}") from None
    return hash_from_dvc_text(text)


def matches_dvc_file(data: bytes, dvc_text: str) -> tuple[bool, str]:
    """Whether `data` is the file a `.dvc` file tracks, hashed in that file's own DVC mode; and that md5."""
    md5, legacy = hash_from_dvc_text(dvc_text)
    return bytes_md5(data, legacy=legacy) == md5, md5
