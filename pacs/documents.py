"""Reports as DICOM: the Encapsulated PDF instance that travels with the study.

A finalized report's PDF is wrapped in an Encapsulated PDF Storage instance
(SOP Class 1.2.840.10008.5.1.4.1.1.104.1; IOD in PS3.3 A.45.1) and stored through
the one ingest function (:meth:`storage.Archive.ingest`), so it is indexed, found by
QIDO-RS / C-FIND and sent by WADO-RS, C-MOVE and forwarding like any image.

The instance carries the modules A.45.1 requires:

- Patient (C.7.1.1), General Study (C.7.2.1) and Patient Study (C.7.2.2): copied
  from the header of an instance already in the study, so it files under the same
  patient identity (issuer + PatientID) and the same study;
- Encapsulated Document Series (C.24.1): a new series, Modality ``DOC``;
- General Equipment (C.7.5.1) and SC Equipment (C.8.6.1, Conversion Type ``WSD``);
- Encapsulated Document (C.24.2): the PDF in Encapsulated Document (OB, padded to
  even length with one 0x00) with its true length in Encapsulated Document Length,
  MIME type ``application/pdf``, Burned In Annotation ``YES`` (patient details are
  printed on it), Document Title and the LOINC concept "Diagnostic imaging study";
- SOP Common (C.12.1) with Specific Character Set ``ISO_IR 192``: names keep their
  Vietnamese letters whatever the source instance's character set was.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid
from sqlalchemy import select

from storage import Archive, Source
from storage.models import Patient, Study
from storage.retrieve import find_instances

ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
# Patient module (C.7.1.1), General Study (C.7.2.1), Patient Study (C.7.2.2): what is
# copied from the study's own instances. Type 2 attributes are added empty if absent.
PATIENT_KEYWORDS = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "IssuerOfPatientIDQualifiersSequence",
    "TypeOfPatientID",
    "OtherPatientIDsSequence",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientSex",
    "EthnicGroup",
    "PatientComments",
)
STUDY_KEYWORDS = (
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "IssuerOfAccessionNumberSequence",
    "StudyDescription",
    "TimezoneOffsetFromUTC",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
)
_TYPE_2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)
SERIES_NUMBER_BASE = 9000  # report series sort after the images in a viewer


class DocumentError(ValueError):
    """The study has no readable instance to take patient and study attributes from."""


@dataclass(frozen=True)
class DocumentInfo:
    """What the archive says about the report being wrapped."""

    title: str  # Document Title, e.g. "Radiology report v2"
    version: int  # becomes the series number, after the images
    signed_at: datetime  # Content Date / Time
    series_description: str = "Radiology report"


def encapsulated_pdf(pdf: bytes, source: Dataset, info: DocumentInfo) -> Dataset:
    """An Encapsulated PDF dataset (with its file meta) for ``pdf`` in ``source``'s study."""
    if not pdf.startswith(b"%PDF-"):
        raise ValueError("not a PDF document")
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = ENCAPSULATED_PDF
    ds.SOPInstanceUID = generate_uid()
    ds.InstanceCreationDate = info.signed_at.strftime("%Y%m%d")
    ds.InstanceCreationTime = info.signed_at.strftime("%H%M%S")
    for keyword in (*PATIENT_KEYWORDS, *STUDY_KEYWORDS):
        if keyword in source:
            element = source[keyword]
            # A PersonName remembers the bytes it was read from (maybe Latin-1): give
            # it the decoded text, so it is written in this instance's UTF-8.
            value = str(element.value) if element.VR == "PN" else element.value
            ds.add_new(element.tag, element.VR, value)
    for keyword in _TYPE_2:
        if keyword not in ds:
            setattr(ds, keyword, "")
    # Encapsulated Document Series (C.24.1) and equipment (C.7.5.1, C.8.6.1).
    ds.Modality = "DOC"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = SERIES_NUMBER_BASE + info.version
    ds.SeriesDescription = info.series_description[:64]
    ds.Manufacturer = "provincial-pacs"
    ds.ConversionType = "WSD"  # made on a workstation
    # Encapsulated Document (C.24.2).
    ds.InstanceNumber = 1
    ds.ContentDate = info.signed_at.strftime("%Y%m%d")
    ds.ContentTime = info.signed_at.strftime("%H%M%S")
    ds.AcquisitionDateTime = info.signed_at.strftime("%Y%m%d%H%M%S")
    ds.BurnedInAnnotation = "YES"
    ds.DocumentTitle = info.title[:64]
    concept = Dataset()
    concept.CodeValue = "18748-4"
    concept.CodingSchemeDesignator = "LN"
    concept.CodeMeaning = "Diagnostic imaging study"
    ds.ConceptNameCodeSequence = [concept]
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = pdf  # pydicom pads OB to even length with 0x00 when writing
    ds.EncapsulatedDocumentLength = len(pdf)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    return ds


def document_pdf(ds: Dataset) -> bytes:
    """The PDF inside an Encapsulated PDF dataset, without the pad byte."""
    data = bytes(ds.EncapsulatedDocument)
    length = ds.get("EncapsulatedDocumentLength")
    if length is not None:
        return data[: int(length)]
    # Older instances have no length: a PDF ends with %%EOF and an optional EOL.
    return data[:-1] if len(data) % 2 == 0 and data.endswith(b"\x00") else data


def study_source(archive: Archive, study_uid: str) -> Dataset:
    """The header of an instance of the study (patient and study attributes)."""
    with archive.sessions() as session:
        stored = find_instances(session, study_uid)
    for candidate in stored:
        try:
            with archive.blobs.open(candidate.blob_key) as fp:
                return dcmread(fp, stop_before_pixels=True)
        except (OSError, ValueError):
            continue
    raise DocumentError(f"no readable instance in study {study_uid}")


def archive_pdf(archive: Archive, study_uid: str, pdf: bytes, info: DocumentInfo) -> str:
    """Wrap ``pdf`` as an Encapsulated PDF of the study and ingest it; its SOP Instance UID.

    Raises :class:`DocumentError` when the study has no instance to copy from or the
    ingest rejects the instance (with its reason).
    """
    ds = encapsulated_pdf(pdf, study_source(archive, study_uid), info)
    with archive.sessions() as session:
        issuer = session.scalar(
            select(Patient.issuer)
            .join(Study, Study.patient_pk == Patient.id)
            .where(Study.study_instance_uid == study_uid)
        )
    staged: Path = archive.blobs.new_staging_file()
    ds.save_as(staged, enforce_file_format=True)
    # A study without IssuerOfPatientID got its issuer from the sending node's site:
    # the document comes "from" that site too, so it files under the same patient.
    source = Source(ae_title="PACS-REPORTS", site=issuer or "")
    result = archive.ingest(staged, source, move=True)
    if not result.ok:
        raise DocumentError(f"the archive refused the report document: {result.reason}")
    return str(ds.SOPInstanceUID)


def archived_pdf(archive: Archive, study_uid: str, sop_instance_uid: str) -> bytes:
    """The PDF of an archived Encapsulated PDF instance; DocumentError when absent."""
    with archive.sessions() as session:
        found = find_instances(session, study_uid, None, sop_instance_uid)
    if not found:
        raise DocumentError(f"report document {sop_instance_uid} is not in the archive")
    with archive.blobs.open(found[0].blob_key) as fp:
        return document_pdf(dcmread(fp))
