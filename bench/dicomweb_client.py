"""Timed DICOMweb requests: the query mix of an OHIF study list, and a keep-alive client.

Every query kind gets ``count`` requests with values drawn from a fixed random
seed, so two servers answer exactly the same questions (only the Study Instance
UIDs of series-of-study queries come from the data each one holds). Values are
sent raw where the standard allows (``*``, ``,``, ``-``, ``^``) and
percent-encoded otherwise (accented names), as a browser would send them.
"""

from __future__ import annotations

import base64
import http.client
import json
import random
import statistics
import time
from dataclasses import dataclass, field
from datetime import timedelta
from urllib.parse import quote, urlsplit

from qido_seed import END, FAMILIES, GIVEN, MIDDLE, START

from pacs.charset import search_key

# What OHIF v3's study list sends with every search.
OHIF_PARAMS = "limit=101&offset=0&includefield=00081030,00080060"
MODALITIES = ("CT", "MR", "XA", "CR", "US")
RANGE_DAYS = (1, 7, 31, 92, 181)
DICOM_JSON = "application/dicom+json"


@dataclass(frozen=True)
class Kind:
    """One kind of query and the request paths (below the DICOMweb root) to time."""

    key: str
    title: str
    paths: list[str]


@dataclass
class Timings:
    """Latencies (seconds) and result counts of one kind on one server."""

    seconds: list[float] = field(default_factory=list)
    results: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def p50_ms(self) -> float:
        return statistics.median(self.seconds) * 1000 if self.seconds else float("nan")

    @property
    def p95_ms(self) -> float:
        if len(self.seconds) < 2:
            return self.p50_ms
        return statistics.quantiles(self.seconds, n=20, method="inclusive")[18] * 1000

    @property
    def max_ms(self) -> float:
        return max(self.seconds) * 1000 if self.seconds else float("nan")

    @property
    def mean_results(self) -> float:
        return statistics.fmean(self.results) if self.results else float("nan")

    def add(self, more: Timings) -> None:
        """Count ``more``'s requests in with these."""
        self.seconds += more.seconds
        self.results += more.results
        self.errors += more.errors


def query_kinds(count: int, study_uids: list[str], seed: int = 3) -> list[Kind]:
    """The five QIDO kinds, ``count`` requests each; ``study_uids`` feed series-of-study."""
    rng = random.Random(seed)
    studies = f"/studies?{OHIF_PARAMS}&fuzzymatching=false"
    return [
        Kind("prefix", "PatientName prefix", [f"{studies}&{_prefix(rng)}" for _ in range(count)]),
        Kind(
            "fuzzy",
            "PatientName fuzzy",
            [f"/studies?{OHIF_PARAMS}&fuzzymatching=true&{_fuzzy(rng)}" for _ in range(count)],
        ),
        Kind("date", "StudyDate range", [f"{studies}&{_dates(rng)}" for _ in range(count)]),
        Kind(
            "modality",
            "ModalitiesInStudy",
            [f"{studies}&ModalitiesInStudy={rng.choice(MODALITIES)}" for _ in range(count)],
        ),
        Kind(
            "series",
            "series of a study",
            [f"/studies/{rng.choice(study_uids)}/series" for _ in range(count)],
        ),
    ]


def _param(name: str, value: str) -> str:
    return f"{name}={quote(value, safe='*,-^?')}"


def _prefix(rng: random.Random) -> str:
    """A family-name prefix as typed: mostly plain lowercase, a quarter with accents."""
    family = rng.choice(list(FAMILIES))
    word = family if rng.random() < 0.25 else search_key(family)
    return _param("PatientName", word[: rng.randint(min(2, len(word)), len(word))] + "*")


def _fuzzy(rng: random.Random) -> str:
    """One whole name word without accents: a family, middle or given name."""
    words = rng.choice((list(FAMILIES), MIDDLE, GIVEN))
    return _param("PatientName", search_key(rng.choice(words)))


def _dates(rng: random.Random) -> str:
    days = (END - START).days
    first = START + timedelta(days=rng.randrange(days))
    last = first + timedelta(days=rng.choice(RANGE_DAYS) - 1)
    return f"StudyDate={first:%Y%m%d}-{last:%Y%m%d}"


def basic_auth(username: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


class Client:
    """One keep-alive HTTP connection, as a browser tab would hold."""

    def __init__(self, base_url: str, headers: dict[str, str] | None = None) -> None:
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.headers = {"Accept": DICOM_JSON, **(headers or {})}
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=300)

    def get(self, path: str) -> tuple[int, bytes, float]:
        """Status, body and seconds from sending the request to the body's last byte.

        A keep-alive connection the server closed is reopened once (and that attempt
        is not timed): the server's idle timeout is not its speed.
        """
        for attempt in (1, 2):
            try:
                started = time.perf_counter()
                self.conn.request("GET", path, headers=self.headers)
                response = self.conn.getresponse()
                body = response.read()
                return response.status, body, time.perf_counter() - started
            except (http.client.HTTPException, ConnectionError):
                self.conn.close()
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=300)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.conn.close()


def time_kind(client: Client, root: str, kind: Kind) -> Timings:
    """Send every request of ``kind`` in turn; record latency and number of results."""
    timings = Timings()
    for path in kind.paths:
        status, body, seconds = client.get(root + path)
        if status not in (200, 204):
            timings.errors.append(f"{status} {path}: {body[:200]!r}")
            continue
        timings.seconds.append(seconds)
        timings.results.append(len(json.loads(body)) if body.strip() else 0)
    return timings
