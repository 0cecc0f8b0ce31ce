"""The ``pacs`` command: serve, import, check, db, user, node, send, jobs (``pacs VERB --help``)."""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from sqlalchemy.orm import Session
from tqdm import tqdm

from pacs.bootstrap import SchemaOutdated, archive_from_settings
from pacs.settings import Settings, load_settings
from pacs.tls_server import TLSSettingsError
from storage import Archive, Outcome
from storage.database import make_engine, upgrade
from storage.jobs import JobError, JobState, enqueue, get_job, list_jobs
from storage.users import (
    LOCAL_SITE,
    Role,
    UserError,
    create_user,
    list_users,
    set_disabled,
    set_password,
)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    flags = {
        "data_dir": args.data_dir,
        "ae_title": getattr(args, "ae_title", None),
        "dicom_port": getattr(args, "dicom_port", None),
        "http_host": getattr(args, "http_host", None),
        "http_port": getattr(args, "http_port", None),
    }
    settings = load_settings(args.config, **flags)
    try:
        return int(args.run(settings, args) or 0)
    except (SchemaOutdated, TLSSettingsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pacs", description=__doc__)
    parser.add_argument("--config", type=Path, help="TOML settings file")
    parser.add_argument("--data-dir", type=Path, help="data folder (PACS_DATA_DIR)")
    verbs = parser.add_subparsers(required=True, metavar="VERB")

    serve = verbs.add_parser("serve", help="run the DICOM listener and the HTTP server")
    serve.add_argument("--only", choices=["dicom", "http"], help="run one side only")
    serve.add_argument("--ae-title", help="our AE title (PACS_AE_TITLE)")
    serve.add_argument("--dicom-port", type=int, help="DICOM port (PACS_DICOM_PORT)")
    serve.add_argument("--http-host", help="HTTP bind address (PACS_HTTP_HOST)")
    serve.add_argument("--http-port", type=int, help="HTTP port (PACS_HTTP_PORT)")
    serve.set_defaults(run=_serve)

    imp = verbs.add_parser("import", help="import DICOM files and folders, recursively")
    imp.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    imp.add_argument("--site", default="", help="issuer for patients without IssuerOfPatientID")
    imp.add_argument("--workers", type=int, default=4, help="parallel readers (default 4)")
    imp.add_argument(
        "--if-empty", action="store_true", help="do nothing unless the archive is empty"
    )
    imp.set_defaults(run=_import)

    chk = verbs.add_parser("check", help="compare the index with the stored files")
    chk.add_argument("--rebuild", action="store_true", help="rebuild the index from the files")
    chk.set_defaults(run=_check)

    db = verbs.add_parser("db", help="index database schema").add_subparsers(required=True)
    db.add_parser("upgrade", help="migrate the schema to the newest version").set_defaults(
        run=_db_upgrade
    )

    user = verbs.add_parser("user", help="manage users").add_subparsers(required=True)
    add = user.add_parser("add", help="create a user (password asked for, or PACS_NEW_PASSWORD)")
    add.add_argument("username")
    add.add_argument("--role", choices=[r.value for r in Role], required=True)
    add.add_argument(
        "--site",
        action="append",
        dest="sites",
        help="a site the user works for (repeat for several; default: this archive's own)",
    )
    add.add_argument(
        "--referring-name",
        default="",
        help="for a referring doctor: the ReferringPhysicianName (Family^Given) of its studies",
    )
    add.set_defaults(run=_user_add)
    user.add_parser("list", help="list users and roles").set_defaults(run=_user_list)
    passwd = user.add_parser("passwd", help="set a user's password")
    passwd.add_argument("username")
    passwd.set_defaults(run=_user_passwd)
    for verb, disabled in (("disable", True), ("enable", False)):
        what = "end a user's sessions and refuse its sign-ins" if disabled else "enable a user"
        toggle = user.add_parser(verb, help=what)
        toggle.add_argument("username")
        toggle.set_defaults(run=_user_disable, disabled=disabled)

    node = verbs.add_parser("node", help="remote DICOM nodes").add_subparsers(required=True)
    node_add = node.add_parser("add", help="register a node (rights default to all)")
    node_add.add_argument("name")
    node_add.add_argument("--ae", required=True, help="its AE title")
    node_add.add_argument("--host", required=True)
    node_add.add_argument("--port", type=int, required=True)
    node_add.add_argument("--site", default="", help="issuer for its patients without one")
    node_add.add_argument("--tls", action="store_true", help="reach it over TLS")
    for right in ("store", "query", "retrieve"):
        node_add.add_argument(
            f"--{right}", action=argparse.BooleanOptionalAction, default=True,
            help=f"may it {right} (C-STORE / C-FIND / C-MOVE+C-GET) with us",
        )  # fmt: skip
    node_add.set_defaults(run=_node_add)
    node.add_parser("list", help="list nodes").set_defaults(run=_node_list)
    node_remove = node.add_parser("remove", help="forget a node")
    node_remove.add_argument("name")
    node_remove.set_defaults(run=_node_remove)

    send = verbs.add_parser("send", help="queue a study for forwarding to a node")
    send.add_argument("study", metavar="STUDY_UID")
    send.add_argument("--to", required=True, metavar="NODE", help="a registered node")
    send.add_argument("--wait", action="store_true", help="follow the job until it ends")
    send.set_defaults(run=_send)
    jobs = verbs.add_parser("jobs", help="list forwarding jobs, newest first")
    jobs.add_argument("--state", choices=[s.value for s in JobState])
    jobs.add_argument("--limit", type=int, default=50)
    jobs.set_defaults(run=_jobs)
    return parser


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    from pacs.server import serve  # uvicorn and FastAPI load only when serving

    serve(settings, args.only)
    return 0


def _import(settings: Settings, args: argparse.Namespace) -> int:
    from pacs.importer import import_paths

    archive = archive_from_settings(settings, create_schema=True)
    if args.if_empty and not archive.is_empty():
        return 0
    log_path = settings.data_dir / "logs" / f"import-{datetime.now():%Y%m%d-%H%M%S}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_path, encoding="utf-8")
    handler.setLevel(logging.WARNING)
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.ERROR)  # keep the terminal to the progress bar
    totals = import_paths(archive, args.paths, site=args.site, workers=args.workers)
    stored = totals[Outcome.STORED] + totals[Outcome.REPLACED]
    duplicate = totals[Outcome.DUPLICATE] + totals[Outcome.KEPT_EXISTING]
    rejected = totals[Outcome.REJECTED]
    print(f"stored {stored}, duplicate {duplicate}, rejected {rejected}")
    if rejected or totals[Outcome.KEPT_EXISTING]:
        print(f"reasons are in {log_path}")
    return 1 if rejected else 0


def _check(settings: Settings, args: argparse.Namespace) -> int:
    from storage.check import check, rebuild

    archive = archive_from_settings(settings, create_schema=True)
    if args.rebuild:
        with tqdm(unit="file", desc="rebuild") as bar:
            count, unreadable = rebuild(archive, bar.update)
        print(f"index rebuilt from {count} files; {len(unreadable)} unreadable")
        for key in unreadable:
            print(f"  unreadable: {key}")
        return 1 if unreadable else 0
    with tqdm(unit="file", desc="check") as bar:
        report = check(archive, bar.update)
    print(f"checked {report.checked} indexed instances")
    for label, items in (
        ("missing file", report.missing),
        ("file differs from index", report.corrupt),
        ("file not indexed", report.unindexed),
    ):
        for item in items:
            print(f"  {label}: {item}")
    print("consistent" if report.consistent else "INCONSISTENT: run `pacs check --rebuild`")
    return 0 if report.consistent else 1


def _db_upgrade(settings: Settings, args: argparse.Namespace) -> int:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(make_engine(settings.database_url))
    print("index database schema is current")
    return 0


def _changed(
    settings: Settings, change: Callable[[Session], object], refused: type[Exception]
) -> bool:
    """Run ``change`` on the index and commit it; False, the reason printed, when it
    raises ``refused`` (a user or node that does not exist, a name taken, ...)."""
    archive = archive_from_settings(settings, create_schema=True)
    with archive.sessions() as session:
        try:
            change(session)
        except refused as exc:
            print(f"error: {exc}", file=sys.stderr)
            return False
        session.commit()
    return True


def _user_add(settings: Settings, args: argparse.Namespace) -> int:
    password = _new_password()

    def add(session: Session) -> None:
        create_user(
            session,
            args.username,
            password,
            Role(args.role),
            sites=args.sites or (LOCAL_SITE,),
            referring_name=args.referring_name,
        )

    if not _changed(settings, add, UserError):
        return 1
    print(f"user {args.username} ({args.role}) created")
    return 0


def _user_list(settings: Settings, args: argparse.Namespace) -> int:
    archive = archive_from_settings(settings, create_schema=True)
    with archive.sessions() as session:
        for user in list_users(session):
            sites = ",".join(repr(s.site) for s in user.sites) or "-"
            print(f"{user.username}\t{user.role}\tsites={sites}\t{user.created_at:%Y-%m-%d}")
    return 0


def _user_disable(settings: Settings, args: argparse.Namespace) -> int:
    if not _changed(settings, lambda s: set_disabled(s, args.username, args.disabled), UserError):
        return 1
    print(f"user {args.username} {'disabled' if args.disabled else 'enabled'}")
    return 0


def _user_passwd(settings: Settings, args: argparse.Namespace) -> int:
    password = _new_password()
    if not _changed(settings, lambda s: set_password(s, args.username, password), UserError):
        return 1
    print(f"password of {args.username} changed")
    return 0


def _node_add(settings: Settings, args: argparse.Namespace) -> int:
    from storage.nodes import Node, NodeError, add_node

    node = Node(
        name=args.name, ae_title=args.ae, host=args.host, port=args.port, site=args.site,
        tls=args.tls, may_store=args.store, may_query=args.query, may_retrieve=args.retrieve,
    )  # fmt: skip
    if not _changed(settings, lambda s: add_node(s, node), NodeError):
        return 1
    print(f"node {node.name} ({node.ae_title.strip()}@{node.host}:{node.port}) added")
    return 0


def _node_list(settings: Settings, args: argparse.Namespace) -> int:
    from storage.nodes import list_nodes

    archive = archive_from_settings(settings, create_schema=True)
    with archive.sessions() as session:
        for n in list_nodes(session):
            rights = ",".join(r for r in ("store", "query", "retrieve") if getattr(n, f"may_{r}"))
            tls = " tls" if n.tls else ""
            print(f"{n.name}\t{n.ae_title}@{n.host}:{n.port}{tls}\tsite={n.site}\t{rights or '-'}")
    return 0


def _node_remove(settings: Settings, args: argparse.Namespace) -> int:
    from storage.nodes import NodeError, remove_node

    if not _changed(settings, lambda s: remove_node(s, args.name), NodeError):
        return 1
    print(f"node {args.name} removed")
    return 0


def _send(settings: Settings, args: argparse.Namespace) -> int:
    archive = archive_from_settings(settings, create_schema=True)
    with archive.sessions() as session:
        try:
            job = enqueue(session, args.study, args.to)
        except JobError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        session.commit()
    print(f"job {job.id} queued: study {job.study_instance_uid} -> {job.node}", flush=True)
    if not args.wait:
        return 0
    return _follow(archive, job.id)


def _follow(archive: Archive, job_id: int) -> int:
    """Print each change of the job until it ends (it runs in `pacs serve`)."""
    shown = ""
    while True:
        with archive.sessions() as session:
            job = get_job(session, job_id)
        assert job is not None
        line = f"job {job.id}: {job.state} {job.sent}/{job.total or '?'} sent"
        if job.failed:
            line += f", {job.failed} refused"
        if job.last_error:
            line += f" ({job.last_error})"
        if line != shown:
            print(line, flush=True)
            shown = line
        if job.finished:
            for uid in job.failed_uids:
                print(f"  refused: {uid}")
            return 0 if job.state is JobState.DONE else 1
        time.sleep(0.5)


def _jobs(settings: Settings, args: argparse.Namespace) -> int:
    archive = archive_from_settings(settings, create_schema=True)
    state = JobState(args.state) if args.state else None
    with archive.sessions() as session:
        found = list_jobs(session, state=state, limit=args.limit)
    for job in found:
        refused = f", {job.failed} refused" if job.failed else ""
        progress = f"{job.sent}/{job.total} sent{refused}"
        print(f"{job.id}\t{job.state}\t{job.study_instance_uid}\t-> {job.node}\t{progress}\t"
              f"attempts={job.attempts}\t{job.origin}\t{job.last_error}")  # fmt: skip
    return 0


def _new_password() -> str:
    if password := os.environ.get("PACS_NEW_PASSWORD"):
        return password
    first = getpass.getpass("password: ")
    if first != getpass.getpass("again: "):
        raise SystemExit("error: the passwords differ")
    return first


if __name__ == "__main__":
    sys.exit(main())
