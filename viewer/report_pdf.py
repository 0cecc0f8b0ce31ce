"""The report as a PDF: what the referring doctor prints and what is archived.

Built with fpdf2 and a TrueType font embedded as a subset (DejaVu Sans by default):
the PDF's standard 14 fonts only cover Latin-1, and Vietnamese needs precomposed
letters such as ễ, ặ and Đ. fpdf2 writes a ToUnicode map beside the subset, so text
copied or extracted (``pdftotext``) from the PDF gives back the same characters.

Layout, top to bottom: letterhead (logo, hospital name), patient and study details,
status, the template's structured fields, findings, impression, free text, key
images, and the signature block. A report that is not final carries a diagonal
DRAFT watermark on every page; a superseded one an AMENDED watermark and the version
that replaced it, and a correction names the version it amends. The caller
gathers everything (no SQL and no file lookups here, PS3.3 A.45.1 wraps the result).
"""

from __future__ import annotations

import functools
import hashlib
import io
import tempfile
import unicodedata
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from fontTools import subset
from fpdf import FPDF
from fpdf.enums import XPos, YPos

DEFAULT_FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
_GREY = (110, 110, 110)
_WATERMARK = (225, 225, 225)
_STATUS_TEXT = {
    "draft": "DRAFT - not signed, not valid for clinical decisions",
    "final": "FINAL - signed",
    "amended": "AMENDED - replaced by version {next} of this report",
}


# What a report can hold: Latin (Vietnamese is in Latin Extended Additional), combining
# marks, punctuation, currency and the signs measurements use. Cutting the font down
# to these once per process makes each PDF ~5x cheaper: fpdf2 parses every glyph of
# the font it is given, for every document.
_REPERTOIRE = (
    "U+0020-024F,U+0300-036F,U+0370-03FF,U+1E00-1EFF,U+2000-206F,U+20A0-20CF,"
    "U+2100-215F,U+2190-21FF,U+2212-2265,U+25A0-25FF"
)


class ReportPdfError(ValueError):
    """The PDF cannot be made (the font or the logo is missing or unreadable)."""


@dataclass(frozen=True)
class Letterhead:
    hospital_name: str
    logo: Path | None = None
    font: Path = DEFAULT_FONT


@dataclass(frozen=True)
class ReportDocument:
    """Everything the PDF shows; DICOM values as stored (PN with ``^``, DA as YYYYMMDD)."""

    report_id: int
    version: int
    status: str  # draft | final | amended
    patient_name: str = ""
    patient_id: str = ""
    issuer_of_patient_id: str = ""
    patient_birth_date: str = ""
    patient_sex: str = ""
    study_date: str = ""
    study_description: str = ""
    accession_number: str = ""
    modalities: str = ""
    referring_physician_name: str = ""
    template_title: str = ""
    fields: list[tuple[str, str]] = field(default_factory=list)  # (label, text)
    findings: str = ""
    impression: str = ""
    free_text: str = ""
    author: str = ""
    finalized_by: str = ""
    finalized_at: datetime | None = None
    key_images: list[bytes] = field(default_factory=list)  # JPEG
    amends_version: int | None = None  # the signed version this one corrects, if any


def report_pdf(doc: ReportDocument, letterhead: Letterhead) -> bytes:
    """The PDF bytes of ``doc``; ReportPdfError when the font or logo cannot be used."""
    pdf = _ReportPdf(doc, letterhead)
    pdf.add_page()
    pdf.details()
    pdf.sections()
    pdf.images()
    pdf.signature()
    return bytes(pdf.output())


def person_name(value: str) -> str:
    """A DICOM PN for reading: the alphabetic group, components joined by spaces
    (PS3.5 6.2.1; Vietnamese names are written family name first, as stored)."""
    alphabetic = value.split("=", 1)[0]
    return " ".join(part for part in alphabetic.replace("^", " ").split())


def dicom_date(value: str) -> str:
    """YYYYMMDD as YYYY-MM-DD; anything else as it is."""
    v = value.strip()
    return f"{v[:4]}-{v[4:6]}-{v[6:8]}" if len(v) == 8 and v.isdigit() else v


@functools.cache
def _report_subset(font: Path) -> Path:
    """``font`` cut down to :data:`_REPERTOIRE`, written once to the temporary folder."""
    stat = font.stat()
    tag = hashlib.sha256(f"{font.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    out = Path(tempfile.gettempdir()) / f"pacs-report-{tag.hexdigest()[:16]}{font.suffix}"
    if not out.is_file():
        options = subset.Options()
        options.layout_features = ["*"]
        options.name_IDs = ["*"]
        options.notdef_outline = True
        options.drop_tables += ["FFTM"]  # FontForge's timestamps: nothing to subset
        loaded = subset.load_font(str(font), options)
        cutter = subset.Subsetter(options)
        cutter.populate(unicodes=subset.parse_unicodes(_REPERTOIRE))
        cutter.subset(loaded)
        staged = out.with_suffix(f".{uuid.uuid4().hex}.part")
        subset.save_font(loaded, str(staged), options)
        staged.replace(out)  # atomic: another process may be writing the same file
    return out


def _text(value: str) -> str:
    # NFC: a decomposed "e + circumflex + tilde" would come back from pdftotext as
    # three characters and might miss glyphs; the font has the precomposed letters.
    return unicodedata.normalize("NFC", value).replace("\r\n", "\n").replace("\t", "    ")


class _ReportPdf(FPDF):
    def __init__(self, doc: ReportDocument, letterhead: Letterhead) -> None:
        super().__init__(format="A4", unit="mm")
        self.doc = doc
        self.letterhead = letterhead
        self.set_margins(18, 15, 18)
        self.set_auto_page_break(True, margin=18)
        self.set_title(f"Report {doc.report_id} v{doc.version}")
        self.set_creator("provincial-pacs")
        if doc.finalized_at is not None:  # a signed report's PDF does not depend on the clock
            self.set_creation_date(doc.finalized_at)
        font = letterhead.font
        bold = font.with_name(font.stem + "-Bold" + font.suffix)
        try:
            self.add_font("body", "", str(_report_subset(font)))
            self.add_font("body", "B", str(_report_subset(bold if bold.is_file() else font)))
        except (OSError, RuntimeError, subset.Subsetter.SubsettingError) as exc:
            raise ReportPdfError(f"cannot load the report font {letterhead.font}: {exc}") from exc
        self.set_font("body", size=10)

    def header(self) -> None:
        if self.doc.status != "final":
            self._watermark()
        top = self.get_y()
        left = self.l_margin
        if self.letterhead.logo is not None:
            try:
                self.image(str(self.letterhead.logo), x=left, y=top, h=16)
            except (OSError, RuntimeError, ValueError) as exc:
                raise ReportPdfError(f"cannot use the logo {self.letterhead.logo}: {exc}") from exc
            left += 22
        self.set_xy(left, top + 1)
        self.set_font("body", "B", 14)
        self.cell(0, 7, _text(self.letterhead.hospital_name), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        self.set_x(left)
        self.set_font("body", "", 10)
        self.set_text_color(*_GREY)
        self.cell(0, 6, "Radiology report", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        self.set_text_color(0)
        self.set_y(max(self.get_y(), top + 17))
        self.line(self.l_margin, self.get_y(), self.w - self.r_margin, self.get_y())
        self.ln(3)

    def footer(self) -> None:
        self.set_y(-12)
        self.set_font("body", "", 8)
        self.set_text_color(*_GREY)
        doc = self.doc
        self.cell(0, 5, f"Report {doc.report_id}, version {doc.version}", align="L")
        self.set_x(self.l_margin)
        self.cell(0, 5, f"Page {self.page_no()}/{{nb}}", align="R")
        self.set_text_color(0)

    def _watermark(self) -> None:
        word = "DRAFT" if self.doc.status == "draft" else "AMENDED"
        self.set_font("body", "B", 90 if word == "DRAFT" else 70)
        self.set_text_color(*_WATERMARK)
        x, y = self.w / 2, self.h / 2
        with self.rotation(45, x, y):
            self.text(x - self.get_string_width(word) / 2, y + 12, word)
        self.set_text_color(0)
        self.set_font("body", "", 10)

    def details(self) -> None:
        doc = self.doc
        patient = [
            ("Patient", person_name(doc.patient_name)),
            (
                "Patient ID",
                doc.patient_id
                + (f" ({doc.issuer_of_patient_id})" if doc.issuer_of_patient_id else ""),
            ),
            ("Birth date", dicom_date(doc.patient_birth_date)),
            ("Sex", doc.patient_sex),
        ]
        study = [
            ("Study date", dicom_date(doc.study_date)),
            ("Study", doc.study_description),
            ("Modality", doc.modalities),
            ("Accession", doc.accession_number),
            ("Referring", person_name(doc.referring_physician_name)),
        ]
        self._pairs(patient + study)
        self.ln(2)
        self.set_font("body", "B", 10)
        status = _STATUS_TEXT.get(doc.status, doc.status).format(next=doc.version + 1)
        if doc.amends_version is not None:
            status += f", amends version {doc.amends_version}"
        if doc.status != "final":
            self.set_text_color(180, 0, 0)
        self.cell(0, 6, f"Status: {status}", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        self.set_text_color(0)
        if doc.template_title:
            self.set_font("body", "", 10)
            self.cell(0, 6, f"Template: {doc.template_title}", new_x=XPos.LMARGIN, new_y=YPos.NEXT)

    def _pairs(self, pairs: list[tuple[str, str]]) -> None:
        for label, value in pairs:
            if not value:
                continue
            self.set_font("body", "B", 10)
            self.cell(32, 5.5, label)
            self.set_font("body", "", 10)
            self.multi_cell(0, 5.5, _text(value), new_x=XPos.LMARGIN, new_y=YPos.NEXT)

    def sections(self) -> None:
        doc = self.doc
        if doc.fields:
            self._heading("Structured findings")
            self._pairs([(label, value) for label, value in doc.fields])
        for title, body in (
            ("Findings", doc.findings),
            ("Impression", doc.impression),
            ("Comments", doc.free_text),
        ):
            if body.strip():
                self._heading(title)
                self.set_font("body", "", 10)
                self.multi_cell(0, 5.5, _text(body), new_x=XPos.LMARGIN, new_y=YPos.NEXT)

    def _heading(self, title: str) -> None:
        self.ln(3)
        self.set_font("body", "B", 11)
        self.cell(0, 7, title, new_x=XPos.LMARGIN, new_y=YPos.NEXT)

    def images(self) -> None:
        if not self.doc.key_images:
            return
        self._heading("Key images")
        width = (self.w - self.l_margin - self.r_margin - 6) / 2
        for index, jpeg in enumerate(self.doc.key_images):
            column = index % 2
            if column == 0 and self.get_y() + width > self.h - self.b_margin:
                self.add_page()
            top = self.get_y()
            self.image(io.BytesIO(jpeg), x=self.l_margin + column * (width + 6), y=top, w=width)
            if column == 1 or index == len(self.doc.key_images) - 1:
                self.set_y(top + width + 4)
            else:
                self.set_y(top)

    def signature(self) -> None:
        doc = self.doc
        self.ln(6)
        if self.get_y() > self.h - self.b_margin - 25:
            self.add_page()
        self.line(self.l_margin, self.get_y(), self.l_margin + 80, self.get_y())
        self.ln(2)
        self.set_font("body", "", 10)
        if doc.finalized_by and doc.finalized_at is not None:
            self.set_font("body", "B", 10)
            self.cell(0, 5.5, _text(doc.finalized_by), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
            self.set_font("body", "", 10)
            signed = doc.finalized_at.strftime("%Y-%m-%d %H:%M UTC")
            self.cell(0, 5.5, f"Signed {signed}", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        else:
            self.cell(0, 5.5, "Not signed", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        if doc.author:
            self.set_text_color(*_GREY)
            self.cell(
                0, 5.5, f"Written by {_text(doc.author)}", new_x=XPos.LMARGIN, new_y=YPos.NEXT
            )
            self.set_text_color(0)
