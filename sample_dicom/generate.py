"""Generate the synthetic sample studies that ``make run`` loads into a fresh archive.

Run from the repository root::

    python sample_dicom/generate.py

Every ``*.dcm`` file below this folder is deleted and rewritten. The output is
deterministic (fixed seeds, hash-derived UIDs, fixed dates), so re-running the
script yields the same files and the same UIDs that tests can refer to.

What it makes (about 5 MB in all), so a newcomer sees real-looking images at once
and the archive is exercised on several modalities, character sets and transfer
syntaxes:

* ``ct_chest/`` - CT chest, 24 axial 5 mm slices of a body phantom (fat, muscle,
  lungs with vessels, heart, aorta, spine, ribs, liver) in Hounsfield units,
  signed 16 bit, Explicit VR Little Endian. Patient "Nguyễn^Văn An", ISO_IR 192.
* ``mr_brain/`` - MR brain, 16 axial T1-like slices (scalp, skull, grey/white
  matter with gyri, ventricles, orbits), 12 bit, every slice JPEG-LS Lossless.
  Patient "Đặng^Thị Hoa", ISO_IR 192.
* ``xa_coronary/`` - one XA multi-frame cine, 30 frames at 15 fps, 8 bit, of a
  beating vessel tree filling with contrast and washing out, JPEG 2000 Lossless.
  Patient "Trần^Minh Đức", ISO_IR 192.
* ``ct_latin1/`` - two CT slices for patient "Müller^Jürgen" in ISO_IR 100
  (Latin-1); slice 1 is Implicit VR Little Endian, slice 2 RLE Lossless.

All people, places and numbers are invented. UIDs are generated from stable
strings under pydicom's UID root, so they are valid and never collide with real
data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray
from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.tag import Tag
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    MRImageStorage,
    RLELossless,
    XRayAngiographicImageStorage,
    generate_uid,
)

Image = NDArray[np.float64]

OUT_DIR = Path(__file__).resolve().parent
UID_SALT = "provincial-pacs/sample_dicom/v1"
SIZE = 256
VIETNAM = "ISO_IR 192"
LATIN1 = "ISO_IR 100"
HOSPITAL = "Bệnh viện Đa khoa tỉnh Hà Giang"
ISSUER = "BV-TINH-HAGIANG"


@dataclass(frozen=True)
class Patient:
    name: str
    patient_id: str
    birth_date: str
    sex: str


@dataclass(frozen=True)
class Study:
    key: str
    patient: Patient
    charset: str
    date: str
    time: str
    accession: str
    description: str
    institution: str
    referring: str


CT_STUDY = Study(
    key="ct_chest",
    patient=Patient("Nguyễn^Văn An", "BN0001", birth_date="19620405", sex="M"),
    charset=VIETNAM,
    date="20240312",
    time="083015",
    accession="HG24031201",
    description="CT ngực không tiêm thuốc cản quang",
    institution=HOSPITAL,
    referring="Lê^Thị Mai",
)
MR_STUDY = Study(
    key="mr_brain",
    patient=Patient("Đặng^Thị Hoa", "BN0002", birth_date="19781122", sex="F"),
    charset=VIETNAM,
    date="20240314",
    time="141020",
    accession="HG24031407",
    description="MRI sọ não",
    institution=HOSPITAL,
    referring="Phạm^Quốc Huy",
)
XA_STUDY = Study(
    key="xa_coronary",
    patient=Patient("Trần^Minh Đức", "BN0003", birth_date="19550918", sex="M"),
    charset=VIETNAM,
    date="20240318",
    time="101545",
    accession="HG24031803",
    description="Chụp động mạch vành",
    institution=HOSPITAL,
    referring="Hoàng^Văn Sơn",
)
# An older console that only speaks Latin-1: no Vietnamese diacritics in its strings.
LATIN1_STUDY = Study(
    key="ct_latin1",
    patient=Patient("Müller^Jürgen", "BN0004", birth_date="19690227", sex="M"),
    charset=LATIN1,
    date="20240320",
    time="160500",
    accession="HG24032011",
    description="CT Thorax nativ",
    institution="Benh vien Da khoa tinh Ha Giang",
    referring="Le^Thi Mai",
)


# --------------------------------------------------------------------------- DICOM plumbing


def uid(*parts: object) -> str:
    """A stable UID under pydicom's root, derived from ``parts``."""
    return generate_uid(entropy_srcs=[UID_SALT, *(str(p) for p in parts)])


def base_dataset(
    study: Study, modality: str, sop_class: str, series: int, instance: int
) -> Dataset:
    """Patient, study, series, equipment and SOP common attributes shared by all files."""
    ds = Dataset()
    ds.SpecificCharacterSet = study.charset
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = uid(study.key, "instance", series, instance)
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.InstanceCreationDate = study.date
    ds.StudyTime = ds.InstanceCreationTime = study.time
    ds.SeriesTime = ds.ContentTime = f"{int(study.time) + 100 * series:06d}"
    ds.AccessionNumber = study.accession
    ds.Modality = modality
    ds.Manufacturer = "SYNTHETIC"
    ds.InstitutionName = study.institution
    ds.ReferringPhysicianName = study.referring
    ds.StationName = f"{modality}01"
    ds.StudyDescription = study.description
    ds.PatientName = study.patient.name
    ds.PatientID = study.patient.patient_id
    ds.IssuerOfPatientID = ISSUER
    ds.PatientBirthDate = study.patient.birth_date
    ds.PatientSex = study.patient.sex
    ds.PatientAge = f"{(int(study.date) - int(study.patient.birth_date)) // 10000:03d}Y"
    ds.StudyInstanceUID = uid(study.key, "study")
    ds.SeriesInstanceUID = uid(study.key, "series", series)
    ds.StudyID = study.accession[-4:]
    ds.SeriesNumber = series
    ds.InstanceNumber = instance
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta.ImplementationVersionName = "PACS_SAMPLE_1"
    return ds


def add_axial_geometry(ds: Dataset, spacing: float, thickness: float, z: float) -> None:
    """Head-first-supine axial plane through ``z`` (mm), centred on the scanner axis."""
    origin = -spacing * (SIZE - 1) / 2
    ds.PatientPosition = "HFS"
    ds.ImagePositionPatient = [round(origin, 5), round(origin, 5), round(z, 2)]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SliceLocation = round(z, 2)
    ds.SliceThickness = thickness
    ds.PixelSpacing = [spacing, spacing]
    ds.PositionReferenceIndicator = ""


def set_pixels(ds: Dataset, arr: NDArray[np.generic], bits_stored: int) -> None:
    ds.set_pixel_data(arr, "MONOCHROME2", bits_stored, generate_instance_uid=False)


def save(ds: Dataset, path: Path, transfer_syntax: str) -> None:
    """Encode ``ds`` with ``transfer_syntax`` and write it as a DICOM Part 10 file."""
    if transfer_syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        ds.file_meta.TransferSyntaxUID = transfer_syntax
    else:
        ds.compress(transfer_syntax, generate_instance_uid=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    dcmwrite(path, ds, enforce_file_format=True)


# --------------------------------------------------------------------------- shape helpers


def grid(spacing: float) -> tuple[Image, Image]:
    """Patient x (towards the left) and y (towards the back) in mm of every pixel centre."""
    axis = (np.arange(SIZE) - (SIZE - 1) / 2) * spacing
    y, x = np.meshgrid(axis, axis, indexing="ij")
    return x, y


def ellipse(
    x: Image, y: Image, centre: tuple[float, float], axes: tuple[float, float], angle: float = 0.0
) -> Image:
    """Anti-aliased coverage (0..1) of an ellipse; ``angle`` in degrees."""
    ax, ay = axes
    if min(ax, ay) <= 0.5:
        return np.zeros_like(x)
    c, s = np.cos(np.radians(angle)), np.sin(np.radians(angle))
    dx, dy = x - centre[0], y - centre[1]
    r = np.hypot((dx * c + dy * s) / ax, (dy * c - dx * s) / ay)
    edge = abs(x[0, 1] - x[0, 0])
    return np.clip((1.0 - r) * min(ax, ay) / edge + 0.5, 0.0, 1.0)


def paint(img: Image, cover: Image, value: float) -> Image:
    return img * (1.0 - cover) + value * cover


def bump(u: float, lo: float, hi: float) -> float:
    """Smooth 0 -> 1 -> 0 over ``lo < u < hi``, zero outside."""
    return float(np.sin(np.pi * (u - lo) / (hi - lo))) if lo < u < hi else 0.0


def ramp(u: float, lo: float, hi: float) -> float:
    """Smoothstep from 0 at ``lo`` to 1 at ``hi``."""
    t = min(max((u - lo) / (hi - lo), 0.0), 1.0)
    return t * t * (3 - 2 * t)


# --------------------------------------------------------------------------- CT chest phantom

CT_SPACING = 1.5
CT_THICKNESS = 5.0
CT_SLICES = 24
CT_TOP_Z = -60.0


class Trunk(NamedTuple):
    """Body outline of one CT slice: centre y and half-axes, in mm."""

    cy: float
    a: float
    b: float


def ct_trunk(x: Image, y: Image, u: float) -> tuple[Image, Trunk]:
    """Couch, subcutaneous fat, chest wall muscle and mediastinum; returns the outline."""
    a, b = 150 + 20 * u, 105 + 10 * u
    cy = 115 - b  # the back always rests on the couch
    hu = np.full(x.shape, -1000.0)
    couch = np.clip(np.minimum(y - 117, 124 - y) / CT_SPACING + 0.5, 0, 1) * (abs(x) < 175)
    hu = paint(hu, couch, 120)
    hu = paint(hu, ellipse(x, y, (0, cy), (a, b)), -100)
    hu = paint(hu, ellipse(x, y, (0, cy), (a - 10, b - 9)), 50)
    hu = paint(hu, ellipse(x, y, (0, cy + 3), (a - 24, b - 22)), 35)
    return hu, Trunk(cy, a, b)


def ct_bones(hu: Image, x: Image, y: Image, u: float, z: float, body: Trunk) -> Image:
    """Ribs, scapulae, sternum and a vertebra that alternates with discs along z."""
    cy, a, b = body
    angles = np.radians(np.arange(-62, 80, 19) + 9 * np.sin(2 * np.pi * 1.3 * u))
    for t in angles:
        for side in (-1, 1):
            rib = (side * (a - 17) * np.cos(t), cy + (b - 15) * np.sin(t))
            hu = paint(hu, ellipse(x, y, rib, (6, 4), np.degrees(t) + 90), 650)
    w = bump(u, -0.3, 0.6)
    for side in (-1, 1):
        scapula = (side * (a - 72), cy + b - 34)
        hu = paint(hu, ellipse(x, y, scapula, (34 * w, 4), -side * 24), 600)
    hu = paint(hu, ellipse(x, y, (0, cy - b + 16), (14 * (1 - ramp(u, 0.8, 1.0)), 5)), 450)
    bone = ramp(abs(float(np.sin(np.pi * z / 28))), 0.12, 0.35)
    vy = cy + b - 47
    hu = paint(hu, ellipse(x, y, (0, vy), (18, 16)), 80 + 620 * bone)
    hu = paint(hu, ellipse(x, y, (0, vy), (15.5, 13.5)), 80 + 170 * bone)
    hu = paint(hu, ellipse(x, y, (0, vy + 26), (13, 11)), 650)
    hu = paint(hu, ellipse(x, y, (0, vy + 42), (4, 11)), 650)
    return paint(hu, ellipse(x, y, (0, vy + 25), (7.5, 7)), 15)


def ct_lungs(x: Image, y: Image, u: float, body: Trunk) -> tuple[Image, Image]:
    """Coverage of the lung fields and of the vessels seen inside them."""
    cy, a, b = body
    scale = 0.5 + 0.5 * float(np.sin(np.pi * (0.2 + 0.7 * u)))
    lungs = np.zeros_like(x)
    vessels = np.zeros_like(x)
    rng = np.random.default_rng(7)
    for side in (-1, 1):
        centre = (side * a * 0.36, cy - 2)
        axes = (a * 0.3 * scale * (1.05 if side < 0 else 0.95), b * 0.66 * scale)
        lungs = np.maximum(lungs, ellipse(x, y, centre, axes))
        radius, phase = rng.uniform(0.1, 0.85, 40), rng.uniform(0, 2 * np.pi, 40)
        phase += rng.normal(0, 0.6, 40) * u
        size = rng.uniform(1.2, 2.8, 40)
        for r, p, s in zip(radius, phase, size, strict=True):
            dot = (centre[0] + axes[0] * r * np.cos(p), centre[1] + axes[1] * r * np.sin(p))
            vessels = np.maximum(vessels, ellipse(x, y, dot, (s, s)))
    return lungs, vessels * lungs


def ct_mediastinum(hu: Image, x: Image, y: Image, u: float, body: Trunk) -> Image:
    """Heart with epicardial fat, great vessels, airway, oesophagus and liver dome."""
    cy, b = body.cy, body.b
    vy = cy + b - 47
    heart = bump(u, 0.2, 1.15) ** 0.5
    hu = paint(hu, ellipse(x, y, (22, cy - 12), (60 * heart, 48 * heart), -35), -90)
    hu = paint(hu, ellipse(x, y, (22, cy - 12), (55 * heart, 43 * heart), -35), 40)
    great = bump(u, -0.2, 0.6)
    hu = paint(hu, ellipse(x, y, (6, cy - 32), (15 * great, 15 * great)), 45)
    hu = paint(hu, ellipse(x, y, (-24, cy - 30), (9 * great, 9 * great)), 40)
    hu = paint(hu, ellipse(x, y, (20, vy - 14), (12, 12)), 45)
    hu = paint(hu, ellipse(x, y, (6, vy - 26), (7, 6)), 35)
    trachea = 1 - ramp(u, 0.25, 0.35)
    hu = paint(hu, ellipse(x, y, (0, vy - 40), (10 * trachea, 9 * trachea)), -1000)
    bronchi = bump(u, 0.28, 0.6)
    for side in (-1, 1):
        hu = paint(hu, ellipse(x, y, (side * 22, vy - 42), (6 * bronchi, 6 * bronchi)), -1000)
    liver = ramp(u, 0.65, 1.0)
    return paint(hu, ellipse(x, y, (-40, cy + 5), (95 * liver, 75 * liver), 15), 60)


def ct_slice(u: float, z: float, rng: np.random.Generator) -> NDArray[np.int16]:
    """Stored values (HU + 1024) of the chest phantom at relative depth ``u`` (0..1)."""
    x, y = grid(CT_SPACING)
    hu, body = ct_trunk(x, y, u)
    lungs, vessels = ct_lungs(x, y, u, body)
    hu = paint(paint(hu, lungs, -850), vessels, -20)
    hu = ct_mediastinum(hu, x, y, u, body)
    hu = ct_bones(hu, x, y, u, z, body)
    hu += rng.normal(0, 10, hu.shape) * (hu > -990)
    return (np.clip(np.rint(hu), -1024, 3071) + 1024).astype(np.int16)


def ct_dataset(study: Study, index: int, z: float, pixels: NDArray[np.int16]) -> Dataset:
    ds = base_dataset(study, "CT", CTImageStorage, 1, index + 1)
    ds.SeriesDescription = "Ngực 5mm trục" if study.charset == VIETNAM else "Thorax 5mm axial"
    ds.BodyPartExamined = "CHEST"
    ds.ManufacturerModelName = "Phantom CT 64"
    ds.FrameOfReferenceUID = uid(study.key, "frame-of-reference")
    add_axial_geometry(ds, CT_SPACING, CT_THICKNESS, z)
    ds.AcquisitionNumber = 1
    ds.KVP = 120
    ds.XRayTubeCurrent = 200
    ds.ExposureTime = 500
    ds.ConvolutionKernel = "STANDARD"
    ds.DataCollectionDiameter = 500
    ds.ReconstructionDiameter = CT_SPACING * SIZE
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    ds.WindowCenter = [40, -600]
    ds.WindowWidth = [400, 1500]
    ds.WindowCenterWidthExplanation = ["MEDIASTINUM", "LUNG"]
    set_pixels(ds, pixels, 16)
    return ds


def write_ct_chest() -> None:
    rng = np.random.default_rng(1)
    for i in range(CT_SLICES):
        z = CT_TOP_Z - i * CT_THICKNESS
        ds = ct_dataset(CT_STUDY, i, z, ct_slice(i / (CT_SLICES - 1), z, rng))
        save(ds, OUT_DIR / CT_STUDY.key / "series1" / f"{i + 1:03d}.dcm", ExplicitVRLittleEndian)


def write_ct_latin1() -> None:
    rng = np.random.default_rng(4)
    syntaxes = (ImplicitVRLittleEndian, RLELossless)
    for i, syntax in enumerate(syntaxes):
        z = CT_TOP_Z - (8 + i) * CT_THICKNESS
        ds = ct_dataset(LATIN1_STUDY, i, z, ct_slice((8 + i) / (CT_SLICES - 1), z, rng))
        save(ds, OUT_DIR / LATIN1_STUDY.key / "series1" / f"{i + 1:03d}.dcm", syntax)


# --------------------------------------------------------------------------- MR brain phantom

MR_SPACING = 0.9375
MR_SLICES = 16
MR_GAP = 6.0


def mr_head(x: Image, y: Image, z: float) -> tuple[Image, float, float]:
    """Scalp, skull (tables and diploe) and CSF rim of an ellipsoidal head."""
    s = float(np.sqrt(max(0.0, 1 - ((z - 15) / 82) ** 2)))
    a, b = 74 * s, 94 * s
    img = np.zeros_like(x)
    for inset, value in ((0, 900), (5, 40), (6.5, 420), (8, 40), (10, 180)):
        img = paint(img, ellipse(x, y, (0, 5), (a - inset, b - inset)), value)
    return img, a - 11, b - 11


def mr_brain(img: Image, x: Image, y: Image, z: float, axes: tuple[float, float]) -> Image:
    """Folded cortex, white matter, interhemispheric fissure and lateral ventricles."""
    theta = np.arctan2(y - 5, x)
    r = np.hypot(x / axes[0], (y - 5) / axes[1])
    folds = np.sin(11 * theta + 0.05 * z) + 0.6 * np.sin(23 * theta - 0.08 * z)
    edge = MR_SPACING / min(axes)
    brain = np.clip((0.97 + 0.015 * folds - r) / edge + 0.5, 0, 1)
    white = np.clip((0.74 + 0.05 * folds - r) / edge + 0.5, 0, 1)
    img = paint(paint(img, brain, 560), white, 780)
    fissure = np.clip((1.4 - abs(x)) / MR_SPACING, 0, 1) * (abs(y - 5) > 0.45 * axes[1]) * brain
    img = paint(img, fissure, 180)
    v = bump(z, 0, 55)
    for side in (-1, 1):
        img = paint(img, ellipse(x, y, (side * 9 * v, -14), (5.5 * v, 21 * v), side * 9), 180)
        img = paint(img, ellipse(x, y, (side * 15 * v, 20), (5 * v, 15 * v), -side * 16), 180)
    return paint(img, ellipse(x, y, (0, 6), (2.5 * v, 10 * v)), 180)


def mr_orbits(img: Image, x: Image, y: Image, z: float, front: float) -> Image:
    """Eye globes in orbital fat beside the nasal cavity, only in the lowest slices."""
    w = bump(z, -45, 0)
    img = paint(img, ellipse(x, y, (0, front + 20), (9 * w, 20 * w)), 20)
    for side in (-1, 1):
        img = paint(img, ellipse(x, y, (side * 30, front + 22), (19 * w, 17 * w)), 950)
        img = paint(img, ellipse(x, y, (side * 30, front + 18), (12 * w, 12 * w)), 150)
        img = paint(img, ellipse(x, y, (side * 30, front + 7), (5 * w, 2 * w)), 600)
    return img


def mr_slice(z: float, rng: np.random.Generator) -> NDArray[np.uint16]:
    """T1-like axial brain slice at ``z`` mm with a coil bias field and Rician noise."""
    x, y = grid(MR_SPACING)
    img, ax, ay = mr_head(x, y, z)
    img = mr_brain(img, x, y, z, (ax, ay))
    img = mr_orbits(img, x, y, z, front=5 - ay - 11)
    img *= 1 + 0.12 * y / 120 - 0.1 * (x / 120) ** 2
    noisy = np.hypot(img + rng.normal(0, 12, img.shape), rng.normal(0, 12, img.shape))
    return np.clip(np.rint(noisy), 0, 4095).astype(np.uint16)


def write_mr_brain() -> None:
    rng = np.random.default_rng(2)
    for i in range(MR_SLICES):
        z = -25 + i * MR_GAP
        ds = base_dataset(MR_STUDY, "MR", MRImageStorage, 1, i + 1)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
        ds.SeriesDescription = "T1 SE trục"
        ds.BodyPartExamined = "HEAD"
        ds.ManufacturerModelName = "Phantom MR 1.5T"
        ds.FrameOfReferenceUID = uid(MR_STUDY.key, "frame-of-reference")
        add_axial_geometry(ds, MR_SPACING, 5.0, z)
        ds.SpacingBetweenSlices = MR_GAP
        ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = "SE", "NONE", ""
        ds.MRAcquisitionType, ds.SequenceName = "2D", "se2d1"
        ds.RepetitionTime, ds.EchoTime, ds.EchoTrainLength = 500, 12, 1
        ds.NumberOfAverages, ds.FlipAngle = 2, 90
        ds.ImagingFrequency, ds.ImagedNucleus, ds.MagneticFieldStrength = 63.87, "1H", 1.5
        ds.AcquisitionNumber = 1
        ds.WindowCenter, ds.WindowWidth = 520, 1000
        set_pixels(ds, mr_slice(z, rng), 12)
        save(ds, OUT_DIR / MR_STUDY.key / "series1" / f"{i + 1:03d}.dcm", JPEGLSLossless)


# --------------------------------------------------------------------------- XA cine phantom

XA_FRAMES = 30
XA_FPS = 15
Segments = NDArray[np.float64]  # rows: x0, y0, x1, y1, radius, path length at start


def vessel_tree(rng: np.random.Generator) -> Segments:
    """A bifurcating tree of gently curving vessels, as straight pieces in pixel units."""
    rows: list[list[float]] = []
    stack = [(70.0, 45.0, np.radians(55.0), 55.0, 4.5, 0.0, 5)]
    while stack:
        px, py, angle, length, radius, path, depth = stack.pop()
        for _ in range(4):
            angle += rng.normal(0, 0.15)
            qx, qy = px + length / 4 * np.cos(angle), py + length / 4 * np.sin(angle)
            rows.append([px, py, qx, qy, radius, path])
            px, py, path = qx, qy, path + length / 4
        if depth:
            for turn in (-1, 1):
                spread = turn * rng.uniform(0.35, 0.65)
                child = (angle + spread, length * 0.78, max(radius * 0.72, 0.9), path, depth - 1)
                stack.append((px, py, *child))
    return np.array(rows)


def xa_background() -> Image:
    """Fluoroscopic background: heart shadow, spine, diaphragm, round collimator."""
    x, y = grid(1.0)
    x, y = x + 128, y + 128
    bg = 185 - 40 * np.exp(-(((x - 150) / 70) ** 2 + ((y - 140) / 60) ** 2))
    bg -= 16 * np.exp(-(((x - 120) / 16) ** 4))
    bg -= 45 * np.clip((y - 205 - 18 * np.sin(x / 60)) / 6, 0, 1)
    return bg * np.clip((124 - np.hypot(x - 128, y - 128)) / 2, 0, 1)


def draw_segments(segs: Segments, front: float, clear: float) -> Image:
    """Opacified chord thickness (pixels) of every vessel given contrast fronts."""
    out = np.zeros((SIZE, SIZE))
    for x0, y0, x1, y1, r, start in segs:
        c0, c1 = int(max(min(x0, x1) - r - 2, 0)), int(min(max(x0, x1) + r + 3, SIZE))
        r0, r1 = int(max(min(y0, y1) - r - 2, 0)), int(min(max(y0, y1) + r + 3, SIZE))
        if c0 >= c1 or r0 >= r1:
            continue
        yy, xx = np.mgrid[r0:r1, c0:c1].astype(np.float64)
        dx, dy = x1 - x0, y1 - y0
        length = np.hypot(dx, dy)
        t = np.clip(((xx - x0) * dx + (yy - y0) * dy) / max(length**2, 1e-9), 0, 1)
        d2 = (xx - x0 - t * dx) ** 2 + (yy - y0 - t * dy) ** 2
        chord = 2 * np.sqrt(np.clip(r * r - d2, 0, None))
        s = start + t * length
        fill = np.clip((front - s) / 8 + 0.5, 0, 1) * np.clip((s - clear) / 8 + 0.5, 0, 1)
        np.maximum(out[r0:r1, c0:c1], chord * fill, out=out[r0:r1, c0:c1])
    return out


def xa_frames() -> NDArray[np.uint8]:
    """Cine: 4 mask frames, contrast filling the tree, then washout; the heart beats."""
    rng = np.random.default_rng(3)
    tree = vessel_tree(rng)
    catheter = np.array([[0.0, 20.0, 40.0, 30.0, 1.4, 0.0], [40.0, 30.0, 70.0, 45.0, 1.4, 0.0]])
    total = tree[:, 5].max() + 60
    bg = xa_background()
    frames = np.empty((XA_FRAMES, SIZE, SIZE), dtype=np.uint8)
    for f in range(XA_FRAMES):
        beat = 1 - 0.05 * (0.5 - 0.5 * np.cos(2 * np.pi * f / 12))
        segs = tree.copy()
        segs[:, [0, 2]] = 150 + (segs[:, [0, 2]] - 150) * beat
        segs[:, [1, 3]] = 140 + (segs[:, [1, 3]] - 140) * beat
        front, clear = total * (f - 4) / 12, total * (f - 22) / 12 - 40
        absorb = draw_segments(segs, front, clear) + draw_segments(catheter, 1e9, -1e9)
        img = bg * np.exp(-0.15 * absorb) + rng.normal(0, 2.0, bg.shape) * (bg > 0)
        frames[f] = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return frames


def write_xa_cine() -> None:
    ds = base_dataset(XA_STUDY, "XA", XRayAngiographicImageStorage, 1, 1)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "SINGLE PLANE"]
    ds.SeriesDescription = "ĐMV trái RAO 30"
    ds.BodyPartExamined = "HEART"
    ds.ManufacturerModelName = "Phantom Angio"
    ds.FrameTime = round(1000 / XA_FPS, 2)
    ds.CineRate = ds.RecommendedDisplayFrameRate = XA_FPS
    ds.FrameIncrementPointer = Tag("FrameTime")
    ds.StartTrim, ds.StopTrim = 1, XA_FRAMES
    ds.PixelIntensityRelationship = "LIN"
    ds.RadiationSetting = "GR"
    ds.KVP, ds.XRayTubeCurrent, ds.ExposureTime = 78, 620, 6
    ds.PositionerMotion = "STATIC"
    ds.PositionerPrimaryAngle, ds.PositionerSecondaryAngle = -30, 0
    ds.DistanceSourceToDetector, ds.DistanceSourceToPatient = 1100, 760
    ds.ImagerPixelSpacing = [0.6, 0.6]
    ds.IntensifierSize = 200
    ds.WindowCenter, ds.WindowWidth = 128, 256
    set_pixels(ds, xa_frames(), 8)
    save(ds, OUT_DIR / XA_STUDY.key / "series1" / "001.dcm", JPEG2000Lossless)


def main() -> None:
    for old in OUT_DIR.rglob("*.dcm"):
        old.unlink()
    write_ct_chest()
    write_ct_latin1()
    write_mr_brain()
    write_xa_cine()
    total = sum(p.stat().st_size for p in OUT_DIR.rglob("*.dcm"))
    print(f"wrote sample studies to {OUT_DIR} ({total / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
