"""QIDO-RS (PS3.18 §10.6): search for studies, series and instances.

Every path form of the standard is here; they all end in
:func:`storage.query.search`, the planner C-FIND uses too. A match key that is
not a DICOM keyword or tag is a 400, because ignoring it would answer a broader
question than the one asked; unknown ``includefield`` values are ignored, because
OHIF sends a fixed list.
"""

from __future__ import annotations

import contextlib
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from starlette.datastructures import QueryParams

from api.audit import audited
from api.auth import Principal, require_role
from api.dicomweb.common import DICOM_JSON, dataset_json, json_response, origin
from storage.header import is_valid_uid
from storage.query import (
    DEFAULT_RETURN,
    Level,
    Query,
    QueryError,
    resolve_keyword,
    returned_keywords,
    search,
)
from storage.scope import study_visibility
from storage.users import Role

router = APIRouter(dependencies=[Depends(audited("search"))])
# The search itself is filtered by the caller's scope, so the study named in the path
# is checked only when nothing matched (:func:`_search`): one query, not two.
Searcher = Annotated[
    Principal,
    Depends(require_role(Role.ADMIN, Role.RADIOLOGIST, Role.REFERRING, study_gate=False)),
]

_CONTROL = {"limit", "offset", "fuzzymatching", "includefield"}
_ACCEPTABLE = ("application/dicom+json", "application/json", "*/*", "application/*")


@router.get("/studies")
def search_studies(request: Request, principal: Searcher) -> Response:
    return _search(request, Level.STUDY, {}, principal)


@router.get("/series")
def search_all_series(request: Request, principal: Searcher) -> Response:
    return _search(request, Level.SERIES, {}, principal)


@router.get("/studies/{study}/series")
def search_series(request: Request, study: str, principal: Searcher) -> Response:
    return _search(request, Level.SERIES, {"StudyInstanceUID": study}, principal)


@router.get("/instances")
def search_all_instances(request: Request, principal: Searcher) -> Response:
    return _search(request, Level.IMAGE, {}, principal)


@router.get("/studies/{study}/instances")
def search_study_instances(request: Request, study: str, principal: Searcher) -> Response:
    return _search(request, Level.IMAGE, {"StudyInstanceUID": study}, principal)


@router.get("/studies/{study}/series/{series}/instances")
def search_series_instances(
    request: Request, study: str, series: str, principal: Searcher
) -> Response:
    return _search(
        request, Level.IMAGE, {"StudyInstanceUID": study, "SeriesInstanceUID": series}, principal
    )


def _search(
    request: Request, level: Level, scope: dict[str, str], principal: Principal
) -> Response:
    """Answer a search; ``scope`` holds the UIDs fixed by the path."""
    _check_accept(request)
    for keyword, uid in scope.items():
        if not is_valid_uid(uid):
            raise HTTPException(status.HTTP_400_BAD_REQUEST, f"{keyword} {uid!r} is not a UID")
    try:
        query = parse_query(request.query_params, level)
    except QueryError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from exc
    query.match.update(scope)
    query.scope = principal.scope
    # Across studies (or series), results carry the parents' attributes too (PS3.18 10.6.3.3).
    if level in (Level.SERIES, Level.IMAGE) and "StudyInstanceUID" not in scope:
        query.include.update(DEFAULT_RETURN[Level.STUDY])
    if level is Level.IMAGE and "SeriesInstanceUID" not in scope:
        query.include.update(DEFAULT_RETURN[Level.SERIES])
    requested = query.limit
    cap = request.app.state.settings.max_query_results  # per page, whatever is asked for
    query.limit = min(requested or cap, cap) + 1  # one more: are there more?
    with request.app.state.archive.sessions() as session:
        try:
            rows = list(search(session, query))
        except QueryError as exc:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from exc
        study = scope.get("StudyInstanceUID")
        if not rows and study and study_visibility(session, query.scope, study) is False:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such study")
    headers = {}
    if len(rows) == query.limit:
        rows.pop()
        if requested is None or requested > cap:
            headers["Warning"] = (
                f'299 pacs "The number of results exceeded the maximum of {cap}; '
                'use limit and offset to page"'
            )
    base = origin(request) + "/dicomweb"
    keywords = returned_keywords(query)
    payload = [_result(row, keywords, level, base) for row in rows]
    return json_response(request, payload, headers)


def parse_query(params: QueryParams, level: Level) -> Query:
    """QIDO query parameters to a :class:`Query`; raises QueryError on anything bad."""
    query = Query(level=level)
    query.limit = _non_negative(params, "limit")
    query.offset = _non_negative(params, "offset") or 0
    fuzzy = params.get("fuzzymatching", "false").lower()
    if fuzzy not in ("true", "false"):
        raise QueryError("fuzzymatching must be true or false")
    query.fuzzy = fuzzy == "true"
    for raw in params.getlist("includefield"):
        for name in filter(None, (part.strip() for part in raw.split(","))):
            if name == "all":
                query.include_all = True
                continue
            with contextlib.suppress(
                QueryError
            ):  # unknown ones are ignored: OHIF sends fixed lists
                query.include.add(resolve_keyword(name))
    for name, value in params.multi_items():
        if name in _CONTROL:
            continue
        keyword = resolve_keyword(name)
        if keyword in query.match and query.match[keyword] != value:
            raise QueryError(f"{keyword} is given twice with different values")
        query.match[keyword] = value
    return query


def _non_negative(params: QueryParams, name: str) -> int | None:
    value = params.get(name)
    if value is None or value == "":
        return None
    # ASCII digits only ("²".isdigit() is true), and few enough for a database integer.
    if not (value.isascii() and value.isdigit()) or len(value) > 9:
        raise QueryError(f"{name} must be an integer from 0 to 999999999, not {value[:40]!r}")
    return int(value)


def _check_accept(request: Request) -> None:
    accept = request.headers.get("accept", "")
    if not accept:
        return
    media_types = [part.split(";")[0].strip().lower() for part in accept.split(",")]
    if not any(media in _ACCEPTABLE for media in media_types):
        raise HTTPException(
            status.HTTP_406_NOT_ACCEPTABLE, f"search results are only available as {DICOM_JSON}"
        )


def _result(row: dict[str, Any], keywords: list[str], level: Level, base: str) -> dict[str, Any]:
    items: list[tuple[str, Any]] = [(k, row[k]) for k in keywords]
    items.append(("InstanceAvailability", "ONLINE"))
    items.append(("RetrieveURL", _retrieve_url(row, level, base)))
    return dataset_json(items)


def _retrieve_url(row: dict[str, Any], level: Level, base: str) -> str:
    url = f"{base}/studies/{row['StudyInstanceUID']}"
    if level in (Level.SERIES, Level.IMAGE):
        url += f"/series/{row['SeriesInstanceUID']}"
    if level is Level.IMAGE:
        url += f"/instances/{row['SOPInstanceUID']}"
    return url
