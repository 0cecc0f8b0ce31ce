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
    # Sign-in (api/auth.py, api/sessions.py): a short-lived JWT access token and an
    # opaque refresh token that is rotated on each use; the refresh token's lifetime is
    # the longest a session lasts without typing the password again. token_ttl_seconds
    # is its older name, used when refresh_token_seconds is not given.
    token_ttl_seconds: int = Field(12 * 3600, ge=60)
    access_token_seconds: int = Field(900, ge=30, le=24 * 3600)
    refresh_token_seconds: int | None = Field(None, ge=60)
    # HS256 key of the access tokens; unset: generated once into <data dir>/jwt-secret
    # (mode 0600), so processes sharing a data folder agree. At least 32 characters.
    jwt_secret: str | None = Field(None, min_length=32, repr=False)
    # Lock-out: this many wrong passwords in a row lock an account for that long.
    sign_in_max_failures: int = Field(5, ge=1)
    sign_in_lockout_minutes: float = Field(15.0, gt=0)
    # POST /api/auth/token per client address (in memory, per process): 429 past it.
    sign_in_per_minute: int = Field(10, ge=1)
    # OpenID Connect sign-in (optional; off while oidc_issuer is empty). The role comes
    # from the id_token claim oidc_role_claim when set and valid, else oidc_default_role;
    # oidc_create_users lets a first sign-in create the local user (else an admin must).
    oidc_issuer: str = ""
    oidc_client_id: str = ""
    oidc_client_secret: str = Field("", repr=False)
    oidc_role_claim: str = ""
    oidc_default_role: Literal["admin", "radiologist", "referring", "modality"] = "referring"
    oidc_create_users: bool = False
    oidc_scopes: str = "openid profile email"

    # HTTPS: served on PACS_HTTP_PORT when both are set. HSTS is sent over TLS, or
    # always when behind_tls_proxy says a TLS-terminating proxy is in front.
    https_cert_file: Path | None = None
    https_key_file: Path | None = None
    behind_tls_proxy: bool = False
    # Request bodies other than STOW-RS (which has max_upload_bytes): JSON and forms.
    max_request_body_bytes: int = Field(1024 * 1024, ge=1024)
    # The most results one QIDO-RS page returns, whatever limit= asks for.
    max_query_results: int = Field(1000, ge=1, le=100_000)
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
    # DICOM TLS listener (PS3.15 B.1) beside the plain port, serving the same services
    # with tls_cert_file/tls_key_file as the server certificate: it runs when both are
    # set and the port is not 0 (2762 is IANA's dicom-tls port). Client certificates
    # are verified against tls_ca_file (else the system's CAs) when required.
    dicom_tls_port: int = Field(2762, ge=0, le=65535)
    dicom_tls_require_client_cert: bool = False
    # Strict mode: an association whose calling AE title is not a registered node is
    # rejected at association time (PS3.8 9.3.4), on the plain and the TLS port.
    dicom_strict_nodes: bool = False

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
        if self.refresh_token_seconds is None:
            self.refresh_token_seconds = self.token_ttl_seconds
        if (self.https_cert_file is None) != (self.https_key_file is None):
            raise ValueError("https_cert_file and https_key_file are set together or not at all")
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
