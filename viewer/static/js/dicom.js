// Reading DICOM JSON (PS3.18 F.2) and formatting values for people.
import { t } from "./i18n.js";

export const TAG = {
  SeriesInstanceUID: "0020000E",
  SOPInstanceUID: "00080018",
  PatientName: "00100010",
  PatientID: "00100020",
  PatientBirthDate: "00100030",
  PatientSex: "00100040",
  PatientAge: "00101010",
  StudyDate: "00080020",
  StudyTime: "00080030",
  StudyDescription: "00081030",
  InstitutionName: "00080080",
  Modality: "00080060",
  BodyPartExamined: "00180015",
  SeriesNumber: "00200011",
  SeriesDescription: "0008103E",
  NumberOfSeriesRelatedInstances: "00201209",
  NumberOfFrames: "00280008",
  SliceLocation: "00201041",
  Rows: "00280010",
  Columns: "00280011",
  WindowCenter: "00281050",
  WindowWidth: "00281051",
  BitsStored: "00280101",
  RescaleIntercept: "00281052",
  RescaleSlope: "00281053",
  PixelRepresentation: "00280103",
  RecommendedDisplayFrameRate: "00082144",
  CineRate: "00180040",
  FrameTime: "00181063",
  PhotometricInterpretation: "00280004",
};

export function values(ds, keyword) {
  const element = ds?.[TAG[keyword]];
  return element?.Value ?? [];
}

export function first(ds, keyword) {
  return values(ds, keyword)[0];
}

export function text(ds, keyword) {
  const value = first(ds, keyword);
  if (value === undefined || value === null) return "";
  if (typeof value === "object") {
    // A PN's groups (PS3.5 6.2: alphabetic=ideographic=phonetic), as the index holds it.
    const groups = [value.Alphabetic, value.Ideographic, value.Phonetic].map((g) => g ?? "");
    return personName(groups.join("=").replace(/=+$/, ""));
  }
  return String(value);
}

export function number(ds, keyword) {
  const value = Number(first(ds, keyword));
  return Number.isFinite(value) ? value : null;
}

// "Nguyễn^Văn An" -> "Nguyễn Văn An": family name first, as Vietnamese names are said.
export function personName(value) {
  return String(value ?? "").split("^").filter(Boolean).join(" ").trim();
}

export function formatDate(da) {
  return /^\d{8}$/.test(da || "") ? `${da.slice(0, 4)}-${da.slice(4, 6)}-${da.slice(6, 8)}` : da || "";
}

export function formatTime(tm) {
  return /^\d{4}/.test(tm || "") ? `${tm.slice(0, 2)}:${tm.slice(2, 4)}` : "";
}

// An instant from our JSON API (ISO 8601) as local "YYYY-MM-DD HH:MM".
export function formatInstant(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  const two = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${two(d.getMonth() + 1)}-${two(d.getDate())} ${two(d.getHours())}:${two(d.getMinutes())}`;
}

// Age as "045Y" (PatientAge, AS) or from the birth and study dates.
export function formatAge(age, birth, studyDate) {
  const match = /^(\d{3})([DWMY])$/.exec(age || "");
  if (match) return `${Number(match[1])}${match[2] === "Y" ? "" : match[2].toLowerCase()}`;
  if (/^\d{8}$/.test(birth || "") && /^\d{8}$/.test(studyDate || "")) {
    let years = Number(studyDate.slice(0, 4)) - Number(birth.slice(0, 4));
    if (studyDate.slice(4) < birth.slice(4)) years -= 1;
    return years >= 0 ? String(years) : "";
  }
  return "";
}

export function formatSex(sex) {
  return ["M", "F", "O"].includes(sex) ? t(`sex.${sex}`) : "";
}
