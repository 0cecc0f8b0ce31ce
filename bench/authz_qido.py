"""Cost of the authorization filter (site scoping) on QIDO-RS: scoped users vs. admin.

Run from the repository root::

    .venv/bin/python bench/authz_qido.py                           # 10k studies / 1M inst
    .venv/bin/python bench/authz_qido.py --quick                   # 200 studies / 20k inst
    .venv/bin/python bench/authz_qido.py --database postgresql     # 127.0.0.1:5432, trust

What it does:

1. **seeds the index** of bench/dicomweb.py (bench/qido_seed.py, its cached SQLite
   template, or the same rows in a PostgreSQL template database) and **spreads the
   studies over sites**: :data:`SITES` (a central hospital and 29 provincial
   ones) with Zipf-skewed shares (the central hospital ~25 %, the smallest ~1 %),
   ``--forwarded`` of the studies forwarded to another site (a ``study_access``
   row, reason ``forwarded``, mostly to the central hospital);
2. **creates the users** through ``storage.users.create_user``: ``admin`` (no
   filter; created here as ``pacs serve`` would on an index without users), a
   radiologist of one mid-sized provincial site, a radiologist of the central
   hospital working for :data:`CENTRAL_SITES` (5 sites), and a referring doctor
   mapped to the most frequent Vietnamese ReferringPhysicianName, with ``--shared``
   studies shared with it personally (reason ``shared``); then ``ANALYZE``, before
   the server starts (SQLite reads the planner's statistics when it connects);
3. **times the QIDO kinds of bench/dicomweb.py** (PatientName prefix and fuzzy,
   StudyDate range, ModalitiesInStudy with OHIF's ``limit=101``, and
   ``/studies/{uid}/series`` of studies the user can see) over HTTP with Basic auth,
   one keep-alive connection per user, against one ``pacs serve``. Every user asks
   the same questions (same fixed seed), and the users' requests are interleaved
   (request *i* of every user, in rotating order, before request *i + 1*) so the
   noise of a shared machine falls on all of them alike;
4. prints p50 / p95 per kind per user and p95(user) / p95(admin), against the
   target of issue 8: **< 1.10** (the filter costs under 10 % at p95), and the same
   for all of a user's requests pooled (the kinds in equal numbers, as one workload).

A scoped user sees fewer studies, so its ``limit=101`` page may have to scan much
further down the date order to fill up, while its answers are shorter to encode:
both are part of the real cost and both are in the ratio. The table also gives the
mean number of results per request. ``/studies/{uid}/series`` is different: each
user asks about studies it can see, a different set per user with different
numbers of series, so admin asks each user's questions as well, right after the
user, and the user's ratio is against admin on the same studies.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import qido_seed
import servers
from dicomweb import (
    Target,
    cpu_model,
    fresh_run_dir,
    index_parser,
    ms,
    warm_client,
    with_defaults,
)
from dicomweb_client import Client, Kind, Timings, basic_auth, query_kinds, time_kind
from index_seed import PostgresDatabases, SqliteDatabases
from sqlalchemy import Engine, func, select, update
from sqlalchemy.orm import Session

from api.auth import principal_for
from storage.database import make_engine
from storage.models import Study
from storage.scope import Reason, grant, visible_studies
from storage.users import Role, create_user, get_user

BENCH_DIR = Path(__file__).resolve().parent
TARGET_RATIO = 1.10
PASSWORD = "bench-user-password"
SQLITE, POSTGRESQL = "sqlite", "postgresql"
ROOT = "/dicomweb"
# Kinds asking about one study each: users ask about studies they can see, so the
# studies (and their series counts) differ by user; admin asks each user's same
# questions too, and that user's ratio is against those.
PER_STUDY = frozenset({"series"})

CENTRAL = "BV Trung ương Thái Nguyên"
PROVINCES = (
    "Hà Giang", "Cao Bằng", "Lào Cai", "Điện Biên", "Lai Châu", "Sơn La", "Yên Bái",
    "Tuyên Quang", "Lạng Sơn", "Bắc Kạn", "Thái Nguyên", "Phú Thọ", "Bắc Giang",
    "Quảng Ninh", "Hòa Bình", "Vĩnh Phúc", "Bắc Ninh", "Hải Dương", "Hưng Yên",
    "Thái Bình", "Nam Định", "Ninh Bình", "Hà Nam", "Thanh Hóa", "Nghệ An", "Hà Tĩnh",
    "Quảng Bình", "Quảng Trị", "Kon Tum",
)  # fmt: skip
# Largest first: site k (from 1) sends a share proportional to 1/k of the studies.
SITES = (CENTRAL, *(f"BV Đa khoa tỉnh {p}" for p in PROVINCES))
ONE_SITE = SITES[9]  # a mid-sized provincial hospital, ~2.5 % of the studies
CENTRAL_SITES = (CENTRAL, SITES[2], SITES[7], SITES[14], SITES[24])
FORWARDED_TO_CENTRAL = 0.6  # the rest go to another provincial hospital

DEFAULTS = {"studies": 10_000, "instances": 1_000_000, "requests": 200}
QUICK = {"studies": 200, "instances": 20_000, "requests": 20}


@dataclass
class User:
    """One caller: its credentials, what it sees, and its timings per query kind."""

    label: str
    username: str
    password: str
    visible: int = 0
    kinds: list[Kind] = field(default_factory=list)
    timings: dict[str, Timings] = field(default_factory=dict)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    servers.exit_on_sigterm()
    started = time.monotonic()
    cache = args.cache.resolve()
    cache.mkdir(parents=True, exist_ok=True)
    run_dir = fresh_run_dir(cache, f"authz-{args.database}")
    postgres = PostgresDatabases() if args.database == POSTGRESQL else None
    if postgres is not None:
        template = qido_seed.postgres_template(args.studies, args.instances)
        url = postgres.create("authz", run_dir / "data", template)
    else:
        template = str(qido_seed.template(cache, args.studies, args.instances))
        url = SqliteDatabases(cache).create("authz", run_dir / "data", template)
    try:
        users, population = _populate(url, args)
        print(population, flush=True)
        with servers.ours(run_dir, url) as server:
            _measure(args, server, run_dir, url, users)
    finally:
        if not args.keep_runs:
            if postgres is not None:
                postgres.drop(url)
            shutil.rmtree(run_dir, ignore_errors=True)
    print()
    print(_report(args, users, population, time.monotonic() - started))
    return 0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = index_parser(__doc__, QUICK)
    parser.add_argument("--database", choices=(SQLITE, POSTGRESQL), default=SQLITE)
    parser.add_argument(
        "--forwarded", type=float, default=0.03, help="share of studies forwarded (0.03)"
    )
    parser.add_argument(
        "--shared", type=int, default=100, help="studies shared with the referring user (100)"
    )
    parser.add_argument("--cache", type=Path, default=BENCH_DIR / ".cache")
    parser.add_argument(
        "--keep-runs", action="store_true", help="keep the run folder, log and database"
    )
    return with_defaults(parser.parse_args(argv), DEFAULTS, QUICK)


# --- sites, grants and users ---------------------------------------------------------


@contextmanager
def _engine(url: str) -> Iterator[Engine]:
    engine = make_engine(url)
    try:
        yield engine
    finally:
        engine.dispose()


def _populate(url: str, args: argparse.Namespace) -> tuple[list[User], str]:
    """Sites, forwards, users and shares in the run's index; the users to time and a
    one-line description of the population."""
    rng = random.Random(8)
    with _engine(url) as engine:
        with Session(engine) as session, session.begin():
            studies = _spread_sites(session, rng)
            forwarded = _forward(session, rng, studies, args.forwarded)
            doctor = _common_referring_name(session)
            # as `pacs serve` would on an index without users (pacs.bootstrap)
            create_user(session, "admin", servers.ADMIN_PASSWORD, Role.ADMIN)
            create_user(session, "bench-rad-1site", PASSWORD, Role.RADIOLOGIST, sites=[ONE_SITE])
            create_user(
                session, "bench-rad-central", PASSWORD, Role.RADIOLOGIST, sites=CENTRAL_SITES
            )
            create_user(session, "bench-referring", PASSWORD, Role.REFERRING, referring_name=doctor)
            for uid, _ in rng.sample(studies, min(args.shared, len(studies))):
                grant(session, uid, Reason.SHARED, username="bench-referring")
        with engine.begin() as conn:  # the planner's statistics after the updates
            conn.exec_driver_sql("ANALYZE")
        users = [
            User("admin", "admin", servers.ADMIN_PASSWORD),
            User("radiologist, 1 site", "bench-rad-1site", PASSWORD),
            User("radiologist, central (5 sites)", "bench-rad-central", PASSWORD),
            User("referring doctor", "bench-referring", PASSWORD),
        ]
        with Session(engine) as session:
            for user in users:
                uids = _visible_uids(session, user.username)
                user.visible = len(uids)
                user.kinds = query_kinds(args.requests, uids)
    population = (
        f"{len(studies):,} studies over {len(SITES)} sites ({_shares(studies)}), "
        f"{forwarded:,} forwarded, {args.shared} shared with the referring user "
        f"(mapped to {doctor!r})"
    )
    return users, population


def _spread_sites(session: Session, rng: random.Random) -> list[tuple[str, str]]:
    """Give every study a source site, Zipf-skewed; returns (uid, site) per study."""
    rows = session.execute(select(Study.id, Study.study_instance_uid).order_by(Study.id)).all()
    weights = [1 / rank for rank in range(1, len(SITES) + 1)]
    sites = rng.choices(SITES, weights, k=len(rows))
    session.execute(
        update(Study),
        [{"id": pk, "source_site": site} for (pk, _), site in zip(rows, sites, strict=True)],
    )
    return [(uid, site) for (_, uid), site in zip(rows, sites, strict=True)]


def _forward(
    session: Session, rng: random.Random, studies: list[tuple[str, str]], share: float
) -> int:
    """Forward ``share`` of the studies to another site: mostly the central hospital."""
    chosen = rng.sample(studies, round(len(studies) * share))
    for uid, site in chosen:
        to = CENTRAL if rng.random() < FORWARDED_TO_CENTRAL else rng.choice(SITES[1:])
        if to == site:
            to = rng.choice([s for s in SITES if s != site])
        grant(session, uid, Reason.FORWARDED, site=to)
    return len(chosen)


def _common_referring_name(session: Session) -> str:
    """The Vietnamese ReferringPhysicianName on the most studies (a busy doctor)."""
    name = session.scalar(
        select(Study.referring_physician_name)
        .where(Study.referring_physician_name.not_in(("", *qido_seed.FOREIGN)))
        .group_by(Study.referring_physician_name_key, Study.referring_physician_name)
        .order_by(func.count().desc(), Study.referring_physician_name)
        .limit(1)
    )
    if name is None:
        raise SystemExit("the seeded index has no ReferringPhysicianName")
    return name


def _visible_uids(session: Session, username: str) -> list[str]:
    """The studies ``username`` sees, by the scope the server gives it (series-of-study
    asks only about those: a scoped user cannot open the others)."""
    user = get_user(session, username)
    if user is None:
        raise SystemExit(f"no user {username!r}")
    condition = visible_studies(principal_for(user).scope)
    uids = list(session.scalars(select(Study.study_instance_uid).where(condition)))
    if not uids:
        raise SystemExit(f"{username} sees no study: nothing to ask series of")
    return uids


def _shares(studies: list[tuple[str, str]]) -> str:
    counts = Counter(site for _, site in studies)
    total = max(1, len(studies))
    return (
        f"largest {counts[SITES[0]] / total:.0%}, 1-site user's {counts[ONE_SITE] / total:.1%}, "
        f"central user's 5 {sum(counts[s] for s in CENTRAL_SITES) / total:.0%}"
    )


# --- measuring ----------------------------------------------------------------------


def _measure(
    args: argparse.Namespace, server: servers.Running, run_dir: Path, url: str, users: list[User]
) -> None:
    """Each user on its own warm keep-alive connection; requests interleaved."""
    with ExitStack() as stack:
        clients = [
            stack.enter_context(warm_client(server, _target(u, run_dir, url))) for u in users
        ]
        pairs = list(zip(users, clients, strict=True))
        for user, client in pairs:
            for kind in user.kinds:  # two untimed requests each: pages, code paths
                for path in kind.paths[:2]:
                    client.get(ROOT + path)
        admin, admin_client = pairs[0]
        for number, kind in enumerate(admin.kinds):
            for index in range(args.requests):
                turn = index % len(pairs)  # rotate who goes first
                for user, client in pairs[turn:] + pairs[:turn]:
                    own = user.kinds[number]
                    one = Kind(own.key, own.title, [own.paths[index]])
                    _time(user, own.key, client, one)
                    if own.key in PER_STUDY and user is not admin:  # admin on the same study
                        _time(admin, _paired(own.key, user), admin_client, one)
            _progress(kind, users)


def _paired(key: str, user: User) -> str:
    """Where admin's timings of ``user``'s own per-study questions are kept."""
    return f"{key} as asked by {user.username}"


def _target(user: User, run_dir: Path, url: str) -> Target:
    headers = basic_auth(user.username, user.password)
    return Target(user.label, lambda: servers.ours(run_dir, url), ROOT, headers)


def _time(user: User, key: str, client: Client, one: Kind) -> None:
    """Time ``one`` request as ``user`` and add it to ``user``'s timings under ``key``."""
    user.timings.setdefault(key, Timings()).add(time_kind(client, ROOT, one))


def _progress(kind: Kind, users: list[User]) -> None:
    cells = ", ".join(
        f"{u.label} p95 {ms(u.timings[kind.key].p95_ms)}" for u in users if kind.key in u.timings
    )
    print(f"[{kind.title}] {cells}", flush=True)


# --- the report ---------------------------------------------------------------------


def _report(args: argparse.Namespace, users: list[User], population: str, seconds: float) -> str:
    admin = users[0]
    lines = [
        f"Authorization filter cost on QIDO-RS, {time.strftime('%Y-%m-%d %H:%M')}, "
        f"{cpu_model()} ({len(os.sched_getaffinity(0))} CPUs), Python "
        f"{platform.python_version()}, {args.database} index of {args.studies:,} studies / "
        f"{args.instances:,} instances; {population}; {args.requests} requests per kind and "
        f"user, interleaved; total run time {seconds / 60:.1f} min. Times in ms.",
        "",
        "| user (studies visible) | query | results/request | p50 | p95 "
        f"| p95 ÷ admin p95 | target < {TARGET_RATIO:.2f} |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for user in users:
        rows = [(k.title, *_against_admin(user, admin, k.key)) for k in user.kinds]
        pooled = [_pool(mine for _, mine, _ in rows), _pool(base for _, _, base in rows)]
        for title, mine, base in [*rows, ("all kinds pooled", *pooled)]:
            ratio = mine.p95_ms / base.p95_ms if base.p95_ms > 0 else float("nan")
            verdict = "—" if user is admin else _verdict(mine, ratio)
            lines.append(
                f"| {user.label} ({user.visible:,}) | {title} | {mine.mean_results:.1f} "
                f"| {ms(mine.p50_ms)} | {ms(mine.p95_ms)} | {ratio:.2f} | {verdict} |"
            )
    paired = [
        f"- {kind.title} of {u.label}: against admin asking the same studies "
        f"(admin p50 {ms(base.p50_ms)}, p95 {ms(base.p95_ms)})"
        for u in users[1:]
        for kind in u.kinds
        if (base := admin.timings.get(_paired(kind.key, u)))
    ]
    errors = [
        f"- {u.label} {key}: {len(t.errors)} failed requests, e.g. {t.errors[0]}"
        for u in users
        for key, t in u.timings.items()
        if t.errors
    ]
    return "\n".join([*lines, "", *paired, *(errors or ["- no failed requests"])])


def _against_admin(user: User, admin: User, key: str) -> tuple[Timings, Timings]:
    """``user``'s timings of one kind, and admin's of the same questions."""
    mine = user.timings.get(key, Timings())
    return mine, admin.timings.get(_paired(key, user)) or admin.timings[key]


def _pool(timings: Iterable[Timings]) -> Timings:
    """All the requests of several kinds as one: the QIDO p95 of a mixed workload."""
    pooled = Timings()
    for one in timings:
        pooled.add(one)
    return pooled


def _verdict(timings: Timings, ratio: float) -> str:
    if timings.errors or not timings.seconds:
        return "FAIL (errors)"
    return "PASS" if ratio < TARGET_RATIO else "FAIL"


if __name__ == "__main__":
    sys.exit(main())
