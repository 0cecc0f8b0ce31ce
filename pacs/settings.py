"""Runtime settings: ``PACS_*`` environment variables, an optional TOML file, then flags.

Precedence (highest first): command-line flags, ``PACS_*`` environment variables,
the TOML file given with ``--config``, built-in defaults. Paths that default to
somewhere inside the data folder are derived from :attr:`Settings.data_dir` after
loading, so ``PACS_DATA_DIR=/srv/pacs`` moves the index and the blobs with it.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, NoDecode, SettingsConfigDict

from storage.ingest import DuplicatePolicy


class Settings(BaseSettings):
    """Every knob of the archive, one place."""

    model_config = SettingsConfigDict(env_prefix="PACS_", extra="forbid")

    data_dir: Path = Path("./pacs-data")
    database_url: str = ""
    storage_url: str = ""
    ae_title: str = Field("PACS", max_length=16)
    dicom_port: int = Field(11112, ge=0, le=65535)
    http_host: str = "127.0.0.1"
    http_port: int = Field(8000, ge=0, le=65535)
    admin_password: str | None = None

    duplicate_policy: DuplicatePolicy = DuplicatePolicy.KEEP_FIRST
    max_pdu_size: int = Field(4 * 1024 * 1024, ge=0)
    max_associations: int = Field(32, ge=1)
    token_ttl_seconds: int = Field(12 * 3600, ge=60)
    # Calling AE titles that are not registered nodes (``pacs node add``): may they
    # C-FIND, and C-GET / C-MOVE? Registered nodes get exactly their own rights.
    unknown_nodes_may_query: bool = True
    unknown_nodes_may_retrieve: bool = True
    # TLS for the associations we open to nodes registered with ``--tls`` (PS3.15 B.1):
    # the CA certificates that sign theirs (unset: the system's), and our own
    # certificate and key, which DICOM TLS peers usually require.
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None

    # Forwarding (``pacs send``, routing rules): an unreachable node is tried again
    # after retry * 2**(attempt-1) seconds, until max attempts, then the job is dead.
    # A study is routed once no instance arrived for the quiet time. Forwarding runs in
    # the process(es) serving DICOM; 0 workers turn it off in a process, so only one
    # process of a scaled-out archive forwards (it requeues interrupted jobs on start).
    forward_retry_seconds: float = Field(30.0, gt=0)
    forward_max_attempts: int = Field(10, ge=1)
    forward_workers: int = Field(2, ge=0, le=64)
    route_quiet_seconds: float = Field(60.0, ge=0)

    # The URL clients reach us at, when it is not what they send in Host (a reverse
    # proxy): the base of RetrieveURL and BulkDataURI values. Empty: from the request.
    public_url: str = ""

    # STOW-RS: one instance (a part of the body), and the whole body.
    max_upload_part_bytes: int = Field(2 * 1024**3, ge=1)
    max_upload_bytes: int = Field(20 * 1024**3, ge=1)
    # Browser origins (e.g. an OHIF Viewer elsewhere) allowed to call the HTTP API;
    # empty: same origin only, no CORS headers. ``PACS_CORS_ORIGINS=https://a,https://b``.
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # Rendered images (DICOMweb rendered/thumbnail, WADO-URI image/*): the in-memory
    # cache of encoded images, and the worker pool that renders off the event loop
    # (0 workers: one per CPU core; "process" workers escape the GIL at an IPC cost).
    render_cache_bytes: int = Field(256 * 1024**2, ge=0)
    render_workers: int = Field(0, ge=0, le=256)
    render_pool: Literal["thread", "process"] = "thread"

    # One log line per HTTP request. Off by default: the audit trail already records
    # every access to patient data, and the line costs ~10 % of a rendered slice's time.
    access_log: bool = False

    # Report PDFs: the letterhead (name, optional PNG/JPEG logo) and a TrueType font
    # with Vietnamese glyphs (Debian's fonts-dejavu-core; its Bold face is used beside it).
    hospital_name: str = Field("Provincial imaging exchange", max_length=200)
    hospital_logo: Path | None = None
    report_font: Path = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        """A comma-separated string or a JSON list; a trailing slash would never match."""
        if isinstance(value, str):
            text = value.strip()
            value = json.loads(text) if text.startswith("[") else text.split(",")
        if isinstance(value, list):
            return [str(origin).strip().rstrip("/") for origin in value if str(origin).strip()]
        return value

    @model_validator(mode="after")
    def _derive_paths(self) -> Settings:
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir.resolve() / 'index.sqlite'}"
        if not self.storage_url:
            self.storage_url = (self.data_dir.resolve() / "blobs").as_uri()
        return self


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build :class:`Settings` from defaults < TOML file < environment < ``overrides``.

    ``overrides`` are the flags given on the command line; ``None`` values mean
    "not given" and are dropped so they do not mask the environment.
    """
    file_values: dict[str, Any] = {}
    if config_file is not None:
        with config_file.open("rb") as fh:
            file_values = tomllib.load(fh)
    flags = {key: value for key, value in overrides.items() if value is not None}
    from_env = EnvSettingsSource(Settings)()
    return Settings(**{**file_values, **from_env, **flags})
