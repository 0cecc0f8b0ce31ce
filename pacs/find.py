"""C-FIND SCP: Patient Root and Study Root Query/Retrieve information models (PS3.4 C.4.1).

The request identifier becomes a :class:`storage.query.Query` and is answered by
the planner QIDO-RS uses, so both doors match the same way (PS3.4 C.2.2.2:
universal, single value, wildcard, list of UIDs, range; person names
case- and accent-insensitive). Matches go out as they come from the database,
one pending response each (PS3.4 C.4.1.2.1), and a C-CANCEL (PS3.7 9.3.2.3)
stops the stream at the next match with status 0xFE00.

Every response identifier says ``SpecificCharacterSet = ISO_IR 192``: names are
kept as Unicode, and only UTF-8 carries every Vietnamese letter (PS3.5 6.1.2.3);
without it workstations show ``?`` for each accented letter.

Keys the index does not hold are returned empty (status 0xFF01, PS3.4 C.4.1.1.3.2)
when they ask only to be returned; matching on one is refused (0xA900) rather than
answered with a broader result than asked for.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import DSfloat
from pynetdicom import evt
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
)

from pacs.access import NOT_AUTHORIZED, Access, Right
from pacs.charset import character_sets, decode_text
from pacs.status import error_comment
from storage import Archive
from storage.query import (
    ATTRIBUTES,
    Level,
    Query,
    QueryError,
    build_statement,
    returned_keywords,
    search,
)

log = logging.getLogger(__name__)

PENDING = 0xFF00
PENDING_UNSUPPORTED_KEYS = 0xFF01  # optional keys not supported for existence / matching
CANCELLED = 0xFE00
IDENTIFIER_MISMATCH = 0xA900
UNABLE_TO_PROCESS = 0xC000
RESPONSE_CHARSET = "ISO_IR 192"

# The levels each information model allows (PS3.4 C.6.1 and C.6.2).
MODEL_LEVELS: dict[str, tuple[Level, ...]] = {
    PatientRootQueryRetrieveInformationModelFind: (
        Level.PATIENT,
        Level.STUDY,
        Level.SERIES,
        Level.IMAGE,
    ),
    StudyRootQueryRetrieveInformationModelFind: (Level.STUDY, Level.SERIES, Level.IMAGE),
}
_DEPTH = {Level.PATIENT: 0, Level.STUDY: 1, Level.SERIES: 2, Level.IMAGE: 3}
_CONTROL_KEYS = {"QueryRetrieveLevel", "SpecificCharacterSet", "RetrieveAETitle"}


class FindError(ValueError):
    """A request identifier the archive refuses; ``status`` is the C-FIND failure."""

    def __init__(self, status: int, comment: str) -> None:
        super().__init__(comment)
        self.status = status


@dataclass
class FindRequest:
    """A C-FIND identifier as a planner query, plus the keys to echo back."""

    query: Query
    returned: list[str] = field(default_factory=list)  # keywords, in request order
    unsupported: list[str] = field(default_factory=list)  # asked for, not in the index


def handle_find(
    event: evt.Event, archive: Archive, access: Access, ae_title: str
) -> Iterator[tuple[int | Dataset, Dataset | None]]:
    """EVT_C_FIND handler: yields ``(status, identifier)`` pairs, one per match."""
    refused = access.refusal(event, Right.QUERY)
    if refused is not None:
        yield _failure(NOT_AUTHORIZED, refused), None
        return
    model = str(event.request.AffectedSOPClassUID)
    try:
        request = parse_identifier(event.identifier, MODEL_LEVELS[model])
        # Bad values raise QueryError here, before any match is sent.
        build_statement(request.query, returned_keywords(request.query))
    except FindError as exc:
        yield _failure(exc.status, str(exc)), None
        return
    except QueryError as exc:
        yield _failure(IDENTIFIER_MISMATCH, str(exc)), None
        return
    except Exception as exc:  # an identifier pydicom cannot decode
        log.warning("undecodable C-FIND identifier: %s", exc)
        yield _failure(UNABLE_TO_PROCESS, f"cannot decode the identifier: {exc}"), None
        return
    pending = PENDING_UNSUPPORTED_KEYS if request.unsupported else PENDING
    level = request.query.level
    with archive.sessions() as session:
        for row in search(session, request.query, batch=256):
            if event.is_cancelled:
                yield CANCELLED, None
                return
            yield pending, response_identifier(row, request, level, ae_title)
    if event.is_cancelled:
        yield CANCELLED, None


def parse_identifier(identifier: Dataset, levels: tuple[Level, ...]) -> FindRequest:
    """The planner query for a C-FIND identifier under an information model.

    Values are decoded from their raw bytes with the identifier's own Specific
    Character Set, leniently (a mislabelled Vietnamese name still matches).
    """
    raw_level = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    try:
        level = Level(raw_level)
    except ValueError:
        raise FindError(
            IDENTIFIER_MISMATCH, f"QueryRetrieveLevel {raw_level!r} is not valid"
        ) from None
    if level not in levels:
        raise FindError(IDENTIFIER_MISMATCH, f"level {level.value} is not in this model")
    charsets = character_sets(identifier)
    request = FindRequest(Query(level=level, with_defaults=False))
    for tag in sorted(identifier.keys()):
        keyword = keyword_for_tag(tag)
        if not keyword or keyword in _CONTROL_KEYS or tag.is_private:
            continue
        value = identifier_text(identifier, tag, charsets)
        attribute = ATTRIBUTES.get(keyword)
        if attribute is None or _DEPTH[attribute.level] > _DEPTH[level]:
            if value.strip("*"):
                raise FindError(IDENTIFIER_MISMATCH, f"cannot match on {keyword}")
            request.unsupported.append(keyword)
            request.returned.append(keyword)
            continue
        request.returned.append(keyword)
        request.query.match[keyword] = "" if value == "*" else value
    return request


def response_identifier(
    row: dict[str, Any], request: FindRequest, level: Level, ae_title: str
) -> Dataset:
    """One pending response's identifier: the requested keys with the match's values."""
    ds = Dataset()
    ds.SpecificCharacterSet = RESPONSE_CHARSET
    ds.QueryRetrieveLevel = level.value
    ds.RetrieveAETitle = ae_title
    for keyword in request.returned:
        value = row.get(keyword)
        setattr(ds, keyword, _dicom_value(keyword, value))
    return ds


def identifier_text(identifier: Dataset, tag: Any, charsets: list[str]) -> str:
    """An identifier element's value as text, decoded leniently from its raw bytes."""
    element = identifier.get_item(tag)
    if element is None or str(getattr(element, "VR", "") or dictionary_VR(tag)) == "SQ":
        return ""
    value = element.value
    if isinstance(value, bytes):
        vr = str(element.VR or dictionary_VR(tag))
        text = decode_text(value, charsets, person_name=vr == "PN")
    elif value is None:
        text = ""
    elif isinstance(value, MultiValue | list | tuple):
        text = "\\".join(str(v) for v in value)
    else:
        text = str(value)
    return text.replace("\x00", "").strip()


def _dicom_value(keyword: str, value: Any) -> Any:
    """A planner value as pydicom wants it for the attribute's VR (empty when absent)."""
    if value is None or value == "":
        return None
    attribute = ATTRIBUTES.get(keyword)
    if attribute is not None and attribute.multi_valued:
        return [part for part in str(value).split("\\") if part]
    vr = str(dictionary_VR(keyword))
    if vr == "DS" and isinstance(value, float):
        return DSfloat(value, auto_format=True)
    if vr == "IS":
        return int(value)
    return value


def _failure(status: int, comment: str) -> Dataset:
    """A failure status with an ErrorComment (an LO: 64 characters, no backslash)."""
    ds = Dataset()
    ds.Status = status
    ds.ErrorComment = error_comment(comment)
    return ds
