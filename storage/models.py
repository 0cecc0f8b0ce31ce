"""The SQL index: patient / study / series / instance, users, API tokens, remote nodes,
forwarding jobs and routing rules.

Every attribute QIDO-RS (PS3.18 Table 10.6.3-3/4/5) and C-FIND (PS3.4 C.6.1.1 and
C.6.2.1) match on or return at each level has a column here, so queries are
answered from the database alone and never by opening files. Matched columns are
indexed with their plain type (dcm4chee lost two orders of magnitude at 10^6 rows to
a UID compared through a type conversion). Person names have a folded ``*_key``
column next to them for case- and accent-insensitive search.

Computed return attributes (ModalitiesInStudy, NumberOfStudyRelated*...) are kept
as denormalised columns maintained by ingest, so a study list is one indexed scan.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from pacs.charset import NAME_WORD_LENGTH

UID = String(64)
DA = String(8)  # YYYYMMDD, compared as text: ranges stay indexable
TM = String(16)  # HHMMSS.FFFFFF
PN = String(324)  # up to 5 components of 64 chars per representation
LO = String(64)
SH = String(16)
CS = String(16)


class Base(DeclarativeBase):
    pass


class Patient(Base):
    """A patient is (issuer, PatientID): the same ID from two hospitals is two people."""

    __tablename__ = "patients"
    __table_args__ = (
        UniqueConstraint("issuer", "patient_id", name="uq_patient_identity"),
        # varchar_pattern_ops lets PostgreSQL answer LIKE 'nguyen%' from the index.
        Index(
            "ix_patients_patient_name_key",
            "patient_name_key",
            postgresql_ops={"patient_name_key": "varchar_pattern_ops"},
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    issuer: Mapped[str] = mapped_column(LO, default="")
    patient_id: Mapped[str] = mapped_column(LO, index=True)
    patient_name: Mapped[str] = mapped_column(PN, default="")
    patient_name_key: Mapped[str] = mapped_column(PN, default="")
    patient_birth_date: Mapped[str] = mapped_column(DA, default="", index=True)
    patient_birth_time: Mapped[str] = mapped_column(TM, default="")
    patient_sex: Mapped[str] = mapped_column(CS, default="")
    other_patient_ids: Mapped[str] = mapped_column(Text, default="")
    ethnic_group: Mapped[str] = mapped_column(SH, default="")
    patient_comments: Mapped[str] = mapped_column(Text, default="")

    studies: Mapped[list[Study]] = relationship(back_populates="patient")


# Compared byte for byte on PostgreSQL too, so a prefix is an index range there
# whatever the database's collation (SQLite compares bytes anyway).
NAME_WORD = String(NAME_WORD_LENGTH).with_variant(
    String(NAME_WORD_LENGTH, collation="C"), "postgresql"
)


class PatientNameWord(Base):
    """A word of a patient's folded name (:func:`pacs.charset.name_words`).

    A fuzzy name match (a word of the name starts with what was typed) cannot use
    an index on whole names; on this table it is a range of its primary key, which
    SQLite starts from for a rare word (:func:`storage.query._few_names`).
    Written with the patient (:func:`storage.index.add_instance`; migration 0007
    for patients indexed before).
    """

    __tablename__ = "patient_name_words"

    word: Mapped[str] = mapped_column(NAME_WORD, primary_key=True)
    patient_pk: Mapped[int] = mapped_column(
        ForeignKey("patients.id", ondelete="CASCADE"), primary_key=True
    )


class Study(Base):
    __tablename__ = "studies"
    __table_args__ = (
        # Newest-first study lists walk this index; with the site and the patient in
        # it, a study the caller may not see or whose patient does not match is
        # passed over without reading its row (migration 0007).
        Index(
            "ix_studies_date_time",
            "study_date",
            "study_time",
            "id",
            "source_site",
            "patient_pk",
        ),
        Index(
            "ix_studies_referring_physician_name_key",
            "referring_physician_name_key",
            postgresql_ops={"referring_physician_name_key": "varchar_pattern_ops"},
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_pk: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    study_date: Mapped[str] = mapped_column(DA, default="")
    study_time: Mapped[str] = mapped_column(TM, default="")
    accession_number: Mapped[str] = mapped_column(SH, default="", index=True)
    issuer_of_accession_number: Mapped[str] = mapped_column(LO, default="")
    study_id: Mapped[str] = mapped_column(SH, default="", index=True)
    study_description: Mapped[str] = mapped_column(LO, default="")
    referring_physician_name: Mapped[str] = mapped_column(PN, default="")
    referring_physician_name_key: Mapped[str] = mapped_column(PN, default="")
    timezone_offset_from_utc: Mapped[str] = mapped_column(SH, default="")
    patient_age: Mapped[str] = mapped_column(String(4), default="")
    patient_size: Mapped[str] = mapped_column(String(16), default="")
    patient_weight: Mapped[str] = mapped_column(String(16), default="")
    institution_name: Mapped[str] = mapped_column(LO, default="")
    # Computed attributes, kept up to date by ingest (backslash-joined sets).
    modalities_in_study: Mapped[str] = mapped_column(String(128), default="", index=True)
    sop_classes_in_study: Mapped[str] = mapped_column(Text, default="")
    number_of_series: Mapped[int] = mapped_column(Integer, default=0)
    number_of_instances: Mapped[int] = mapped_column(Integer, default=0)
    # Provenance: who sent it, from which site, and when it last changed.
    source_ae: Mapped[str] = mapped_column(String(16), default="")
    source_site: Mapped[str] = mapped_column(LO, default="", index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)

    patient: Mapped[Patient] = relationship(back_populates="studies")
    series: Mapped[list[Series]] = relationship(back_populates="study")


class Series(Base):
    __tablename__ = "series"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_pk: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    series_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    modality: Mapped[str] = mapped_column(CS, default="", index=True)
    series_number: Mapped[int | None] = mapped_column(Integer)
    series_description: Mapped[str] = mapped_column(LO, default="")
    series_date: Mapped[str] = mapped_column(DA, default="")
    series_time: Mapped[str] = mapped_column(TM, default="")
    body_part_examined: Mapped[str] = mapped_column(CS, default="", index=True)
    laterality: Mapped[str] = mapped_column(CS, default="")
    protocol_name: Mapped[str] = mapped_column(LO, default="")
    station_name: Mapped[str] = mapped_column(SH, default="")
    institution_name: Mapped[str] = mapped_column(LO, default="")
    manufacturer: Mapped[str] = mapped_column(LO, default="")
    performed_procedure_step_start_date: Mapped[str] = mapped_column(DA, default="")
    performed_procedure_step_start_time: Mapped[str] = mapped_column(TM, default="")
    scheduled_procedure_step_id: Mapped[str] = mapped_column(SH, default="")
    requested_procedure_id: Mapped[str] = mapped_column(SH, default="")
    timezone_offset_from_utc: Mapped[str] = mapped_column(SH, default="")
    number_of_instances: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list[Instance]] = relationship(back_populates="series")


class Instance(Base):
    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_pk: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    sop_class_uid: Mapped[str] = mapped_column(UID, index=True)
    instance_number: Mapped[int | None] = mapped_column(Integer)
    content_date: Mapped[str] = mapped_column(DA, default="")
    content_time: Mapped[str] = mapped_column(TM, default="")
    rows: Mapped[int | None] = mapped_column(Integer)
    columns: Mapped[int | None] = mapped_column(Integer)
    bits_allocated: Mapped[int | None] = mapped_column(Integer)
    number_of_frames: Mapped[int | None] = mapped_column(Integer)
    photometric_interpretation: Mapped[str] = mapped_column(CS, default="")
    slice_location: Mapped[float | None] = mapped_column(Float)
    specific_character_set: Mapped[str] = mapped_column(String(64), default="")
    # The stored file: where, how big, its hash and the syntax it was received in.
    blob_key: Mapped[str] = mapped_column(String(80))
    file_size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    transfer_syntax_uid: Mapped[str] = mapped_column(UID)
    source_ae: Mapped[str] = mapped_column(String(16), default="")
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    series: Mapped[Series] = relationship(back_populates="instances")


class User(Base):
    """Someone who signs in.

    ``token_version`` is written into every access token; bumping it (password change,
    disabling) ends every session at once. ``failed_sign_ins`` / ``locked_until`` are
    the lock-out after repeated wrong passwords. ``referring_name_key`` maps a
    ``referring`` user to the folded ReferringPhysicianName of the studies it may read.
    """

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    token_version: Mapped[int] = mapped_column(Integer, default=0)
    failed_sign_ins: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    referring_name_key: Mapped[str] = mapped_column(PN, default="", index=True)

    tokens: Mapped[list[ApiToken]] = relationship(
        back_populates="user", cascade="all, delete-orphan"
    )
    sites: Mapped[list[UserSite]] = relationship(cascade="all, delete-orphan", lazy="selectin")


class UserSite(Base):
    """A site (hospital) a user works for: it sees that site's studies."""

    __tablename__ = "user_sites"

    user_pk: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    site: Mapped[str] = mapped_column(LO, primary_key=True)


class StudyAccess(Base):
    """A study made visible beyond the site that sent it.

    ``site`` set: the study was forwarded or shared to that site; ``user_pk`` set: it
    was shared with that one user (a referring doctor). ``reason`` is ``forwarded`` or
    ``shared``.
    """

    __tablename__ = "study_access"
    __table_args__ = (
        # user_pk in the key: site grants are "user_pk IS NULL", read from the index alone.
        Index("ix_study_access_site", "site", "user_pk", "study_pk"),
        Index("ix_study_access_user", "user_pk", "study_pk"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_pk: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    site: Mapped[str] = mapped_column(LO, default="")
    user_pk: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    reason: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ApiToken(Base):
    """A refresh token; only its SHA-256 is kept, so a leaked database leaks no tokens."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    user_pk: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)

    user: Mapped[User] = relationship(back_populates="tokens")


class AuditEvent(Base):
    """Who read or changed what, when, from where: append-only.

    One row per audited HTTP request or security event, after IHE ATNA (RFC 3881 /
    DICOM PS3.15 A.5): ``event_type`` is the ATNA event (e.g. ``DICOM Instances
    Accessed``, ``User Authentication``), ``outcome`` its EventOutcomeIndicator
    (0 success, 4 minor failure, 8 serious failure, 12 major failure).
    """

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    username: Mapped[str] = mapped_column(String(64), index=True)
    client: Mapped[str] = mapped_column(String(64), default="")
    action: Mapped[str] = mapped_column(String(32))
    method: Mapped[str] = mapped_column(String(8))
    path: Mapped[str] = mapped_column(Text)
    study_instance_uid: Mapped[str] = mapped_column(UID, default="", index=True)
    series_instance_uid: Mapped[str] = mapped_column(UID, default="")
    sop_instance_uid: Mapped[str] = mapped_column(UID, default="")
    status: Mapped[int] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(String(16), default="")
    site: Mapped[str] = mapped_column(LO, default="")
    patient_id: Mapped[str] = mapped_column(LO, default="", index=True)
    event_type: Mapped[str] = mapped_column(String(48), default="", index=True)
    outcome: Mapped[int] = mapped_column(Integer, default=0)


class RemoteNode(Base):
    """Another DICOM node of the network: where it is, its site, what it may do with us.

    ``site`` is the issuer given to patients it sends without IssuerOfPatientID;
    ``may_*`` say whether its C-STORE, C-FIND and C-MOVE / C-GET requests are served.
    """

    __tablename__ = "remote_nodes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    ae_title: Mapped[str] = mapped_column(String(16), index=True)
    host: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer)
    site: Mapped[str] = mapped_column(LO, default="")
    tls: Mapped[bool] = mapped_column(Boolean, default=False)
    may_store: Mapped[bool] = mapped_column(Boolean, default=True)
    may_query: Mapped[bool] = mapped_column(Boolean, default=True)
    may_retrieve: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ForwardJob(Base):
    """One study to send to one node: a row of the durable forwarding queue.

    ``state`` is queued -> running -> done | failed (the peer refused some instances,
    listed in ``failed_uids``), or retrying (the node was unreachable; tried again at
    ``next_attempt_at``) -> dead after the last attempt, with the reason in
    ``last_error``. ``origin`` is ``manual`` or ``route:<name>``.
    """

    __tablename__ = "forward_jobs"
    __table_args__ = (Index("ix_forward_jobs_due", "state", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, index=True)
    node: Mapped[str] = mapped_column(String(64), index=True)
    origin: Mapped[str] = mapped_column(String(80), default="manual")
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str] = mapped_column(Text, default="")
    total: Mapped[int] = mapped_column(Integer, default=0)
    sent: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    failed_uids: Mapped[str] = mapped_column(Text, default="[]")  # JSON list
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ForwardedInstance(Base):
    """An instance a job has delivered: the job's progress, so a job resumed after a
    restart does not send it again."""

    __tablename__ = "forwarded_instances"

    job_id: Mapped[int] = mapped_column(
        ForeignKey("forward_jobs.id", ondelete="CASCADE"), primary_key=True
    )
    sop_instance_uid: Mapped[str] = mapped_column(UID, primary_key=True)


class RoutingRule(Base):
    """Forward complete studies that match to ``destinations`` (JSON list of node names).

    Empty conditions match anything; ``attributes`` is a JSON object of index match
    keys (``{"StudyDescription": "*CHEST*"}``). ``checked_until`` is how far in
    Study.updated_at the rule has been applied: each pass looks only at studies
    that changed after it and fell quiet before now minus the quiet time.
    """

    __tablename__ = "routing_rules"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    calling_ae: Mapped[str] = mapped_column(String(16), default="")
    site: Mapped[str] = mapped_column(LO, default="")
    modality: Mapped[str] = mapped_column(CS, default="")
    body_part: Mapped[str] = mapped_column(CS, default="")
    attributes: Mapped[str] = mapped_column(Text, default="{}")
    destinations: Mapped[str] = mapped_column(Text)
    checked_until: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Report(Base):
    """One version of a radiologist's report on a study.

    ``status`` is draft -> final (signed: ``finalized_by``, ``finalized_at``; never
    changed again) -> amended once a later version replacing it is finalized. An
    amendment is a new row whose ``previous_id`` is the final it corrects (unique: one
    amendment per final), ``version`` one higher. ``fields`` is the JSON object of the
    ``template``'s structured fields; ``key_images`` a JSON list of SOP Instance UIDs of
    the study. ``document_uid`` is the SOP Instance UID of the Encapsulated PDF instance
    (PS3.3 A.45.1) archived when the version was finalized.
    """

    __tablename__ = "reports"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_pk: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    version: Mapped[int] = mapped_column(Integer, default=1)
    previous_id: Mapped[int | None] = mapped_column(ForeignKey("reports.id"), unique=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    template: Mapped[str] = mapped_column(String(32), default="none")
    fields: Mapped[str] = mapped_column(Text, default="{}")
    findings: Mapped[str] = mapped_column(Text, default="")
    impression: Mapped[str] = mapped_column(Text, default="")
    free_text: Mapped[str] = mapped_column(Text, default="")
    key_images: Mapped[str] = mapped_column(Text, default="[]")
    author: Mapped[str] = mapped_column(String(64))
    finalized_by: Mapped[str] = mapped_column(String(128), default="")
    finalized_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    document_uid: Mapped[str] = mapped_column(UID, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    study: Mapped[Study] = relationship()


class ShareLink(Base):
    """A link that opens one study (its images and signed reports) without an account.

    Only the SHA-256 of the link's random token is kept. ``pin_hash`` is the argon2 hash
    of an optional PIN sent apart from the link; ``failed_pins`` counts wrong ones (the
    link is revoked at the limit). A link works until ``expires_at`` or ``revoked_at``.
    """

    __tablename__ = "share_links"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    study_pk: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    created_by: Mapped[str] = mapped_column(String(64))
    pin_hash: Mapped[str] = mapped_column(String(255), default="")
    failed_pins: Mapped[int] = mapped_column(Integer, default=0)
    uses: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    study: Mapped[Study] = relationship()
