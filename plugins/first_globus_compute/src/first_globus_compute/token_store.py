"""Where the login helper keeps a user's Globus tokens: one JSON file only its owner can read."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import click

__all__ = ["SavedLogin", "TokenStore", "default_token_dir"]

FILE_NAME = "globus-tokens.json"


def default_token_dir() -> Path:
    """The user's configuration folder for first-proxy (``~/.config/first-proxy`` on Linux,
    following ``XDG_CONFIG_HOME``)."""
    return Path(click.get_app_dir("first-proxy"))


@dataclass(frozen=True)
class SavedLogin:
    """The tokens of one login to one gateway (one scope), and who logged in."""

    client_id: str
    scope: str
    username: str
    access_token: str
    #: When the access token expires (seconds since the epoch).
    expires_at: int
    refresh_token: str | None


class TokenStore:
    """Logins by gateway scope, in ``<directory>/globus-tokens.json`` (mode 0600, folder 0700)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / FILE_NAME

    def load(self, scope: str) -> SavedLogin | None:
        found = self._read().get(scope)
        if found is None:
            return None
        try:
            return SavedLogin(**found)  # type: ignore[arg-type]
        except TypeError:
            raise self._unreadable() from None

    def save(self, login: SavedLogin) -> None:
        logins = self._read()
        logins[login.scope] = asdict(login)
        self._write(logins)

    def remove(self, scope: str) -> None:
        logins = self._read()
        logins.pop(scope, None)
        if logins:
            self._write(logins)
        else:
            self.path.unlink(missing_ok=True)

    def _read(self) -> dict[str, dict[str, object]]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return {}
        try:
            return dict(json.loads(text)["logins"])
        except (ValueError, KeyError, TypeError):
            raise self._unreadable() from None

    def _unreadable(self) -> click.ClickException:
        return click.ClickException(
            f"{self.path} is not a token file this helper wrote; move it away and log in "
            "again with `first-globus-token authenticate`.")

    def _write(self, logins: dict[str, dict[str, object]]) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        partial = self.path.with_name(f".{FILE_NAME}.partial")
        # Created readable by its owner alone; replaced in one step, so never seen half written.
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as file:
            os.fchmod(file.fileno(), 0o600)
            json.dump({"logins": logins}, file, indent=2)
        os.replace(partial, self.path)
