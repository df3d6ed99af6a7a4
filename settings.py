"""Configuration, read once from the environment (and an optional `.env`).

The JWT secret is the one value that must never live in code: when `JWT_SECRET`
is unset, a strong random secret is generated once and kept beside the store
(mode 0600), so tokens survive restarts and every worker signs with the same key.
With `DATABASE_URL` (several hosts) `JWT_SECRET` must be set: one key for all hosts.
"""

import os
import secrets
import time
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MIN_SECRET_BYTES = 32


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    users_file: Path = Path("users.json")
    jwt_secret: SecretStr | None = None
    bcrypt_rounds: int = Field(12, ge=4, le=31)
    access_token_expire_minutes: float = Field(30, gt=0)
    refresh_token_expire_days: float = Field(7, gt=0)
    session_max_days: float = Field(30, gt=0, description="a login session's absolute lifetime: no refresh after it")
    anonymous_token_expire_days: float = Field(30, gt=0)
    anonymous_login_rate_limit: int = Field(100, ge=0, description="per client address and hour; 0 disables")
    anonymous_login_global_limit: int = Field(10_000, ge=0, description="new visitors per hour, all clients; 0 disables")
    login_rate_limit: int = Field(30, ge=0, description="login attempts per client address and minute; 0 disables")
    register_rate_limit: int = Field(30, ge=0, description="registrations per client address and hour; 0 disables")
    login_max_failures: int = Field(5, ge=0, description="per username and client address; 0 disables")
    login_max_failures_per_account: int = Field(50, ge=0, description="per username, all addresses; 0 disables")
    login_lockout_seconds: int = Field(900, ge=1, description="the window failures count in")
    device_token_days: float = Field(180, gt=0, description="how long a device token keeps a browser trusted")
    challenge_expire_seconds: float = Field(300, gt=0, le=86400, description="how long a proof-of-work challenge "
                                            "may be solved and used")
    challenge_max_number: int = Field(100_000, ge=1, le=100_000_000, description="proof-of-work difficulty: a "
                                      "solver tries half this many SHA-256 hashes on average (~1 s in a browser)")
    hash_queue_max_wait_seconds: float = Field(2, ge=0, description="expected wait for a hash before 503; 0 disables")
    early_retry_delay_seconds: float = Field(1, ge=0, le=60, description="a 429/503 to an address that asks again "
                                             "before its Retry-After waits this long at most; 0: at once")
    refresh_reuse_grace_seconds: float = Field(10, ge=0, description="a just-rotated refresh token still works; 0: off")
    cors_origins: Annotated[list[str], NoDecode] = ["http://localhost:5173", "http://127.0.0.1:5173"]
    webauthn_rp_id: str = Field("localhost", min_length=1, description="the passkeys' relying party: the site's "
                                "domain (no scheme or port); a passkey works only on it and its subdomains")
    webauthn_rp_name: str = Field("FARM auth", min_length=1, description="the service's name as authenticators and "
                                  "TOTP apps show it")
    webauthn_origins: Annotated[list[str], NoDecode] = ["http://localhost:8000", "http://localhost:5173"]
    hsts_seconds: int | None = Field(None, ge=0, description="Strict-Transport-Security max-age; unset: no header")
    frontend_dir: Path = Path(__file__).parent / "frontend" / "dist"
    database_url: SecretStr | None = Field(None, description="postgresql://user:password@host/db; unset: USERS_FILE")
    database_pool_size: int = Field(10, ge=1, le=1000, description="PostgreSQL connections per worker process")
    database_startup_timeout_seconds: float = Field(30, ge=0, description="retry an unreachable database this "
                                                    "long at start-up, then exit (code 3)")
    metrics_token: SecretStr | None = Field(None, description="set: GET /metrics needs it as a Bearer token; "
                                            "unset: /metrics answers loopback clients only")
    metrics_enabled: bool = Field(True, description="false: no /metrics, nothing counted (the bench's baseline)")
    log_format: Literal["text", "json"] = Field("text", description="json: one JSON object per log line")
    audit_retention_days: float = Field(90, gt=0, description="audit events older than this are pruned "
                                        "(hourly); the JSON store drops whole days")
    audit_enabled: bool = Field(True, description="false: nothing is recorded (the bench's baseline only)")

    @field_validator("cors_origins", "webauthn_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @field_validator("database_url")
    @classmethod
    def _postgresql(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(("postgresql://", "postgres://")):
            raise ValueError("DATABASE_URL must start with postgresql:// (e.g. postgresql://user:password@host/db)")
        return value

    @field_validator("jwt_secret")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().encode()) < MIN_SECRET_BYTES:
            raise ValueError(f"JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes; generate one with "
                             "`python -c 'import secrets; print(secrets.token_urlsafe(48))'`")
        return value

    @model_validator(mode="after")
    def _one_key_for_all_hosts(self) -> "Settings":
        if self.database_url is not None and self.jwt_secret is None:
            raise ValueError("JWT_SECRET must be set when DATABASE_URL is: every host must sign tokens with the "
                             "same key, and a generated one is kept on one host's disk")
        return self

    @cached_property
    def secret(self) -> str:
        """The signing key: `JWT_SECRET`, or the one persisted beside the store."""
        if self.jwt_secret is not None:
            return self.jwt_secret.get_secret_value()
        return load_or_create_secret(self.users_file.with_name(self.users_file.name + ".secret"))


def load_or_create_secret(path: Path) -> str:
    """Create the secret file exclusively, so concurrent workers agree on one key."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(50):  # another worker may be writing it right now
            secret = path.read_text().strip()
            if len(secret.encode()) >= MIN_SECRET_BYTES:
                return secret
            time.sleep(0.02)
        raise RuntimeError(f"{path}: secret file is shorter than {MIN_SECRET_BYTES} bytes; delete it or set JWT_SECRET")
    secret = secrets.token_urlsafe(48)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
        f.flush()
        os.fsync(f.fileno())
    return secret
