"""Report PDF generation time: :func:`viewer.report_pdf.report_pdf`, in process.

Run from the repository root: ``.venv/bin/python bench/report_pdf.py [--runs 50]``.

Three documents, each made ``--runs`` times after one warm-up (the warm-up cuts the
font down to the report repertoire once per process): a short report, the same with
four key images (CT slices of ``sample_dicom/`` rendered to 640x640 JPEG beforehand,
as the API does), and a long one (200 lines of findings, four pages). Prints the
median and p95 milliseconds; the target is a median under 300 ms.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import bench_path  # noqa: F401 - before viewer: see bench/bench_path.py

from viewer.render import RenderParams, render
from viewer.report_pdf import Letterhead, ReportDocument, report_pdf

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent

TARGET_MS = 300.0

SHORT = ReportDocument(
    report_id=1,
    version=1,
    status="final",
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
    findings="Không thấy tổn thương khu trú. Trung thất cân đối.",
    impression="Chưa phát hiện bất thường trên CT ngực.",
    author="doctor",
    finalized_by="BS. Trần Minh Đức",
    finalized_at=datetime(2026, 11, 24, 9, 30, tzinfo=UTC),
)


def timings(doc: ReportDocument, letterhead: Letterhead, runs: int) -> list[float]:
    report_pdf(doc, letterhead)
    out = []
    for _ in range(runs):
        started = time.perf_counter()
        report_pdf(doc, letterhead)
        out.append((time.perf_counter() - started) * 1000)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    slices = sorted((ROOT / "sample_dicom" / "ct_chest").rglob("*.dcm"))
    images = [render(p, RenderParams(viewport=(640, 640), quality=90)).body for p in slices[8:12]]
    letterhead = Letterhead("Bệnh viện Đa khoa tỉnh Hà Giang")
    cases = {
        "short report": SHORT,
        "4 key images": replace(SHORT, key_images=images),
        "long (4 pages)": replace(
            SHORT, findings="\n".join(f"Dòng {i}: tổn thương nhỏ." for i in range(200))
        ),
    }
    print("| document | median ms | p95 ms | KB |\n|---|---|---|---|")
    medians = []
    for name, doc in cases.items():
        ms = sorted(timings(doc, letterhead, args.runs))
        size = len(report_pdf(doc, letterhead)) / 1024
        medians.append(statistics.median(ms))
        p95 = ms[int(len(ms) * 0.95) - 1]
        print(f"| {name} | {statistics.median(ms):.1f} | {p95:.1f} | {size:.0f} |")
    worst = max(medians)
    verdict = "PASS" if worst < TARGET_MS else "FAIL"
    print(f"{verdict}: slowest median {worst:.1f} ms (target < {TARGET_MS:.0f} ms)")


if __name__ == "__main__":
    main()
