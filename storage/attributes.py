"""From a header dataset to the values the index keeps at each level.

Text is decoded from the element's raw bytes with the dataset's Specific Character
Set through :func:`pacs.charset.decode_text`, which is lenient with the mislabelled
Vietnamese text provincial modalities send. Values are cut to their column width,
so a hostile 10 kB description cannot fail an insert.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from pacs.charset import character_sets, charsets_from_raw, decode_text, search_key
from storage.quick_header import RawElements


@dataclass(frozen=True)
class IndexRecord:
    """The four rows one instance contributes to, as column -> value mappings."""

    patient: dict[str, Any]
    study: dict[str, Any]
    series: dict[str, Any]
    instance: dict[str, Any]


class _Reader:
    """Reads elements of one data set as clean, decoded, width-limited values.

    Two kinds share it: :class:`_DatasetReader` over a pydicom dataset and
    :class:`_RawReader` over :mod:`storage.quick_header`'s raw elements. Sequence
    items inherit the character set of the data set around them (PS3.5 §7.5.2)
    unless they declare their own.
    """

    charsets: list[str]

    def value(self, keyword: str) -> object:
        """The element's raw bytes (or a value pydicom already converted); ``None``
        when the element is absent."""
        raise NotImplementedError

    def items(self, sequence: str) -> list[_Reader]:
        raise NotImplementedError

    def us(self, keyword: str) -> int | None:
        """A binary integer element (US/UL/SS/SL), its first value."""
        raise NotImplementedError

    def text(self, keyword: str, width: int = 64, *, person_name: bool = False) -> str:
        value = self.value(keyword)
        if isinstance(value, bytes):
            text = decode_text(value, self.charsets, person_name=person_name)
        elif value is None:
            text = ""
        elif isinstance(value, MultiValue | list | tuple):
            text = "\\".join(str(v) for v in value)
        else:
            text = str(value)
        return text.replace("\x00", "").strip()[:width]

    def integer(self, keyword: str) -> int | None:
        text = self.text(keyword).split("\\")[0]
        try:
            return int(float(text)) if text else None
        except ValueError:
            return None

    def number(self, keyword: str) -> float | None:
        text = self.text(keyword).split("\\")[0]
        try:
            return float(text) if text else None
        except ValueError:
            return None

    def first_in_sequence(self, sequence: str, keyword: str, width: int = 16) -> str:
        for item in self.items(sequence):
            value = item.text(keyword, width)
            if value:
                return value
        return ""


class _DatasetReader(_Reader):
    def __init__(self, ds: Dataset, inherited: list[str] | None = None) -> None:
        self.ds = ds
        self.charsets = (
            character_sets(ds)
            if inherited is None or _TAGS["SpecificCharacterSet"] in ds
            else inherited
        )

    def value(self, keyword: str) -> object:
        if keyword not in self.ds:
            return None
        return getattr(self.ds.get_item(keyword), "value", None)

    def items(self, sequence: str) -> list[_Reader]:
        return [_DatasetReader(item, self.charsets) for item in self.ds.get(sequence) or []]

    def us(self, keyword: str) -> int | None:
        try:
            value = self.ds.get(keyword)  # pydicom's own conversion
        except Exception:  # e.g. a US of 3 bytes: unreadable counts as absent, as below
            return None
        if isinstance(value, MultiValue | list):
            value = value[0] if value else None
        return int(value) if isinstance(value, int | float) else None


class _RawReader(_Reader):
    def __init__(self, elements: RawElements, inherited: list[str] | None = None) -> None:
        self.elements = elements
        own = elements.values.get(_TAGS["SpecificCharacterSet"])
        if own is not None or inherited is None:
            self.charsets = charsets_from_raw(own[1] if own else b"")
        else:
            self.charsets = inherited

    def value(self, keyword: str) -> object:
        found = self.elements.values.get(_TAGS[keyword])
        return None if found is None else found[1]

    def items(self, sequence: str) -> list[_Reader]:
        found = self.elements.items.get(_TAGS[sequence], [])
        return [_RawReader(item, self.charsets) for item in found]

    def us(self, keyword: str) -> int | None:
        tag = _TAGS[keyword]
        found = self.elements.values.get(tag)
        if found is None:
            return None
        vr, raw = found
        if vr == "UN":
            vr = dictionary_VR(tag)
        fmt = _BINARY_INTEGERS.get(vr)
        if fmt is not None:
            size = struct.calcsize(fmt)  # a value of another length is malformed (PS3.5 6.2)
            return struct.unpack_from(fmt, raw)[0] if raw and len(raw) % size == 0 else None
        return self.integer(keyword) if vr in ("IS", "DS") else None


_BINARY_INTEGERS = {"US": "<H", "UL": "<I", "SS": "<h", "SL": "<i"}


class _Tags(dict[str, int]):
    """Keyword -> tag, looked up in pydicom's dictionary once per keyword."""

    def __missing__(self, keyword: str) -> int:
        tag = tag_for_keyword(keyword)
        if tag is None:
            raise KeyError(keyword)
        self[keyword] = tag
        return tag


_TAGS = _Tags()


def extract(ds: Dataset) -> IndexRecord:
    """Everything the index stores for the instance whose header is ``ds``."""
    return _extract(_DatasetReader(ds))


def extract_raw(elements: RawElements) -> IndexRecord:
    """:func:`extract` for a header read by :mod:`storage.quick_header`."""
    return _extract(_RawReader(elements))


def _extract(r: _Reader) -> IndexRecord:
    patient_name = r.text("PatientName", 324, person_name=True)
    referring = r.text("ReferringPhysicianName", 324, person_name=True)
    other_ids = "\\".join(item.text("PatientID") for item in r.items("OtherPatientIDsSequence"))
    patient = {
        "issuer": r.text("IssuerOfPatientID"),
        "patient_id": r.text("PatientID"),
        "patient_name": patient_name,
        "patient_name_key": search_key(patient_name),
        "patient_birth_date": r.text("PatientBirthDate", 8),
        "patient_birth_time": r.text("PatientBirthTime", 16),
        "patient_sex": r.text("PatientSex", 16),
        "other_patient_ids": other_ids or r.text("OtherPatientIDs", 1024),
        "ethnic_group": r.text("EthnicGroup", 16),
        "patient_comments": r.text("PatientComments", 10240),
    }
    study = {
        "study_instance_uid": r.text("StudyInstanceUID"),
        "study_date": r.text("StudyDate", 8),
        "study_time": r.text("StudyTime", 16),
        "accession_number": r.text("AccessionNumber", 16),
        "issuer_of_accession_number": r.first_in_sequence(
            "IssuerOfAccessionNumberSequence", "LocalNamespaceEntityID", 64
        ),
        "study_id": r.text("StudyID", 16),
        "study_description": r.text("StudyDescription"),
        "referring_physician_name": referring,
        "referring_physician_name_key": search_key(referring),
        "timezone_offset_from_utc": r.text("TimezoneOffsetFromUTC", 16),
        "patient_age": r.text("PatientAge", 4),
        "patient_size": r.text("PatientSize", 16),
        "patient_weight": r.text("PatientWeight", 16),
        "institution_name": r.text("InstitutionName"),
    }
    series = {
        "series_instance_uid": r.text("SeriesInstanceUID"),
        "modality": r.text("Modality", 16),
        "series_number": r.integer("SeriesNumber"),
        "series_description": r.text("SeriesDescription"),
        "series_date": r.text("SeriesDate", 8),
        "series_time": r.text("SeriesTime", 16),
        "body_part_examined": r.text("BodyPartExamined", 16),
        "laterality": r.text("Laterality", 16),
        "protocol_name": r.text("ProtocolName"),
        "station_name": r.text("StationName", 16),
        "institution_name": r.text("InstitutionName"),
        "manufacturer": r.text("Manufacturer"),
        "performed_procedure_step_start_date": r.text("PerformedProcedureStepStartDate", 8),
        "performed_procedure_step_start_time": r.text("PerformedProcedureStepStartTime", 16),
        "scheduled_procedure_step_id": r.first_in_sequence(
            "RequestAttributesSequence", "ScheduledProcedureStepID"
        ),
        "requested_procedure_id": r.first_in_sequence(
            "RequestAttributesSequence", "RequestedProcedureID"
        ),
        "timezone_offset_from_utc": r.text("TimezoneOffsetFromUTC", 16),
    }
    instance = {
        "sop_instance_uid": r.text("SOPInstanceUID"),
        "sop_class_uid": r.text("SOPClassUID"),
        "instance_number": r.integer("InstanceNumber"),
        "content_date": r.text("ContentDate", 8),
        "content_time": r.text("ContentTime", 16),
        "rows": r.us("Rows"),
        "columns": r.us("Columns"),
        "bits_allocated": r.us("BitsAllocated"),
        "number_of_frames": r.integer("NumberOfFrames"),
        "photometric_interpretation": r.text("PhotometricInterpretation", 16),
        "slice_location": r.number("SliceLocation"),
        "specific_character_set": "\\".join(r.charsets)[:64],
    }
    return IndexRecord(patient, study, series, instance)
