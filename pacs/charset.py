"""Decoding DICOM text and building accent-insensitive search keys.

DICOM has no single-byte Vietnamese character set, so Vietnamese names arrive as
ISO_IR 192 (UTF-8) or mislabelled: ``ISO IR 192`` without the underscore, or a
declared Latin-1 (ISO_IR 100) that is really UTF-8. Decoding is lenient (PS3.5
§6.1): it never raises, and bytes that are valid UTF-8 under a single-byte label
are read as UTF-8 because real Latin-1 text is almost never valid UTF-8.
"""

from __future__ import annotations

import re
import unicodedata
import warnings

from pydicom.charset import convert_encodings, decode_bytes
from pydicom.dataset import Dataset

# PN component delimiters: '^' between name parts, '=' between representations.
PN_DELIMITERS = {0x5E, 0x3D}
TEXT_DELIMITERS = {0x5C}  # '\' separates values of multi-valued strings

# Letters that Unicode decomposition leaves alone but a search key must fold.
_FOLD_EXTRA = str.maketrans({"đ": "d", "Đ": "D", "ø": "o", "Ø": "O", "ł": "l", "Ł": "L"})

_SINGLE_BYTE_LABELS = {"", "ISO_IR 6", "ISO_IR 100", "ISO 2022 IR 6", "ISO 2022 IR 100"}
_UTF8_LABELS = {"ISO_IR 192", "ISO IR 192", "ISO-IR 192", "ISO_IR192", "UTF-8", "UTF8"}


def character_sets(ds: Dataset) -> list[str]:
    """The dataset's Specific Character Set values, stripped, ``[""]`` when absent."""
    raw = ds.get("SpecificCharacterSet", "")
    values = [raw] if isinstance(raw, str) else list(raw)
    return [str(v).strip().upper() for v in values] or [""]


def charsets_from_raw(value: bytes) -> list[str]:
    """:func:`character_sets` from the raw bytes of Specific Character Set (0008,0005)."""
    return [v.strip().upper() for v in value.decode("ascii", "replace").split("\\")] or [""]


def decode_text(value: bytes, charsets: list[str], *, person_name: bool = False) -> str:
    """Decode the raw bytes of a string element; never raises."""
    if value.isascii() and b"\x1b" not in value:  # ISO 2022 escapes are 7-bit too
        return value.decode("ascii")
    labels = set(charsets)
    if labels & _UTF8_LABELS or (labels <= _SINGLE_BYTE_LABELS and _is_utf8(value)):
        return value.decode("utf-8", errors="replace")
    delimiters = PN_DELIMITERS if person_name else TEXT_DELIMITERS
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return decode_bytes(value, convert_encodings(charsets), delimiters)
        except (LookupError, ValueError):
            return value.decode("latin-1")


def search_key(text: str) -> str:
    """Fold ``text`` for case- and accent-insensitive matching.

    ``Nguyễn^Văn`` and ``NGUYEN^VAN`` give the same key; ``Đặng`` gives ``dang``
    (``đ`` has no Unicode decomposition, so it is folded by hand).
    """
    decomposed = unicodedata.normalize("NFKD", text.translate(_FOLD_EXTRA))
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return stripped.casefold().strip()


NAME_WORD_LENGTH = 64


def name_words(key: str) -> set[str]:
    """The words of a folded name (:func:`search_key`): ``nguyen^van an`` gives
    ``{"nguyen", "van", "an"}``. A fuzzy match (PS3.18 §8.3.4.6) finds a name when
    one of its words starts with what was typed; separators are ``^`` (components),
    ``=`` (representations) and spaces."""
    return {w[:NAME_WORD_LENGTH] for w in re.split(r"[\^= ]+", key) if w}


def _is_utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
