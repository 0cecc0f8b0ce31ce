"""The report PDF, read back with poppler (``pdftotext``, ``pdfimages``, ``pdfinfo``)."""

from __future__ import annotations

import io
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import SAMPLES, pdftotext, require_tool, run
from viewer.render import RenderParams, render
from viewer.report_pdf import (
    DEFAULT_FONT,
    Letterhead,
    ReportDocument,
    ReportPdfError,
    report_pdf,
)

HOSPITAL = "Bệnh viện Đa khoa tỉnh Hà Giang"
DOC = ReportDocument(
    report_id=7,
    version=1,
    status="draft",
    patient_name="Nguyễn^Văn An",
    patient_id="BN0001",
    issuer_of_patient_id="BV-TINH-HAGIANG",
    patient_birth_date="19620405",
    patient_sex="M",
    study_date="20240312",
    study_description="CT ngực không tiêm thuốc cản quang",
    accession_number="HG24031201",
    modalities="CT",
    referring_physician_name="Đặng^Thị Hoa",
    template_title="ct-chest",
    fields=[("Lungs", "Phổi hai bên sáng"), ("Nodules", "Không có nốt")],
    findings="Không thấy tổn thương khu trú.\nTrung thất cân đối.",
    impression="Chưa phát hiện bất thường trên CT ngực.",
    free_text="Đề nghị tái khám sau 12 tháng.",
    author="doctor",
)


def text_of(pdf: bytes, tmp_path: Path) -> str:
    path = tmp_path / "report.pdf"
    path.write_bytes(pdf)
    return pdftotext(path)


def scattered_letters(text: str) -> str:
    return "".join(line.strip() for line in text.splitlines() if len(line.strip()) <= 2)


def test_vietnamese_names_come_back_exactly(tmp_path: Path) -> None:
    text = text_of(report_pdf(DOC, Letterhead(HOSPITAL)), tmp_path)
    for expected in (
        "Nguyễn Văn An",
        "Đặng Thị Hoa",
        HOSPITAL,
        "BN0001 (BV-TINH-HAGIANG)",
        "1962-04-05",
        "CT ngực không tiêm thuốc cản quang",
        "Phổi hai bên sáng",
        "Không thấy tổn thương khu trú.",
        "Chưa phát hiện bất thường trên CT ngực.",
        "Đề nghị tái khám sau 12 tháng.",
        "Status: DRAFT",
        "Not signed",
    ):
        assert expected in text, expected


def test_a_draft_has_a_watermark_and_a_final_report_a_signature(tmp_path: Path) -> None:
    draft = text_of(report_pdf(DOC, Letterhead(HOSPITAL)), tmp_path)
    signed_at = datetime(2026, 11, 24, 9, 30, tzinfo=UTC)
    final_doc = replace(
        DOC, status="final", finalized_by="BS. Trần Minh Đức", finalized_at=signed_at
    )
    final = text_of(report_pdf(final_doc, Letterhead(HOSPITAL)), tmp_path)
    # The diagonal watermark comes back from pdftotext in one- or two-letter lines.
    assert set("DRAFT") <= set(scattered_letters(draft))
    assert not set("DRAF") & set(scattered_letters(final))  # "M" and "CT" are fields
    assert "DRAFT" not in final
    assert "Status: FINAL" in final
    assert "BS. Trần Minh Đức" in final
    assert "Signed 2026-11-24 09:30 UTC" in final
    # A signed report's PDF does not depend on when it is made.
    assert report_pdf(final_doc, Letterhead(HOSPITAL)) == report_pdf(
        final_doc, Letterhead(HOSPITAL)
    )


def test_a_superseded_report_says_amended_and_its_correction_what_it_amends(
    tmp_path: Path,
) -> None:
    signed_at = datetime(2026, 11, 24, 9, 30, tzinfo=UTC)
    signed = replace(DOC, finalized_by="BS. Trần Minh Đức", finalized_at=signed_at)
    superseded = text_of(
        report_pdf(replace(signed, status="amended"), Letterhead(HOSPITAL)), tmp_path
    )
    assert "Status: AMENDED - replaced by version 2 of this report" in superseded
    assert "FINAL" not in superseded
    assert set("AMENDED") <= set(scattered_letters(superseded))  # the watermark
    assert "Signed 2026-11-24 09:30 UTC" in superseded
    correction = replace(signed, version=2, status="final", amends_version=1)
    text = text_of(report_pdf(correction, Letterhead(HOSPITAL)), tmp_path)
    assert "Status: FINAL - signed, amends version 1" in text
    assert "AMENDED" not in text


def test_logo_and_key_images_are_embedded(tmp_path: Path) -> None:
    logo = tmp_path / "logo.png"
    Image.new("RGB", (120, 120), (0, 90, 160)).save(logo)
    slices = sorted((SAMPLES / "ct_chest").rglob("*.dcm"))
    jpegs = [render(p, RenderParams(viewport=(256, 256))).body for p in slices[10:13]]
    pdf = report_pdf(replace(DOC, key_images=jpegs), Letterhead(HOSPITAL, logo=logo))
    path = tmp_path / "report.pdf"
    path.write_bytes(pdf)
    listed = run([require_tool("pdfimages"), "-list", str(path)])
    assert listed.returncode == 0, listed.stderr
    rows = [line.split() for line in listed.stdout.splitlines()[2:]]
    assert [row[8] for row in rows if row[5] == "gray"] == ["jpeg"] * 3  # as rendered
    assert any(row[3:5] == ["120", "120"] for row in rows)  # the logo
    assert "Key images" in text_of(pdf, tmp_path)


def test_long_text_flows_onto_more_pages(tmp_path: Path) -> None:
    long = replace(DOC, findings="\n".join(f"Dòng {i}: tổn thương nhỏ." for i in range(200)))
    path = tmp_path / "long.pdf"
    path.write_bytes(report_pdf(long, Letterhead(HOSPITAL)))
    info = run([require_tool("pdfinfo"), str(path)])
    pages = int(
        next(line for line in info.stdout.splitlines() if line.startswith("Pages:")).split()[1]
    )
    assert pages >= 4
    assert "Dòng 199: tổn thương nhỏ." in text_of(path.read_bytes(), tmp_path)


def test_a_missing_font_or_logo_is_a_clear_error(tmp_path: Path) -> None:
    assert DEFAULT_FONT.is_file(), "fonts-dejavu-core is not installed: run `make test`"
    with pytest.raises(ReportPdfError, match="font"):
        report_pdf(DOC, Letterhead(HOSPITAL, font=tmp_path / "missing.ttf"))
    broken = tmp_path / "logo.png"
    broken.write_bytes(b"not an image")
    with pytest.raises(ReportPdfError, match="logo"):
        report_pdf(DOC, Letterhead(HOSPITAL, logo=broken))


def test_key_image_bytes_are_real_jpegs() -> None:
    slices = sorted((SAMPLES / "mr_brain").rglob("*.dcm"))
    body = render(slices[0], RenderParams(viewport=(256, 256))).body
    assert Image.open(io.BytesIO(body)).format == "JPEG"
