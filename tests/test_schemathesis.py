"""Schemathesis against the application's own OpenAPI schema: no request gets a 5xx.

Every operation of ``/openapi.json`` is called in-process (ASGI) by an admin signed in
with HTTP Basic, with cases Schemathesis generates from the schema: valid ones
(positive) and ones that break it (negative: wrong types, missing fields, values out
of range). Checks: ``not_a_server_error`` on every response, and the response body
conforms to the documented schema when the request succeeded (a refusal's body is
``{"detail": "..."}`` by design, which FastAPI's generated 422 schema does not
describe, so conformance is checked on 2xx only).

Examples are bounded (:data:`EXAMPLES` per operation and mode) and derandomized, so
the run is the same every time. No operation is excluded: the archive is a
throw-away SQLite one with the sample studies, so destructive calls (deleting nodes,
disabling users) only hit what the generated data names; the caller is an admin
whose name the generator will not produce. Negative cases are skipped for operations
whose only inputs are free-text path segments (any string is valid there; the
hostile-value suite, ``tests/test_injection.py``, covers those).
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from api.app import create_app
from pacs.settings import Settings
from storage import open_archive
from storage.database import upgrade
from storage.users import Role, create_user
from tests.conftest import SAMPLES

EXAMPLES = 10
# A name the generated data will not hit: Schemathesis draws path values from words of
# the schema ("admin" is one), and disabling the caller would only test 401s after it.
ADMIN_NAME, ADMIN_PASSWORD = "fuzz-admin-5c1e", "fuzz-admin-password"
ADMIN = {
    "Authorization": "Basic " + base64.b64encode(f"{ADMIN_NAME}:{ADMIN_PASSWORD}".encode()).decode()
}


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FastAPI]:
    folder: Path = tmp_path_factory.mktemp("schemathesis")
    archive = open_archive(f"sqlite:///{folder / 'index.sqlite'}", (folder / "blobs").as_uri())
    upgrade(archive.sessions.kw["bind"])
    for path in sorted(SAMPLES.rglob("*.dcm")):
        assert archive.ingest(path).ok
    with archive.sessions() as session:
        create_user(session, ADMIN_NAME, ADMIN_PASSWORD, Role.ADMIN)
        session.commit()
    # No lock-out, no sign-in rate limit: generated wrong current passwords
    # (POST /api/me/password) would otherwise lock the caller out within five cases.
    settings = Settings(sign_in_max_failures=1_000_000, sign_in_per_minute=1_000_000)
    application = create_app(archive, settings)
    yield application
    application.state.audit.close()
    archive.sessions.kw["bind"].dispose()


@schemathesis.serializer("multipart/related")
def multipart_related(_: Any, value: Any) -> bytes:
    """STOW-RS bodies: the generated value's bytes, as they come (a real multipart body
    is tests/test_stow.py's business; here the route must refuse junk cleanly)."""
    return value if isinstance(value, bytes) else str(value).encode()


def conforms_when_successful(ctx: Any, response: Any, case: schemathesis.Case) -> bool | None:
    """The documented response schema, for a successful response."""
    if response.status_code >= 300:
        return None
    return response_schema_conformance(ctx, response, case)


def can_be_broken(operation: dict[str, Any]) -> bool:
    """Whether a request of this operation can break its schema at all.

    Only path parameters, each any string: every string is valid, so negative
    generation has nothing to generate (and spends seconds finding that out).
    """
    if "requestBody" in operation:
        return True
    for parameter in operation.get("parameters", []):
        declared = parameter.get("schema", {})
        if parameter["in"] != "path" or set(declared) - {"type", "title"}:
            return True
        if declared.get("type") != "string":
            return True
    return False


def test_no_operation_answers_a_server_error(app: FastAPI, request: pytest.FixtureRequest) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    paths = app.openapi()["paths"]
    counts = {"cases": 0, "operations": 0, "unsatisfiable": 0}
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        counts["operations"] += 1
        modes = [GenerationMode.POSITIVE]
        if can_be_broken(paths[operation.path][operation.method.lower()]):
            modes.append(GenerationMode.NEGATIVE)
        for mode in modes:

            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                derandomize=True,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def call(case: schemathesis.Case) -> None:
                counts["cases"] += 1
                case.call_and_validate(
                    headers=ADMIN, checks=[not_a_server_error, conforms_when_successful]
                )

            try:
                call()
            except Unsatisfiable:  # nothing in this mode to generate (any bytes are a body)
                counts["unsatisfiable"] += 1
            except Exception as exc:  # every operation is tried; all failures are listed
                failures.append(f"{operation.label} ({mode.value}): {exc}"[:3000])
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print(
            f"\nschemathesis: {counts['cases']} cases over {counts['operations']} operations, "
            f"{counts['unsatisfiable']} operation modes with nothing to generate, "
            f"{len(failures)} failing"
        )
    assert counts["operations"] >= 60
    # The caller was never locked out or disabled along the way (else later cases
    # tested only the 401 path).
    with TestClient(app) as client:
        assert client.get("/api/me", headers=ADMIN).status_code == 200
    assert not failures, "\n\n".join(failures)
