"""Content negotiation for WADO-RS (PS3.18 §8.7): what an ``Accept`` header allows.

An Accept header is a list of media ranges with parameters and quality values:

    multipart/related; type="application/dicom"; transfer-syntax=*, */*;q=0.1

:func:`parse_accept` turns it into :class:`MediaRange` objects, best first. The
two resource kinds then read it their own way:

- DICOM instances (:func:`dicom_offers`, :func:`choose_syntax`):
  ``multipart/related; type="application/dicom"`` with an optional
  ``transfer-syntax``. None given means Explicit VR Little Endian (the PS3.18
  default); ``*`` means "as stored".
- Pixel data and other bulk data (:func:`pixel_offers`, :func:`choose_pixels`):
  ``application/octet-stream`` for uncompressed bytes, or the media type of a
  compressed syntax (``image/jls``, ``image/jp2``...; PS3.18 Table 8.7.3-5), or
  ``transfer-syntax=*`` for whatever is stored (what OHIF asks for).

Nothing here transcodes into a compressed syntax: what is stored, or
uncompressed, is what can be served.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.uid import UID

from storage.header import is_valid_uid

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
ANY = "*"
OCTET_STREAM = "application/octet-stream"
DICOM = "application/dicom"

# PS3.18 Table 8.7.3-5: the media type of each compressed transfer syntax.
COMPRESSED_MEDIA_TYPES: dict[str, str] = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.4.110": "image/jxl",
    "1.2.840.10008.1.2.4.111": "image/jxl",
    "1.2.840.10008.1.2.4.112": "image/jxl",
    "1.2.840.10008.1.2.4.100": "video/mpeg",
    "1.2.840.10008.1.2.4.101": "video/mpeg",
    "1.2.840.10008.1.2.4.102": "video/mp4",
    "1.2.840.10008.1.2.4.103": "video/mp4",
    "1.2.840.10008.1.2.4.104": "video/mp4",
    "1.2.840.10008.1.2.4.105": "video/mp4",
    "1.2.840.10008.1.2.4.106": "video/mp4",
    "1.2.840.10008.1.2.4.107": "video/H265",
    "1.2.840.10008.1.2.4.108": "video/H265",
}
_IMAGE_RLE_ALIASES = {"image/x-dicom-rle": "image/dicom-rle", "image/x-jls": "image/jls"}


class NegotiationError(ValueError):
    """The Accept header allows nothing this resource can be served as."""


@dataclass(frozen=True)
class MediaRange:
    """One entry of an Accept header; type and parameter names lower-cased."""

    media_type: str
    params: dict[str, str]
    q: float = 1.0

    @property
    def transfer_syntax(self) -> str | None:
        return self.params.get("transfer-syntax")


def parse_accept(header: str | None) -> list[MediaRange]:
    """The media ranges of an Accept header, best first; no header accepts anything.

    Malformed entries are skipped, as are those with ``q=0`` (explicitly refused).
    """
    if header is None or not header.strip():
        return [MediaRange("*/*", {})]
    ranges: list[MediaRange] = []
    for entry in _split_outside_quotes(header, ","):
        fields = _split_outside_quotes(entry, ";")
        media_type = fields[0].strip().lower()
        if media_type.count("/") != 1:
            continue
        params: dict[str, str] = {}
        for field in fields[1:]:
            name, equals, value = field.partition("=")
            if equals:
                params[name.strip().lower()] = value.strip().strip('"').strip()
        try:
            q = float(params.pop("q", "1"))
        except ValueError:
            continue
        if q > 0:
            ranges.append(MediaRange(media_type, params, q))
    ranges.sort(key=lambda r: -r.q)  # stable: equal q keep the client's order
    return ranges


def _split_outside_quotes(text: str, separator: str) -> list[str]:
    parts, current, quoted = [], [], False
    for char in text:
        if char == '"':
            quoted = not quoted
        if char == separator and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [part for part in parts if part.strip()]


def is_compressed(syntax: str) -> bool:
    """Encapsulated pixel data (each frame a compressed bitstream)."""
    return syntax in COMPRESSED_MEDIA_TYPES or (
        is_valid_uid(syntax) and UID(syntax).is_transfer_syntax and UID(syntax).is_encapsulated
    )


def media_type_of(syntax: str) -> str:
    """The media type of a stored syntax's frames (octet-stream when uncompressed)."""
    return COMPRESSED_MEDIA_TYPES.get(syntax, OCTET_STREAM)


# --- DICOM instances -------------------------------------------------------------


@dataclass(frozen=True)
class DicomOffer:
    """One acceptable form of a DICOM instance: a syntax (``*`` = as stored)."""

    syntax: str
    multipart: bool = True


def dicom_offers(ranges: list[MediaRange]) -> list[DicomOffer]:
    """The DICOM forms an Accept header allows; raise if it allows none."""
    offers: list[DicomOffer] = []
    for media in ranges:
        if media.media_type in ("multipart/related", "multipart/*"):
            inner = media.params.get("type", DICOM).lower()
            if inner not in (DICOM, "application/*", "*/*"):
                continue
            offers.append(DicomOffer(_syntax_param(media), multipart=True))
        elif media.media_type == DICOM:
            offers.append(DicomOffer(_syntax_param(media), multipart=False))
        elif media.media_type in ("*/*", "application/*"):
            offers.append(DicomOffer(EXPLICIT_VR_LITTLE_ENDIAN, multipart=True))
    if not offers:
        raise NegotiationError(
            'DICOM instances are served as multipart/related; type="application/dicom" '
            "(with an optional transfer-syntax parameter)"
        )
    return offers


def choose_syntax(offers: list[DicomOffer], stored: str) -> DicomOffer | None:
    """The first offer an instance stored in ``stored`` can be sent in.

    The answer's syntax is either ``stored`` (sent byte for byte) or Explicit VR
    Little Endian (transcoded); ``None`` when neither is acceptable.
    """
    for offer in offers:
        if offer.syntax in (ANY, stored):
            return DicomOffer(stored, offer.multipart)
        if offer.syntax == EXPLICIT_VR_LITTLE_ENDIAN:
            return offer
    return None


def _syntax_param(media: MediaRange) -> str:
    syntax = media.transfer_syntax
    if syntax is None or syntax == "":
        return EXPLICIT_VR_LITTLE_ENDIAN  # PS3.18 §8.7.3: the default of application/dicom
    return syntax


# --- Pixel data and other bulk data ---------------------------------------------


@dataclass(frozen=True)
class PixelOffer:
    """One acceptable form of bulk data: a media type (maybe a wildcard) and a syntax."""

    media_type: str
    syntax: str | None
    multipart: bool


@dataclass(frozen=True)
class PixelChoice:
    """How frames are sent: ``encoded`` = the stored compressed bitstreams."""

    encoded: bool
    media_type: str
    syntax: str
    multipart: bool

    @property
    def content_type(self) -> str:
        return f"{self.media_type}; transfer-syntax={self.syntax}"


UNCOMPRESSED = PixelChoice(False, OCTET_STREAM, EXPLICIT_VR_LITTLE_ENDIAN, True)


def pixel_offers(ranges: list[MediaRange]) -> list[PixelOffer]:
    """The bulk data forms an Accept header allows; raise if it allows none."""
    offers: list[PixelOffer] = []
    for media in ranges:
        if media.media_type in ("multipart/related", "multipart/*"):
            inner = media.params.get("type", OCTET_STREAM).lower()
            offers.append(PixelOffer(_alias(inner), media.transfer_syntax, multipart=True))
        elif media.media_type == "*/*":
            offers.append(PixelOffer("*/*", media.transfer_syntax, multipart=True))
        elif media.media_type.split("/")[0] in ("application", "image", "video"):
            offers.append(PixelOffer(_alias(media.media_type), media.transfer_syntax, False))
    offers = [o for o in offers if o.media_type == "*/*" or _bulk_type(o.media_type)]
    if not offers:
        raise NegotiationError(
            'bulk data is served as multipart/related; type="application/octet-stream" '
            "(uncompressed), or in its stored compressed form with transfer-syntax=*"
        )
    return offers


def choose_pixels(offers: list[PixelOffer], stored: str) -> PixelChoice | None:
    """The first offer frames stored in ``stored`` can be sent as, or ``None``."""
    compressed = is_compressed(stored)
    as_stored = PixelChoice(True, media_type_of(stored), stored, True)
    for offer in offers:
        media, syntax = offer.media_type, offer.syntax
        choice: PixelChoice | None = None
        uncompressed = syntax in (None, "", EXPLICIT_VR_LITTLE_ENDIAN)
        if media in (OCTET_STREAM, "application/*", "*/*"):
            if uncompressed or (not compressed and syntax == ANY):
                choice = UNCOMPRESSED
            elif compressed and syntax in (ANY, stored):
                choice = as_stored
        elif (
            compressed
            and _media_matches(media, as_stored.media_type)
            and syntax in (None, "", ANY, stored)
        ):
            choice = as_stored
        if choice is not None:
            return PixelChoice(choice.encoded, choice.media_type, choice.syntax, offer.multipart)
    return None


def _alias(media_type: str) -> str:
    return _IMAGE_RLE_ALIASES.get(media_type, media_type)


def _bulk_type(media_type: str) -> bool:
    kind = media_type.split("/")[0]
    return media_type in (OCTET_STREAM, "application/*") or kind in ("image", "video")


def _media_matches(wanted: str, actual: str) -> bool:
    if wanted == actual.lower():
        return True
    kind, _, sub = wanted.partition("/")
    return sub == "*" and actual.split("/")[0] == kind


# --- DICOM JSON ------------------------------------------------------------------

_JSON_TYPES = ("application/dicom+json", "application/json", "application/*", "*/*")


def accepts_json(ranges: list[MediaRange]) -> bool:
    return any(media.media_type in _JSON_TYPES for media in ranges)
