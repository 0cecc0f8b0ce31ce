"""WADO-RS metadata: each instance's header as DICOM JSON (PS3.18 Annex F), cached.

Only the header is read, up to the pixel data; Pixel Data is then added as a
``BulkDataURI`` (the element header where reading stopped tells its tag and VR),
together with AvailableTransferSyntaxUID (0008,3002) so a viewer knows what
``transfer-syntax=*`` frames will be. Binary values over
:data:`BULK_DATA_THRESHOLD` bytes of base64 become ``BulkDataURI`` s too,
absolute, pointing at the bulkdata route of the instance with the element's path
(``.../bulkdata/00540016/0/00181072`` for an element inside a sequence item).

pydicom's ``dcmread`` + ``Dataset.to_json_dict`` cost about 1 ms an instance, too
slow for a 1,000-instance series (the target is 500 ms cold). Two faster paths
give the very same JSON (a test holds them to it, byte for byte, on every file
pydicom ships):

- :class:`_QuickHeader` walks the bytes of a little-endian file with ``struct``
  and writes JSON directly (about 0.3 ms an instance), giving up on anything
  pydicom would interpret (UN, ambiguous VRs, code extensions...);
- otherwise pydicom reads the header and :func:`dataset_json` converts its raw,
  still undecoded elements itself where it can, handing the rest to pydicom
  element by element.

Two byte-bounded LRU caches keep the results: one per instance (keyed by its
SHA-256, so a replaced instance is a new key) and one per series (keyed by the
series' instance count, newest arrival and highest row id, so a new instance in
a series is a new key). A warm series answer is a dictionary lookup and a write.
"""

from __future__ import annotations

import base64
import gzip
import struct
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, BinaryIO

from pydicom.datadict import DicomDictionary
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset

from api.dicomweb.negotiation import is_compressed
from api.dicomweb.transcode import StoredFile

BULK_DATA_THRESHOLD = 1024  # bytes of base64, as pydicom counts (768 bytes of value)
_INLINE_LIMIT = (BULK_DATA_THRESHOLD // 4) * 3
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_PIXEL_TAGS = {0x7FE00010, 0x7FE00008, 0x7FE00009}
_IMPLICIT, _EXPLICIT = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1"
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT"}
_LONG_VRS.add(b"UV")

_STRINGS = {"AE", "AS", "CS", "DA", "DT", "TM", "UI"}  # default repertoire, split as a whole
_TEXTS = {"SH", "LO", "UC"}  # character set, each value stripped
_SINGLE_TEXTS = {"ST", "LT", "UT"}
_CHARSET_VRS = _TEXTS | _SINGLE_TEXTS | {"PN"}
_BINARY = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}
_STRUCTS = {"US": "H", "SS": "h", "UL": "I", "SL": "i", "FL": "f", "FD": "d", "UV": "Q"}
_STRUCTS["SV"] = "q"
_FAST_VRS = _STRINGS | _TEXTS | _SINGLE_TEXTS | _BINARY | set(_STRUCTS) | {"PN", "IS", "DS"}
_FAST_VRS |= {"AT", "SQ"}

BulkURI = Callable[[str], str]


def instance_json(stored: StoredFile, bulk_base: str) -> dict[str, Any]:
    """The DICOM JSON of one stored instance; bulk data URIs start with ``bulk_base``."""
    result = dataset_json(stored.header, lambda path: f"{bulk_base}/{path}")
    result["00083002"] = {"vr": "UI", "Value": [stored.syntax]}
    if stored.pixel is not None:
        key = f"{stored.pixel.tag:08X}"
        result[key] = {"vr": stored.pixel.vr, "BulkDataURI": f"{bulk_base}/{key}"}
    return dict(sorted(result.items()))


def read_instance_json(fp: BinaryIO, bulk_base: str) -> dict[str, Any]:
    """The DICOM JSON of the stored file open in ``fp`` (closed afterwards).

    The quick reader handles little-endian files whose elements it can decode
    exactly as pydicom would; anything else is read by pydicom.
    """
    with fp:
        quick = _QuickHeader(fp, bulk_base).json()
        if quick is not None:
            return quick
        fp.seek(0)
        with StoredFile(fp) as stored:
            return instance_json(stored, bulk_base)


class _Slow(Exception):
    """Something the quick reader leaves to pydicom."""


class _QuickHeader:
    """Walks a little-endian file's header bytes straight into DICOM JSON.

    pydicom spends most of its time building element objects; this reads each
    element header with ``struct``, turns the value into JSON with
    :func:`_value_json` and stops at the pixel data, whose tag, VR and position it
    notes. It gives up (``json()`` returns ``None``) on anything pydicom would
    interpret: big endian, deflate, UN (pydicom looks the real VR up), implicit
    VR elements missing from the dictionary or with an ambiguous VR, undefined
    lengths outside sequences, text in a character set with code extensions.
    """

    _FIRST_READ = 8 * 1024  # most headers end within 2-4 kB; more is read as needed

    def __init__(self, fp: BinaryIO, bulk_base: str) -> None:
        self.fp = fp
        self.bulk_base = bulk_base
        self.buf = bytearray(fp.read(self._FIRST_READ))
        self.implicit = False
        self.pixel: tuple[int, str] | None = None

    def json(self) -> dict[str, Any] | None:
        try:
            return self._read()
        except (_Slow, struct.error, UnicodeDecodeError, ValueError, LookupError, TypeError):
            return None  # pydicom reads it, carefully

    def _read(self) -> dict[str, Any]:
        self._need(132)
        if self.buf[128:132] != b"DICM":
            raise _Slow("no preamble")
        pos, syntax = 132, ""
        while self._more(pos) and struct.unpack_from("<H", self.buf, pos)[0] == 0x0002:
            tag, _, length, start = self._explicit_header(pos)
            self._need(start + length)
            if tag == 0x00020010:
                syntax = bytes(self.buf[start : start + length]).decode("ascii").rstrip("\0 ")
            pos = start + length
        if syntax == _IMPLICIT:
            self.implicit = True
        elif syntax != _EXPLICIT and not is_compressed(syntax):
            raise _Slow(f"syntax {syntax}")
        result, _ = self._dataset(pos, None, "", "ascii", top=True)
        result["00083002"] = {"vr": "UI", "Value": [syntax]}
        if self.pixel is not None:
            tag, vr = self.pixel
            if vr == "":  # implicit VR: what pydicom makes of "OB or OW"
                bits = result.get("00280100", {}).get("Value", [8])[0]
                vr = "OW" if bits > 8 else "OB"
            key = f"{tag:08X}"
            result[key] = {"vr": vr, "BulkDataURI": f"{self.bulk_base}/{key}"}
        return dict(sorted(result.items()))

    def _dataset(
        self, pos: int, end: int | None, prefix: str, encoding: str | None, top: bool = False
    ) -> tuple[dict[str, Any], int]:
        """Elements from ``pos`` to ``end`` (``None``: an item delimiter or, at the top, EOF)."""
        result: dict[str, Any] = {}
        while (end is None or pos < end) and (not top or self._more(pos)):
            tag, vr, length, start = self._header(pos)
            if tag == _ITEM_END and end is None and not top:
                return result, start
            if tag in (_ITEM, _ITEM_END, _SEQUENCE_END):
                raise _Slow("delimiter out of place")
            if top and tag in _PIXEL_TAGS:
                self.pixel = (tag, "" if self.implicit else vr)
                return result, pos
            key = f"{tag:08X}"
            if vr == "SQ":
                items, pos = self._sequence(start, length, f"{prefix}{key}/", encoding)
                result[key] = {"vr": "SQ", "Value": items}
                continue
            if length == _UNDEFINED or vr not in _FAST_VRS or vr == "UN":
                raise _Slow(f"{key} {vr}")
            self._need(start + length)
            value = bytes(self.buf[start : start + length])
            path = f"{prefix}{key}"
            element = _value_json(
                vr, value, True, encoding, lambda path=path: f"{self.bulk_base}/{path}"
            )
            if element is None:
                raise _Slow(key)
            if tag == 0x00080005:
                encoding = _python_codec(element.get("Value"))
            result[key] = element
            pos = start + length
        return result, pos

    def _sequence(
        self, pos: int, length: int, prefix: str, encoding: str | None
    ) -> tuple[list[dict[str, Any]], int]:
        end = None if length == _UNDEFINED else pos + length
        items: list[dict[str, Any]] = []
        while end is None or pos < end:
            tag, _, item_length, start = self._header(pos)
            if tag == _SEQUENCE_END and end is None:
                return items, start
            if tag != _ITEM:
                raise _Slow("not an item")
            item_end = None if item_length == _UNDEFINED else start + item_length
            item, pos = self._dataset(start, item_end, f"{prefix}{len(items)}/", encoding)
            items.append(item)
        return items, pos

    def _header(self, pos: int) -> tuple[int, str, int, int]:
        """(tag, VR, length, value position) of the element at ``pos``."""
        if not self.implicit:
            return self._explicit_header(pos)
        self._need(pos + 8)
        group, element, length = struct.unpack_from("<HHI", self.buf, pos)
        tag = group << 16 | element
        if group == 0xFFFE:
            return tag, "", length, pos + 8
        entry = DicomDictionary.get(tag)
        if entry is None or entry[0] not in _FAST_VRS:
            raise _Slow(f"{tag:08X}: no single VR in the dictionary")
        return tag, entry[0], length, pos + 8

    def _explicit_header(self, pos: int) -> tuple[int, str, int, int]:
        self._need(pos + 8)
        group, element = struct.unpack_from("<HH", self.buf, pos)
        tag = group << 16 | element
        if group == 0xFFFE:
            return tag, "", struct.unpack_from("<I", self.buf, pos + 4)[0], pos + 8
        vr = bytes(self.buf[pos + 4 : pos + 6])
        if vr in _LONG_VRS:
            self._need(pos + 12)
            return tag, vr.decode(), struct.unpack_from("<I", self.buf, pos + 8)[0], pos + 12
        if not vr.isalpha() or not vr.isupper():
            raise _Slow("not a VR")
        return tag, vr.decode(), struct.unpack_from("<H", self.buf, pos + 6)[0], pos + 8

    def _more(self, pos: int) -> bool:
        if pos < len(self.buf):
            return True
        more = self.fp.read(self._FIRST_READ)
        self.buf += more
        return pos < len(self.buf)

    def _need(self, end: int) -> None:
        while len(self.buf) < end:
            more = self.fp.read(max(self._FIRST_READ, end - len(self.buf)))
            if not more:
                raise _Slow("the file ends early")
            self.buf += more


def dataset_json(
    ds: Dataset, bulk_uri: BulkURI, prefix: str = "", encoding: str | None = "ascii"
) -> dict[str, Any]:
    """``ds.to_json_dict()`` with bulk data URIs from ``bulk_uri(path)``, faster.

    ``encoding`` is the Python codec of the dataset's character set when it is a
    single-byte or UTF-8 one (``None``: leave text that is not ASCII to pydicom).
    """
    if "SpecificCharacterSet" in ds:
        encoding = _python_codec(ds.get("SpecificCharacterSet"))
    result: dict[str, Any] = {}
    for elem in ds.elements():
        key = f"{elem.tag:08X}"
        value = None
        if isinstance(elem, RawDataElement):
            value = _fast(elem, bulk_uri, prefix, key, encoding)
        if value is None:
            value = _converted(ds[elem.tag], bulk_uri, f"{prefix}{key}", encoding)
        result[key] = value
    return result


# Character sets without code extensions that decode with one Python codec.
_CODECS = {"": "ascii", "ISO_IR 6": "ascii", "ISO_IR 192": "utf-8", "ISO_IR 100": "latin_1"}
_CODECS |= {"ISO_IR 101": "iso8859_2", "ISO_IR 109": "iso8859_3", "ISO_IR 110": "iso8859_4"}
_CODECS |= {"ISO_IR 144": "iso_ir_144", "ISO_IR 127": "iso_ir_127", "ISO_IR 126": "iso_ir_126"}
_CODECS |= {"ISO_IR 138": "iso_ir_138", "ISO_IR 148": "iso_ir_148", "ISO_IR 203": "iso8859_15"}


def _python_codec(value: Any) -> str | None:
    if value is None:
        return "ascii"
    terms = list(value) if not isinstance(value, str) else [value]
    if len(terms) != 1:
        return None  # code extensions (ISO 2022): pydicom's business
    return _CODECS.get(str(terms[0]).strip())


def _fast(
    raw: RawDataElement, bulk_uri: BulkURI, prefix: str, key: str, encoding: str | None
) -> dict[str, Any] | None:
    """JSON straight from the raw bytes, or ``None`` to let pydicom decode the element."""
    vr = raw.VR
    if vr is None:
        entry = DicomDictionary.get(raw.tag)
        vr = entry[0] if entry else None
    if vr not in _FAST_VRS or vr in ("SQ", "UN") or raw.length == _UNDEFINED:
        return None  # pydicom parses sequences and gives UN its real VR when it knows it
    return _value_json(
        vr, raw.value or b"", raw.is_little_endian, encoding, lambda: bulk_uri(f"{prefix}{key}")
    )


def _value_json(
    vr: str, value: bytes, little_endian: bool, encoding: str | None, uri: Callable[[], str]
) -> dict[str, Any] | None:
    """The JSON of one non-sequence value as pydicom would make it, or ``None`` if unsure."""
    element: dict[str, Any] = {"vr": vr}
    if not value:
        return element
    if vr in _BINARY:
        if len(value) > _INLINE_LIMIT:
            element["BulkDataURI"] = uri()
        else:
            element["InlineBinary"] = base64.b64encode(value).decode("ascii")
        return element
    if vr in _STRUCTS:
        code = _STRUCTS[vr]
        size = struct.calcsize(code)
        if len(value) % size:
            return None
        endian = "<" if little_endian else ">"
        element["Value"] = list(struct.unpack(f"{endian}{len(value) // size}{code}", value))
        return element
    if vr == "AT":
        if len(value) % 4:
            return None
        endian = "<" if little_endian else ">"
        words = struct.unpack(f"{endian}{len(value) // 2}H", value)
        element["Value"] = [f"{g:04X}{e:04X}" for g, e in zip(words[::2], words[1::2], strict=True)]
        return element
    if value.isascii() and b"\x1b" not in value:
        text = value.decode("ascii")
    elif encoding is not None and encoding != "ascii" and vr in _CHARSET_VRS:
        try:
            text = value.decode(encoding)
        except UnicodeDecodeError:
            return None
    else:
        return None  # another character set: pydicom knows them all
    values = _text_values(vr, text)
    if values is None:
        return None
    if values:
        element["Value"] = values
    return element


def _text_values(vr: str, text: str) -> list[Any] | None:
    if vr in _STRINGS:
        values = text.rstrip(" \x00").split("\\")
        return [] if values == [""] else values
    if vr in _TEXTS:
        values = [v.rstrip("\x00 ") for v in text.split("\\")]
        return [] if values == [""] else values
    if vr in _SINGLE_TEXTS:
        single = text.rstrip("\x00 ")
        return [single] if single else []
    if vr == "PN":
        names = text.rstrip("\x00 ").split("\\")
        if names == [""]:
            return []
        return [_person_name(name) for name in names]
    parts = [p.strip() for p in text.rstrip("\x00 ").split("\\")]
    if parts == [""]:
        return []
    if "" in parts:
        return None
    try:
        if vr == "IS":
            return [int(p) for p in parts]
        return [float(p) for p in parts]  # DS
    except ValueError:
        return None


def _person_name(name: str) -> dict[str, str]:
    groups = name.split("=")
    while len(groups) > 1 and not groups[-1]:
        groups.pop()
    result = {"Alphabetic": groups[0]}
    if len(groups) > 1:
        result["Ideographic"] = groups[1]
    if len(groups) > 2:
        result["Phonetic"] = groups[2]
    return result


def _converted(
    elem: DataElement, bulk_uri: BulkURI, path: str, encoding: str | None
) -> dict[str, Any]:
    """JSON of an element pydicom has decoded; sequences recurse with their item paths."""
    if elem.VR == "SQ":
        items = [
            dataset_json(item, bulk_uri, f"{path}/{index}/", encoding)
            for index, item in enumerate(elem.value)
        ]
        return {"vr": "SQ", "Value": items}
    return elem.to_json_dict(lambda _: bulk_uri(path), BULK_DATA_THRESHOLD)


# --- caches ------------------------------------------------------------------------


class ByteCache:
    """A thread-safe LRU of byte strings, bounded by their total size."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Hashable, bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> bytes | None:
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
            return value

    def put(self, key: Hashable, value: bytes) -> None:
        if len(value) > self.max_bytes // 4:
            return  # one huge answer must not flush everything else
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._size -= len(old)
            self._entries[key] = value
            self._size += len(value)
            while self._size > self.max_bytes and self._entries:
                _, evicted = self._entries.popitem(last=False)
                self._size -= len(evicted)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size(self) -> int:
        return self._size


class MetadataCache:
    """Per-instance JSON fragments and whole series answers (plain and gzipped)."""

    def __init__(self, instance_bytes: int = 128 * 1024**2, series_bytes: int = 128 * 1024**2):
        self.instances = ByteCache(instance_bytes)
        self.series = ByteCache(series_bytes)

    def series_body(self, key: Hashable, gzipped: bool, build: Callable[[], bytes]) -> bytes:
        """A series' JSON array (gzipped if asked), made by ``build`` on a miss."""
        body = self.series.get((key, gzipped))
        if body is not None:
            return body
        plain = self.series.get((key, False))
        if plain is None:
            plain = build()
            self.series.put((key, False), plain)
        if not gzipped:
            return plain
        body = gzip.compress(plain, compresslevel=5)
        self.series.put((key, True), body)
        return body
