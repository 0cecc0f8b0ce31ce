"""Synthetic CT series for the ingest benchmark, generated once into a cache folder.

Each slice is a 512 x 512 signed 16-bit axial image of a simple body phantom (soft
tissue, lungs, spine, noise) with the header a CT console sends: patient, study,
series, equipment, acquisition and image-plane modules, Vietnamese names in
ISO_IR 192, Explicit VR Little Endian, about 526 kB per file.

A series folder is complete when it holds a ``.complete`` marker; an interrupted
generation is thrown away and redone on the next run.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

GENERATOR_VERSION = 1
SIZE = 512
SLICE_MM = 0.625
MARKER = ".complete"

PATIENTS = (
    ("Nguyễn^Văn An", "M", "19580312"),
    ("Trần^Thị Bích Ngọc", "F", "19671103"),
    ("Lê^Hoàng Phúc", "M", "19820527"),
    ("Phạm^Thị Thu Hà", "F", "19490918"),
    ("Đặng^Quốc Bảo", "M", "19750130"),
)
HOSPITAL = "Bệnh viện Đa khoa tỉnh Hà Giang"


@dataclass(frozen=True)
class CtSeries:
    """A generated series on disk."""

    folder: Path
    files: int
    total_bytes: int


def ensure_series(cache: Path, name: str, slices: int, patient: int) -> CtSeries:
    """Return the cached series ``name`` of ``slices`` slices, generating it if missing."""
    folder = cache / f"ct-v{GENERATOR_VERSION}-{name}-{slices}"
    if not (folder / MARKER).exists():
        _generate(folder, slices, patient)
    files = sorted(folder.glob("*.dcm"))
    return CtSeries(folder, len(files), sum(f.stat().st_size for f in files))


def _generate(folder: Path, slices: int, patient: int) -> None:
    print(f"generating {slices} CT slices in {folder} ...", flush=True)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    ds = _series_header(patient, slices)
    phantom = _Phantom(seed=patient)
    for index in range(slices):
        _set_slice(ds, index, slices, phantom)
        dcmwrite(folder / f"CT{index + 1:05d}.dcm", ds, enforce_file_format=True)
    (folder / MARKER).write_text(f"{slices}\n")


def _series_header(patient: int, slices: int) -> Dataset:
    name, sex, birth = PATIENTS[patient % len(PATIENTS)]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    _patient_study(ds, patient, name, sex, birth)
    _equipment_acquisition(ds, slices)
    _image_pixel(ds)
    return ds


def _patient_study(ds: Dataset, patient: int, name: str, sex: str, birth: str) -> None:
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = "20250314"
    ds.StudyTime = "101502.000000"
    ds.SeriesTime = "101733.000000"
    ds.AccessionNumber = f"HG25{patient:06d}"
    ds.Modality = "CT"
    ds.Manufacturer = "GE MEDICAL SYSTEMS"
    ds.InstitutionName = HOSPITAL
    ds.InstitutionAddress = "Tổ 1, phường Nguyễn Trãi, TP Hà Giang"
    ds.ReferringPhysicianName = "Vũ^Minh Tuấn^^BS."
    ds.StationName = "HG-CT01"
    ds.StudyDescription = "CT NGỰC CÓ TIÊM THUỐC"
    ds.SeriesDescription = "Ngực 0.625mm STANDARD"
    ds.OperatorsName = "Hoàng^Văn Long"
    ds.ManufacturerModelName = "Revolution EVO"
    ds.PatientName = name
    ds.PatientID = f"HG{patient:08d}"
    ds.IssuerOfPatientID = "BV-TINH-HAGIANG"
    ds.PatientBirthDate = birth
    ds.PatientSex = sex
    ds.PatientAge = f"{2025 - int(birth[:4]):03d}Y"
    ds.PatientSize = "1.65"
    ds.PatientWeight = "58"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.FrameOfReferenceUID = generate_uid()
    ds.StudyID = f"{4100 + patient}"
    ds.SeriesNumber = 3
    ds.AcquisitionNumber = 1
    request = Dataset()
    request.RequestedProcedureID = f"RP{patient:06d}"
    request.ScheduledProcedureStepID = f"SPS{patient:06d}"
    ds.RequestAttributesSequence = [request]


def _equipment_acquisition(ds: Dataset, slices: int) -> None:
    ds.BodyPartExamined = "CHEST"
    ds.ScanOptions = "HELICAL MODE"
    ds.SliceThickness = str(SLICE_MM)
    ds.KVP = "120"
    ds.DataCollectionDiameter = "500.0"
    ds.SoftwareVersions = "rev_15.1"
    ds.ProtocolName = "5.1 NGUC CAN QUANG"
    ds.ReconstructionDiameter = "360.0"
    ds.DistanceSourceToDetector = "946.7"
    ds.DistanceSourceToPatient = "538.5"
    ds.GantryDetectorTilt = "0.0"
    ds.TableHeight = "164.5"
    ds.RotationDirection = "CW"
    ds.ExposureTime = "500"
    ds.XRayTubeCurrent = "220"
    ds.Exposure = "8"
    ds.FilterType = "BODY FILTER"
    ds.GeneratorPower = "26400"
    ds.FocalSpots = "0.7"
    ds.ConvolutionKernel = "STANDARD"
    ds.PatientPosition = "HFS"
    ds.SpiralPitchFactor = 0.984375
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PositionReferenceIndicator = "SN"
    ds.PixelSpacing = [0.703125, 0.703125]
    ds.ImagesInAcquisition = slices


def _image_pixel(ds: Dataset) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = SIZE
    ds.Columns = SIZE
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.WindowCenter = ["40", "-600"]
    ds.WindowWidth = ["400", "1500"]
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"


def _set_slice(ds: Dataset, index: int, slices: int, phantom: _Phantom) -> None:
    z = -index * SLICE_MM
    uid = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.SOPInstanceUID = uid
    ds.InstanceNumber = index + 1
    ds.ContentTime = f"1017{33 + index // 100 % 27:02d}.{index % 100:02d}0000"
    ds.ImagePositionPatient = [-180.0, -180.0, round(z, 3)]
    ds.SliceLocation = f"{z:.3f}"
    ds.PixelData = phantom.slice(index / max(slices - 1, 1)).tobytes()
    ds["PixelData"].VR = "OW"


class _Phantom:
    """A chest-like phantom in Hounsfield units whose lungs change along z."""

    def __init__(self, seed: int) -> None:
        axis = np.linspace(-1.0, 1.0, SIZE, dtype=np.float32)
        self.x, self.y = np.meshgrid(axis, axis)
        self.rng = np.random.default_rng(seed)
        body = (self.x / 0.85) ** 2 + (self.y / 0.62) ** 2 < 1
        spine = (self.x**2 + (self.y - 0.38) ** 2) < 0.012
        self.base = np.where(body, 40.0, -1000.0).astype(np.float32)
        self.base[spine] = 700.0
        self.body = body

    def slice(self, position: float) -> NDArray[np.int16]:
        lung = 0.32 * np.sin(np.pi * min(max(position, 0.05), 0.95))
        lungs = ((np.abs(self.x) - 0.38) / lung) ** 2 + (self.y / (lung * 1.4)) ** 2 < 1
        image = self.base.copy()
        image[lungs & self.body] = -820.0
        image += self.rng.normal(0.0, 12.0, image.shape).astype(np.float32)
        return image.astype(np.int16)
