"""What openhands-aci's editor asks two packages about a file, ported to the standard library: the encoding to read
and write it with (charset_normalizer) and whether it is binary (binaryornot 0.4.4, which consults chardet 5.x).

Part of the in-container runtime: editor.py uses it, and like the editor it runs with the task image's own python3
(>= 3.8), where neither package can be assumed. Deliberate differences (tests/conformance/test_editor_conformance.py
checks the editor's outputs against openhands-aci's):
- Encoding detection is stdlib-only: BOM -> utf-8-sig / utf-16 / utf-32, valid UTF-8 (first 1 MB) ->
  utf-8, anything else -> latin-1 (lossless). openhands-aci asks charset_normalizer, whose answer for
  non-UTF-8 files is unpredictable (it reads a latin-1 French text as windows-1250), and which also
  adopts an encoding *named* in the first 8 KB (`encoding="latin-1"` in code, `<meta charset=...>`), even
  over valid UTF-8 with few non-ASCII characters. Outputs differ only for files holding (or receiving)
  non-ASCII text: 8 of 5292 .py files in a large sample decode differently.
- binaryornot consults chardet; chardet's verdicts that matter are reproduced for BOMs and for UTF-8
  (its state machine and confidence are ported), not for legacy 8-bit/CJK guesses (0 differences on
  6000 sampled system files).
"""

from __future__ import annotations

import codecs
from pathlib import Path

__all__ = ["detect_encoding", "is_binary", "is_binary_string"]

_ENCODING_SAMPLE_BYTES = 1024 * 1024
_BINARY_CHUNK_BYTES = 1024


# --- binary check (binaryornot 0.4.4 with chardet 5.x, approximated) ----------------------------------

_PRINTABLE_ASCII = b"\n\r\t\f\b" + bytes(range(32, 127))
_PRINTABLE_HIGH_ASCII = bytes(range(127, 256))


# chardet 5's UTF-8 state machine (mbcssm.UTF8_CLS / UTF8_ST / UTF8_CHAR_LEN_TABLE): it rejects some valid
# UTF-8 (e.g. U+10000..U+3FFFF, emoji) and the bytes 0x0e, 0x0f and 0x1b, which matters to the verdict.
_UTF8_CLS = bytes(
    [1] * 14
    + [0, 0]
    + [1] * 11
    + [0]
    + [1] * 4
    + [1] * 96
    + [2, 2, 2, 2, 3, 3, 3, 3]
    + [4] * 24
    + [5] * 32
    + [0, 0]
    + [6] * 30
    + [7]
    + [8] * 12
    + [9]
    + [8, 8]
    + [10]
    + [11] * 7
    + [12, 13, 13, 13, 14, 15, 0, 0]
)
_UTF8_ST = bytes.fromhex(
    "".join(
        "0" + c
        for c in (
            "101111ca9b876543"
            "1111111111111111"
            "2222222222222222"
            "1155551111111111"
            "1115551111111111"
            "1177771111111111"
            "1111771111111111"
            "1199991111111111"
            "1111191111111111"
            "11cccc1111111111"
            "11111c1111111111"
            "11ccc11111111111"
            "1100001111111111"
        )
    )
)
_UTF8_CHAR_LEN = (0, 1, 0, 0, 0, 0, 2, 3, 3, 3, 4, 4, 5, 5, 6, 6)


def _chardet_utf8_confidence(chunk: bytes) -> float:
    """chardet's UTF8Prober confidence for `chunk`, 0.0 when its state machine rejects it."""
    state, char_len, multibyte = 0, 0, 0
    for byte in bytearray(chunk):
        byte_class = _UTF8_CLS[byte]
        if state == 0:
            char_len = _UTF8_CHAR_LEN[byte_class]
        state = _UTF8_ST[state * 16 + byte_class]
        if state == 1:
            return 0.0
        if state == 0 and char_len >= 2:
            multibyte += 1
    if multibyte < 6:
        return 1.0 - 0.99 * 0.5**multibyte
    return 0.99


def _chardet_decodable(chunk: bytes) -> bool:
    """Whether binaryornot would find `chunk` "decodable as unicode": chardet names an encoding other
    than ascii with confidence > 0.9 and the chunk decodes with it. Approximated: BOMs, and chardet's
    UTF-8 prober; its legacy 8-bit and CJK guesses are not modelled (they rarely pass 0.9)."""
    if chunk.startswith(b"\xef\xbb\xbf"):
        encoding = "utf-8-sig"
    elif chunk.startswith((b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff")):
        encoding = "utf-32"
    elif chunk.startswith((b"\xfe\xff\x00\x00", b"\x00\x00\xff\xfe")):
        return False  # chardet: X-ISO-10646-UCS-4-3412 / -2143, which Python cannot decode
    elif chunk.startswith((b"\xff\xfe", b"\xfe\xff")):
        encoding = "utf-16"
    else:
        if not any(b >= 0x80 for b in bytearray(chunk)):
            return False  # chardet: ascii (or a BOM-less UTF-16/32 guess at 0.85)
        if _chardet_utf8_confidence(chunk) <= 0.9:
            return False
        encoding = "utf-8"
    try:
        chunk.decode(encoding)
    except (UnicodeDecodeError, LookupError):
        return False
    return True


def is_binary_string(chunk) -> bool:
    if not chunk:
        return False
    low_chars = chunk.translate(None, _PRINTABLE_ASCII)
    nontext_ratio1 = float(len(low_chars)) / float(len(chunk))
    high_chars = chunk.translate(None, _PRINTABLE_HIGH_ASCII)
    nontext_ratio2 = float(len(high_chars)) / float(len(chunk))
    is_likely_binary = (nontext_ratio1 > 0.3 and nontext_ratio2 < 0.05) or (
        nontext_ratio1 > 0.8 and nontext_ratio2 > 0.8
    )
    decodable = _chardet_decodable(chunk)
    if is_likely_binary:
        return not decodable
    if decodable:
        return False
    return b"\x00" in chunk or b"\xff" in chunk


def is_binary(filename: str) -> bool:
    if filename.endswith(".pyc"):
        return True
    try:
        with open(filename, "rb") as f:
            chunk = f.read(_BINARY_CHUNK_BYTES)
    except OSError:
        return False
    return is_binary_string(chunk)


# --- encoding ----------------------------------------------------------------------------------------


def detect_encoding(path: Path) -> str:
    """The encoding used to read and write an existing file (stdlib stand-in for charset_normalizer); utf-8 for a
    file that does not exist. The caller refuses FIFOs, sockets and devices first: reading one could block."""
    if not path.exists():
        return "utf-8"
    try:
        with open(str(path), "rb") as f:
            sample = f.read(_ENCODING_SAMPLE_BYTES)
    except (OSError, ValueError):
        return "utf-8"  # the caller's own open() reports the problem
    if sample.startswith(b"\xef\xbb\xbf"):
        return "utf-8-sig"
    if sample.startswith((b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff")):
        return "utf-32"
    if sample.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "utf-16"
    try:
        # final=False: a multi-byte character cut at the end of the sample is not an error.
        codecs.getincrementaldecoder("utf-8")().decode(sample, False)
    except UnicodeDecodeError:
        return "latin-1"
    return "utf-8"
