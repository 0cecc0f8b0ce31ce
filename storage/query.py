"""The query planner: one matcher for QIDO-RS and C-FIND.

A :class:`Query` names a level (PS3.4 C.6: PATIENT, STUDY, SERIES, IMAGE), the
match keys and the attributes to return; :func:`search` turns it into one SQL
statement over the index and yields one ``{keyword: value}`` mapping per match.
Matching follows PS3.4 C.2.2.2:

- universal match: an empty value matches everything and only asks for the
  attribute to be returned;
- single value: exact, except person names, which always compare folded
  (case- and accent-insensitive, ``đ`` -> ``d``) and match the family name;
- wildcards ``*`` and ``?`` (SQL ``LIKE`` with its own characters escaped);
- UID lists separated by ``\\`` or ``,``;
- ranges ``A-B``, ``A-``, ``-B`` on DA and TM;
- multi-valued computed attributes (ModalitiesInStudy) match if any value does.

``fuzzy`` (QIDO ``fuzzymatching=true``) lets a person-name value match the start
of any name component: ``van`` finds ``Nguyễn^Văn An``.

Bad values raise :class:`QueryError` (a 400 or a C-FIND failure), never a broader
result than asked for.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from sqlalchemy import ColumnElement, Select, and_, exists, false, func, or_, select, true
from sqlalchemy.orm import InstrumentedAttribute, Session, aliased
from sqlalchemy.orm.util import AliasedClass

from pacs.charset import NAME_WORD_LENGTH, search_key
from storage.header import is_valid_uid
from storage.models import Instance, Patient, PatientNameWord, Series, Study
from storage.scope import EVERYTHING, Scope, visible_studies


class Level(StrEnum):
    PATIENT = "PATIENT"
    STUDY = "STUDY"
    SERIES = "SERIES"
    IMAGE = "IMAGE"


_DEPTH = {Level.PATIENT: 0, Level.STUDY: 1, Level.SERIES: 2, Level.IMAGE: 3}


class QueryError(ValueError):
    """A query the archive refuses (unknown key, malformed value)."""


@dataclass(frozen=True)
class Attribute:
    """An attribute the index can match on and return."""

    keyword: str
    level: Level
    column: InstrumentedAttribute[Any]
    key_column: InstrumentedAttribute[Any] | None = None  # folded twin for PN
    multi_valued: bool = False  # stored backslash-joined

    @property
    def vr(self) -> str:
        return str(dictionary_VR(self.keyword))

    @property
    def tag(self) -> int:
        return int(tag_for_keyword(self.keyword))  # type: ignore[arg-type]


def _attributes() -> dict[str, Attribute]:
    a = Attribute
    items = [
        a("PatientName", Level.PATIENT, Patient.patient_name, Patient.patient_name_key),
        a("PatientID", Level.PATIENT, Patient.patient_id),
        a("IssuerOfPatientID", Level.PATIENT, Patient.issuer),
        a("PatientBirthDate", Level.PATIENT, Patient.patient_birth_date),
        a("PatientBirthTime", Level.PATIENT, Patient.patient_birth_time),
        a("PatientSex", Level.PATIENT, Patient.patient_sex),
        a("OtherPatientIDs", Level.PATIENT, Patient.other_patient_ids, multi_valued=True),
        a("EthnicGroup", Level.PATIENT, Patient.ethnic_group),
        a("PatientComments", Level.PATIENT, Patient.patient_comments),
        a("StudyInstanceUID", Level.STUDY, Study.study_instance_uid),
        a("StudyDate", Level.STUDY, Study.study_date),
        a("StudyTime", Level.STUDY, Study.study_time),
        a("AccessionNumber", Level.STUDY, Study.accession_number),
        a("StudyID", Level.STUDY, Study.study_id),
        a("StudyDescription", Level.STUDY, Study.study_description),
        a(
            "ReferringPhysicianName",
            Level.STUDY,
            Study.referring_physician_name,
            Study.referring_physician_name_key,
        ),
        a("TimezoneOffsetFromUTC", Level.STUDY, Study.timezone_offset_from_utc),
        a("PatientAge", Level.STUDY, Study.patient_age),
        a("PatientSize", Level.STUDY, Study.patient_size),
        a("PatientWeight", Level.STUDY, Study.patient_weight),
        a("ModalitiesInStudy", Level.STUDY, Study.modalities_in_study, multi_valued=True),
        a("SOPClassesInStudy", Level.STUDY, Study.sop_classes_in_study, multi_valued=True),
        a("NumberOfStudyRelatedSeries", Level.STUDY, Study.number_of_series),
        a("NumberOfStudyRelatedInstances", Level.STUDY, Study.number_of_instances),
        a("SeriesInstanceUID", Level.SERIES, Series.series_instance_uid),
        a("Modality", Level.SERIES, Series.modality),
        a("SeriesNumber", Level.SERIES, Series.series_number),
        a("SeriesDescription", Level.SERIES, Series.series_description),
        a("SeriesDate", Level.SERIES, Series.series_date),
        a("SeriesTime", Level.SERIES, Series.series_time),
        a("BodyPartExamined", Level.SERIES, Series.body_part_examined),
        a("Laterality", Level.SERIES, Series.laterality),
        a("ProtocolName", Level.SERIES, Series.protocol_name),
        a("StationName", Level.SERIES, Series.station_name),
        a("InstitutionName", Level.SERIES, Series.institution_name),
        a("Manufacturer", Level.SERIES, Series.manufacturer),
        a(
            "PerformedProcedureStepStartDate",
            Level.SERIES,
            Series.performed_procedure_step_start_date,
        ),
        a(
            "PerformedProcedureStepStartTime",
            Level.SERIES,
            Series.performed_procedure_step_start_time,
        ),
        a("NumberOfSeriesRelatedInstances", Level.SERIES, Series.number_of_instances),
        a("SOPInstanceUID", Level.IMAGE, Instance.sop_instance_uid),
        a("SOPClassUID", Level.IMAGE, Instance.sop_class_uid),
        a("InstanceNumber", Level.IMAGE, Instance.instance_number),
        a("ContentDate", Level.IMAGE, Instance.content_date),
        a("ContentTime", Level.IMAGE, Instance.content_time),
        a("Rows", Level.IMAGE, Instance.rows),
        a("Columns", Level.IMAGE, Instance.columns),
        a("BitsAllocated", Level.IMAGE, Instance.bits_allocated),
        a("NumberOfFrames", Level.IMAGE, Instance.number_of_frames),
        a("PhotometricInterpretation", Level.IMAGE, Instance.photometric_interpretation),
        a("SliceLocation", Level.IMAGE, Instance.slice_location),
        a("AvailableTransferSyntaxUID", Level.IMAGE, Instance.transfer_syntax_uid),
    ]
    return {item.keyword: item for item in items}


ATTRIBUTES = _attributes()

# What a query at each level returns without being asked (PS3.18 Table 10.6.3-3/4/5
# and PS3.4 C.6.1.1), beyond its match keys.
DEFAULT_RETURN: dict[Level, tuple[str, ...]] = {
    Level.PATIENT: ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate",
                    "PatientSex"),
    Level.STUDY: (
        "StudyDate", "StudyTime", "AccessionNumber", "ModalitiesInStudy",
        "ReferringPhysicianName", "TimezoneOffsetFromUTC", "PatientName", "PatientID",
        "IssuerOfPatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyID",
        "StudyDescription", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
    ),
    Level.SERIES: (
        "Modality", "SeriesDescription", "SeriesInstanceUID", "SeriesNumber",
        "NumberOfSeriesRelatedInstances", "PerformedProcedureStepStartDate",
        "PerformedProcedureStepStartTime", "TimezoneOffsetFromUTC", "BodyPartExamined",
        "StudyInstanceUID",
    ),
    Level.IMAGE: (
        "SOPClassUID", "SOPInstanceUID", "InstanceNumber", "Rows", "Columns", "BitsAllocated",
        "NumberOfFrames", "AvailableTransferSyntaxUID", "StudyInstanceUID", "SeriesInstanceUID",
    ),
}  # fmt: skip

_MODEL_OF = {
    Level.PATIENT: Patient,
    Level.STUDY: Study,
    Level.SERIES: Series,
    Level.IMAGE: Instance,
}
_ORDER = {
    Level.PATIENT: (Patient.patient_name_key, Patient.id),
    Level.STUDY: (Study.study_date.desc(), Study.study_time.desc(), Study.id.desc()),
    Level.SERIES: (Series.series_number, Series.id),
    Level.IMAGE: (Instance.instance_number, Instance.id),
}
# A name prefix or fuzzy word matching at most this many names is searched from the
# names (then sorted), not by walking the date order (:func:`_few_names`); around
# here the two cost the same for a user who sees everything (bench/authz_qido.py).
_FEW_NAMES = 800
_NOT_IN_A_WORD = re.compile(r"[\^= *?]")
_DATE = re.compile(r"\d{8}")
_TIME = re.compile(r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?")


@dataclass
class Query:
    """A search at one level with match keys ``{keyword: value}``."""

    level: Level
    match: dict[str, str] = field(default_factory=dict)
    include: set[str] = field(default_factory=set)
    include_all: bool = False
    # QIDO-RS returns a default set of attributes (PS3.18 Table 10.6.3-3/4/5);
    # C-FIND returns exactly the keys of its identifier (PS3.4 C.4.1.1.3.2).
    with_defaults: bool = True
    fuzzy: bool = False
    limit: int | None = None
    offset: int = 0
    # Whose query it is: only studies this scope may see match (storage.scope).
    scope: Scope = EVERYTHING


def resolve_keyword(name: str) -> str:
    """A keyword for ``name`` given as a keyword or a tag (``00100010``); else QueryError."""
    if re.fullmatch(r"[0-9A-Fa-f]{8}", name):
        keyword = keyword_for_tag(int(name, 16))
        if keyword:
            return str(keyword)
    elif tag_for_keyword(name) is not None:
        return name
    raise QueryError(f"{name!r} is not a DICOM keyword or tag")


def returned_keywords(query: Query) -> list[str]:
    """The attributes each result carries, in a stable order."""
    depth = _DEPTH[query.level]
    if query.include_all:
        wanted = [k for k, a in ATTRIBUTES.items() if _DEPTH[a.level] <= depth]
    else:
        defaults = DEFAULT_RETURN[query.level] if query.with_defaults else ()
        wanted = [*defaults, *query.match, *sorted(query.include)]
    seen: dict[str, None] = {}
    for keyword in wanted:
        attribute = ATTRIBUTES.get(keyword)
        if attribute is not None and _DEPTH[attribute.level] <= depth:
            seen[keyword] = None
    return list(seen)


def search(session: Session, query: Query, *, batch: int | None = None) -> Iterator[dict[str, Any]]:
    """Run ``query``; yields ``{keyword: value}`` per match (``limit`` + ``offset`` applied).

    With ``batch`` rows are fetched that many at a time (a server-side cursor on
    PostgreSQL), so a C-FIND over a whole archive streams in flat memory.
    """
    keywords = returned_keywords(query)
    lateral = session.get_bind().dialect.name == "postgresql"
    statement = build_statement(query, keywords, lateral=lateral)
    statement = statement.where(*_few_names(session, query))
    if batch is not None:
        statement = statement.execution_options(yield_per=batch)
    for row in session.execute(statement):
        yield dict(zip(keywords, row, strict=True))


def build_statement(query: Query, keywords: Sequence[str], *, lateral: bool = False) -> Select[Any]:
    """The statement of ``query`` returning ``keywords``.

    ``lateral`` (PostgreSQL): a page that matches nothing of the patient looks up
    each result's patient by its id (:data:`_PATIENT_OF_STUDY`).
    """
    patient = _patient_source(query, keywords, lateral)
    columns = [_returned(ATTRIBUTES[k], patient) for k in keywords]
    statement = select(*columns).select_from(_MODEL_OF[query.level])
    statement = _join_upwards(statement, query.level, patient)
    for keyword, value in query.match.items():
        statement = statement.where(_condition(keyword, value, query))
    if not query.scope.everything:
        statement = statement.where(_visible(query))
    statement = statement.order_by(*_ORDER[query.level])
    if query.offset:
        statement = statement.offset(query.offset)
    if query.limit is not None:
        statement = statement.limit(query.limit)
    return statement


def _few_names(session: Session, query: Query) -> list[ColumnElement[bool]]:
    """Conditions that let the database start from the names, for the person-name
    matches of ``query``; they restate the match, so results never change.

    A name match is a ``LIKE``, which SQLite does not answer from an index (its LIKE
    ignores case, the index does not; a fuzzy match looks inside the name), so a
    study search walks the studies newest first, testing each one's patient. For a
    name few patients have, that walk goes through the whole archive to fill a page
    (3 ms at 10,000 studies, a hundred times that at a million), and further still
    for a user who sees part of it (bench/authz_qido.py). So:

    - a prefix (``ngu*``) that at most :data:`_FEW_NAMES` names start with (counted
      with a ``LIMIT``) is also given as an index range (``key >= 'ngu' AND key <
      'ngv'``), which SQLite then starts from; it cannot tell a rare prefix from
      ``ng`` (40 % of Vietnamese names) itself, having no histograms;
    - a fuzzy word (``van``, ``hai``) that at most :data:`_FEW_NAMES` name words
      start with is also given as the patients having such a word in
      ``patient_name_words`` (a common word fills a page soon enough on the walk).

    PostgreSQL plans these matches itself: it answers a prefix ``LIKE`` from its
    varchar_pattern_ops index, and given the words too it chose a hash join over
    every patient, slower than its walk (7.3 against 3.8 ms for ``kim``).
    """
    if session.get_bind().dialect.name != "sqlite":
        return []
    narrowed = []
    for keyword, value in query.match.items():
        attribute = ATTRIBUTES.get(keyword)
        column = attribute.key_column if attribute else None
        if column is None or value == "":
            continue
        key = search_key(value)
        prefix = _plain_prefix(key)
        if prefix is not None:
            within = _starting_with(column, prefix)
            if _few(session, select(column).where(within)):
                narrowed.append(within)
        elif query.fuzzy and keyword == "PatientName" and _is_one_word(key):
            within = _starting_with(PatientNameWord.word, key)
            if _few(session, select(PatientNameWord.word).where(within)):
                named = select(PatientNameWord.patient_pk).where(within)
                narrowed.append(Patient.id.in_(named))
    return narrowed


def _starting_with(column: InstrumentedAttribute[str], prefix: str) -> ColumnElement[bool]:
    return and_(column >= prefix, column < prefix[:-1] + chr(ord(prefix[-1]) + 1))


def _few(session: Session, rows: Select[Any]) -> bool:
    """Does ``rows`` hold at most :data:`_FEW_NAMES` rows? (Reads at most one more.)"""
    capped = rows.limit(_FEW_NAMES + 1).subquery()
    return (session.scalar(select(func.count()).select_from(capped)) or 0) <= _FEW_NAMES


def _is_one_word(key: str) -> bool:
    """A word as :func:`pacs.charset.name_words` stores them, and a prefix of one."""
    return (
        0 < len(key) <= NAME_WORD_LENGTH
        and not _NOT_IN_A_WORD.search(key)
        and key[-1] != chr(0x10FFFF)
    )


def _plain_prefix(key: str) -> str | None:
    """``abc`` for ``abc*`` (no other wildcard), else None."""
    stem = key.removesuffix("*")
    if stem == key or not stem or "*" in stem or "?" in stem or stem[-1] == chr(0x10FFFF):
        return None
    return stem


def _visible(query: Query) -> ColumnElement[bool]:
    if query.level is Level.PATIENT:  # a patient is visible through a visible study
        return exists().where(Study.patient_pk == Patient.id, visible_studies(query.scope))
    return visible_studies(query.scope, named=bool(query.match.get("StudyInstanceUID")))


# Each study's patient, as a LATERAL subquery (its LIMIT keeps PostgreSQL from
# turning it back into a plain join). A page of studies filtered by date, modality or
# site then looks up its patients one by one through the primary key, where a plain
# join let PostgreSQL hash every patient of the archive for a page of 90 studies when
# it read the studies through a BitmapOr (a scoped user's date range): 4.3 against
# 1.1 ms in the SQL, 0.4 ms for an administrator, whose page walks the date index
# (bench/authz_qido.py, StudyDate range of the central hospital's radiologist).
_PATIENT_OF_STUDY: AliasedClass[Patient] = aliased(
    Patient,
    select(Patient).where(Patient.id == Study.patient_pk).limit(1).lateral("patient_of_study"),
)


def _patient_source(
    query: Query, keywords: Sequence[str], lateral: bool
) -> type[Patient] | AliasedClass[Patient] | None:
    """Where the patient attributes of ``query``'s results come from: ``None`` when it
    neither returns nor matches any (the series of a study), the lateral lookup for
    a page (``limit``) that only returns them, else a join. A whole-archive C-FIND
    stream joins: a hash of all patients is then cheaper than one lookup per study."""
    if query.level is Level.PATIENT:
        return Patient
    matched = any(value != "" and _of_patient(k) for k, value in query.match.items())
    if not matched and not any(_of_patient(k) for k in keywords):
        return None
    if lateral and not matched and query.limit is not None:
        return _PATIENT_OF_STUDY
    return Patient


def _of_patient(keyword: str) -> bool:
    attribute = ATTRIBUTES.get(keyword)
    return attribute is not None and attribute.level is Level.PATIENT


def _returned(attribute: Attribute, patient: type[Patient] | AliasedClass[Patient] | None) -> Any:
    """The column returning ``attribute``, a patient's from ``patient``."""
    if attribute.level is Level.PATIENT and patient is not None:
        return getattr(patient, attribute.column.key)
    return attribute.column


def _join_upwards(
    statement: Select[Any], level: Level, patient: type[Patient] | AliasedClass[Patient] | None
) -> Select[Any]:
    if _DEPTH[level] >= 3:
        statement = statement.join(Series, Instance.series_pk == Series.id)
    if _DEPTH[level] >= 2:
        statement = statement.join(Study, Series.study_pk == Study.id)
    if _DEPTH[level] >= 1 and patient is not None:
        on = true() if patient is _PATIENT_OF_STUDY else Study.patient_pk == Patient.id
        statement = statement.join(patient, on)
    return statement


def _condition(keyword: str, value: str, query: Query) -> ColumnElement[bool]:
    attribute = ATTRIBUTES.get(keyword)
    if attribute is None:
        raise QueryError(f"{keyword} is not a supported match key")
    if _DEPTH[attribute.level] > _DEPTH[query.level]:
        raise QueryError(f"{keyword} is below the {query.level.value} level")
    if value == "":
        return true()  # universal match: return it, do not filter
    vr = attribute.vr
    if vr == "UI":
        return _uid_list(attribute, value)
    if vr in ("DA", "TM"):
        return _range(attribute, value, vr)
    if attribute.column.type.python_type in (int, float):
        return _number(attribute, value)
    if vr == "PN":
        return _person_name(attribute, value, query.fuzzy)
    if attribute.multi_valued:
        return or_(*(_any_value(attribute, v) for v in _split_list(value)))
    return _text(attribute.column, value)


def _split_list(value: str) -> list[str]:
    return [v for v in re.split(r"[\\,]", value) if v]


def _uid_list(attribute: Attribute, value: str) -> ColumnElement[bool]:
    uids = _split_list(value)
    bad = [u for u in uids if not is_valid_uid(u)]
    if bad or not uids:
        raise QueryError(f"{attribute.keyword}: {bad[0] if bad else value!r} is not a valid UID")
    if attribute.multi_valued:
        return or_(*(_any_value(attribute, u) for u in uids))
    return attribute.column.in_(uids)


def _range(attribute: Attribute, value: str, vr: str) -> ColumnElement[bool]:
    pattern = _DATE if vr == "DA" else _TIME
    if "-" in value:
        low, _, high = value.partition("-")
        for part in (low, high):
            if part and not pattern.fullmatch(part):
                raise QueryError(f"{attribute.keyword}: {value!r} is not a {vr} range")
        if not low and not high:
            raise QueryError(f"{attribute.keyword}: {value!r} is an empty range")
        column = attribute.column
        conditions = [column != ""]
        if low:
            conditions.append(column >= low)
        if high:
            # A time range up to 1200 includes 120059.999999: pad the bound.
            conditions.append(column <= high + ("\uffff" if vr != "DA" else ""))
        return and_(*conditions)
    if not pattern.fullmatch(value):
        raise QueryError(f"{attribute.keyword}: {value!r} is not a valid {vr}")
    if vr == "DA":
        return attribute.column == value
    return attribute.column.like(_escape_like(value) + "%", escape="\\")


def _number(attribute: Attribute, value: str) -> ColumnElement[bool]:
    convert = attribute.column.type.python_type
    try:
        numbers = [convert(v) for v in _split_list(value)]
    except ValueError as exc:
        raise QueryError(f"{attribute.keyword}: {value!r} is not a number") from exc
    return attribute.column.in_(numbers) if numbers else false()


def _person_name(attribute: Attribute, value: str, fuzzy: bool) -> ColumnElement[bool]:
    key_column = attribute.key_column
    assert key_column is not None
    key = search_key(value)
    if "*" in key or "?" in key:
        return key_column.like(_wildcards_to_like(key), escape="\\")
    escaped = _escape_like(key)
    family_or_whole = or_(key_column == key, key_column.like(escaped + "^%", escape="\\"))
    if not fuzzy:
        return family_or_whole
    # Fuzzy: the value starts any name component (after '^', ' ' or '=').
    return or_(
        key_column.like(escaped + "%", escape="\\"),
        key_column.like("%^" + escaped + "%", escape="\\"),
        key_column.like("% " + escaped + "%", escape="\\"),
        key_column.like("%=" + escaped + "%", escape="\\"),
    )


def _text(column: InstrumentedAttribute[Any], value: str) -> ColumnElement[bool]:
    if "*" in value or "?" in value:
        return column.like(_wildcards_to_like(value), escape="\\")
    return column == value


def _any_value(attribute: Attribute, value: str) -> ColumnElement[bool]:
    """One value of a backslash-joined multi-valued column equals ``value``."""
    column = attribute.column
    escaped = _escape_like(value)
    return or_(
        column == value,
        column.like(escaped + "\\\\%", escape="\\"),
        column.like("%\\\\" + escaped, escape="\\"),
        column.like("%\\\\" + escaped + "\\\\%", escape="\\"),
    )


def _escape_like(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _wildcards_to_like(value: str) -> str:
    return _escape_like(value).replace("*", "%").replace("?", "_")
