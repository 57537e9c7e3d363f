"""Where the audit log lives and the keys that sign it, read from the environment (``LLMJP_*``).

The database command line reads these without the web app (and so without
Gradio); the app's ``webapp.settings.Settings`` extends them with the rest.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url

from db.chain import Keyring

# Hugging Face Spaces mounts persistent storage here when it is enabled.
SPACES_PERSISTENT_DIR = Path("/data")


def on_spaces() -> bool:
    """Whether this runs in a Hugging Face Space (which sets ``SPACE_ID``), whatever the disk holds."""
    return bool(os.environ.get("SPACE_ID"))


def spaces_storage() -> Path | None:
    """The Space's persistent storage, when this is a Space and it has some."""
    return SPACES_PERSISTENT_DIR if on_spaces() and SPACES_PERSISTENT_DIR.is_dir() else None


def _default_data_dir() -> Path:
    return spaces_storage() or Path("data").resolve()


class DatabaseSettings(BaseSettings):
    """The database and its keys. Each field is an environment variable (see README)."""

    model_config = SettingsConfigDict(env_prefix="LLMJP_", extra="ignore", frozen=True)

    data_dir: Path = Field(default_factory=_default_data_dir, description="Database, secrets and tiny models.")
    database_url: str | None = Field(None, description="SQLAlchemy URL; SQLite in data_dir when unset.")
    secret_key: SecretStr | None = Field(
        None, description="Signs receipts and salts address hashes; generated into data_dir when unset."
    )
    audit_key: SecretStr | None = Field(
        None,
        description="Signs the audit chain (HMAC-SHA256); derived from the server secret when unset. Keep it "
        "out of the database and its backups.",
    )
    audit_old_keys: list[SecretStr] = Field(
        default_factory=list,
        description='Retired audit keys, as JSON ["old-key", ...]: events signed before a rotation still verify.',
    )

    @property
    def resolved_database_url(self) -> str:
        """The database URL in force."""
        return self.database_url or f"sqlite:///{self.data_dir / 'llmjp-demo.sqlite3'}"

    @property
    def database_url_redacted(self) -> str:
        """The database URL with any password hidden, for logs."""
        return make_url(self.resolved_database_url).render_as_string(hide_password=True)

    def server_secret(self, *, create: bool = True) -> bytes:
        """The server's secret: from settings, else kept in ``data_dir/secret_key`` (created once, mode 0600).

        ``create=False`` (checking tools) raises ``FileNotFoundError`` rather than make a new one.
        """
        if self.secret_key:
            return self.secret_key.get_secret_value().encode()
        path = self.data_dir / "secret_key"
        if not create and not path.is_file():
            raise FileNotFoundError(f"no server secret at {path} (and LLMJP_SECRET_KEY is unset)")
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # O_EXCL: when several replicas start at once, exactly one writes it.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
        value = path.read_text().strip()
        if len(value) < 32:
            raise RuntimeError(f"{path} is too short to be a secret; delete it to have a new one made")
        return value.encode()

    def audit_keyring(self, *, create: bool = True) -> Keyring:
        """The key that signs new audit events, and the retired ones that still verify old events.

        ``LLMJP_AUDIT_KEY``, else the hex HMAC-SHA256(server secret, "llmjp-demo/audit-key").
        """
        current = (
            self.audit_key.get_secret_value().encode()
            if self.audit_key
            # Hex text, so that a retired derived key can be listed in LLMJP_AUDIT_OLD_KEYS as it is.
            else hmac.new(self.server_secret(create=create), b"llmjp-demo/audit-key", hashlib.sha256)
            .hexdigest()
            .encode()
        )
        return Keyring.of(current, (k.get_secret_value().encode() for k in self.audit_old_keys))
