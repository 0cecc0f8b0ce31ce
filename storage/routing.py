"""Routing rules: which complete studies are forwarded to which nodes, automatically.

A rule matches on the sending AE title and site (:attr:`Study.source_ae`,
:attr:`Study.source_site`), on the modality and body part of any series of the
study, and on any attribute the index holds (``{"StudyDescription": "*CHEST*"}``),
with ``*`` and ``?`` wildcards. Attribute conditions go through the query planner
(:mod:`storage.query`), so a rule matches exactly what the same QIDO-RS query
would find (PS3.4 C.2.2.2 matching), evaluated on the index rows, never on files.

A study is routed once it is complete: no instance arrived for the quiet time.
Each rule keeps ``checked_until``, how far in :attr:`Study.updated_at` it has been
applied; a pass (:func:`route_quiet_studies`) looks at the studies that changed
after that and fell quiet before ``now - quiet``, queues one job per destination,
and moves the mark, all in one transaction whose mark update is conditional on the
mark it read: two passes (threads or processes) never queue the same work twice.
A study that changes again after being routed is routed again; a job that has not
started yet for the same study and node is not doubled (it will send everything).
A new rule applies to studies that change after it was created.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Select, select, update
from sqlalchemy.orm import InstrumentedAttribute, Session

from storage.jobs import Job, JobError, enqueue, has_waiting_job
from storage.models import RoutingRule, Study
from storage.nodes import get_node
from storage.query import ATTRIBUTES, Level, Query, QueryError, build_statement, resolve_keyword
from storage.retrieve import as_utc

log = logging.getLogger(__name__)

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_DEPTH = {level: depth for depth, level in enumerate(Level)}


class RuleError(ValueError):
    """A rule that cannot be added (bad condition, unknown node, name taken) or is not there."""


class RuleExists(RuleError):
    """The name is already taken."""


@dataclass(frozen=True)
class Rule:
    """A routing rule, detached from the database session. Empty conditions match all."""

    name: str
    destinations: list[str]
    calling_ae: str = ""
    site: str = ""
    modality: str = ""
    body_part: str = ""
    attributes: dict[str, str] = field(default_factory=dict)

    def match_keys(self) -> dict[str, str]:
        """The conditions the query planner evaluates, as QIDO-RS match keys."""
        keys = {"Modality": self.modality, "BodyPartExamined": self.body_part}
        return {k: v for k, v in {**keys, **self.attributes}.items() if v}


def add_rule(session: Session, rule: Rule) -> Rule:
    """Save ``rule``; RuleError when a condition is malformed, a destination is not a
    registered node, or the name is taken."""
    if not _NAME.fullmatch(rule.name):
        raise RuleError(f"rule name {rule.name!r}: 1 to 64 of letters, digits, '.', '_' and '-'")
    if not rule.destinations:
        raise RuleError("a rule needs at least one destination node")
    for node in rule.destinations:
        if get_node(session, node) is None:
            raise RuleError(f"destination {node!r} is not a registered node")
    for label, value, size in (
        ("calling AE", rule.calling_ae, 16),
        ("site", rule.site, 64),
        ("modality", rule.modality, 16),
        ("body part", rule.body_part, 16),
    ):
        if len(value) > size or not value.isprintable():
            raise RuleError(f"{label} {value!r}: at most {size} printable characters")
    attributes = {resolve_rule_keyword(k): str(v) for k, v in rule.attributes.items()}
    checked = Rule(**{**vars(rule), "attributes": attributes})
    try:  # the planner validates every value (UIDs, dates, numbers) as a query would
        _statement(checked, datetime.now(UTC), datetime.now(UTC))
    except QueryError as exc:
        raise RuleError(str(exc)) from exc
    if session.scalar(select(RoutingRule.id).where(RoutingRule.name == rule.name)) is not None:
        raise RuleExists(f"rule {rule.name!r} already exists")
    now = datetime.now(UTC)
    row = RoutingRule(
        name=checked.name,
        calling_ae=checked.calling_ae.strip(),
        site=checked.site.strip(),
        modality=checked.modality.strip(),
        body_part=checked.body_part.strip(),
        attributes=json.dumps(checked.attributes, ensure_ascii=False),
        destinations=json.dumps(checked.destinations),
        checked_until=now,
        created_at=now,
    )
    session.add(row)
    session.flush()
    return _detached(row)


def resolve_rule_keyword(name: str) -> str:
    """A keyword the index can match on, given as a keyword or tag; else RuleError."""
    try:
        keyword = resolve_keyword(name)
    except QueryError as exc:
        raise RuleError(str(exc)) from exc
    if keyword not in ATTRIBUTES:
        raise RuleError(f"{keyword} is not an attribute the index holds")
    return keyword


def list_rules(session: Session) -> list[Rule]:
    statement = select(RoutingRule).order_by(RoutingRule.name)
    return [_detached(row) for row in session.scalars(statement)]


def remove_rule(session: Session, name: str) -> None:
    row = session.scalar(select(RoutingRule).where(RoutingRule.name == name))
    if row is None:
        raise RuleError(f"no rule {name!r}")
    session.delete(row)


def route_quiet_studies(session: Session, quiet: timedelta) -> list[Job]:
    """Apply every rule to the studies that fell quiet since its last pass; queue and
    return the jobs. Commits once per rule."""
    cutoff = datetime.now(UTC) - quiet
    queued: list[Job] = []
    for row in session.scalars(select(RoutingRule).order_by(RoutingRule.id)).all():
        seen = row.checked_until
        if as_utc(seen) >= cutoff:
            continue
        rule = _detached(row)
        jobs = []
        for (study_uid,) in session.execute(_statement(rule, as_utc(seen), cutoff)).all():
            for node in rule.destinations:
                if has_waiting_job(session, study_uid, node):
                    continue
                try:
                    jobs.append(enqueue(session, study_uid, node, origin=f"route:{rule.name}"))
                except JobError as exc:  # the node was removed since the rule was made
                    log.warning("rule %s: %s", rule.name, exc)
        moved = session.execute(
            update(RoutingRule)
            .where(RoutingRule.id == row.id, RoutingRule.checked_until == seen)
            .values(checked_until=cutoff)
        )
        if moved.rowcount == 1:  # type: ignore[attr-defined]
            session.commit()
            queued += jobs
            for job in jobs:
                log.info("rule %s: study %s -> %s (job %d)", rule.name, job.study_instance_uid,
                         job.node, job.id)  # fmt: skip
        else:  # another pass applied this rule meanwhile: its jobs stand, ours go
            session.rollback()
    return queued


def _statement(rule: Rule, after: datetime, until: datetime) -> Select[Any]:
    """Study Instance UIDs of the studies ``rule`` matches that changed in (after, until]."""
    match = rule.match_keys()
    level = max((ATTRIBUTES[k].level for k in match), key=_DEPTH.__getitem__, default=Level.STUDY)
    level = max(level, Level.STUDY, key=_DEPTH.__getitem__)
    statement = build_statement(Query(level, match, with_defaults=False), ["StudyInstanceUID"])
    statement = statement.order_by(None).distinct()
    if rule.calling_ae:
        statement = statement.where(_wildcard(Study.source_ae, rule.calling_ae))
    if rule.site:
        statement = statement.where(_wildcard(Study.source_site, rule.site))
    return statement.where(Study.updated_at > after, Study.updated_at <= until)


def _wildcard(column: InstrumentedAttribute[str], pattern: str) -> ColumnElement[bool]:
    """``column`` equals ``pattern``, where ``*`` and ``?`` match any run / one character."""
    if "*" not in pattern and "?" not in pattern:
        return column == pattern
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return column.like(escaped.replace("*", "%").replace("?", "_"), escape="\\")


def _detached(row: RoutingRule) -> Rule:
    return Rule(
        name=row.name,
        destinations=list(json.loads(row.destinations)),
        calling_ae=row.calling_ae,
        site=row.site,
        modality=row.modality,
        body_part=row.body_part,
        attributes=dict(json.loads(row.attributes or "{}")),
    )
