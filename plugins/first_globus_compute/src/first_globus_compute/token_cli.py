"""``first-globus-token``: log in to Globus for a gateway, and print a fresh access token.

The gateway's administrator gives users three values, as flags or environment variables:
the helper's native app client id (``FIRST_GLOBUS_CLIENT_ID``), the gateway's scope
(``FIRST_GLOBUS_SCOPE``) and, where the site requires them, the identity-provider domains to
log in through (``FIRST_GLOBUS_DOMAINS``, comma-separated).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import globus_sdk

from .token_store import SavedLogin, TokenStore, default_token_dir

__all__ = ["cli"]

#: Asked for at login besides the gateway's scope, to learn who logged in.
LOGIN_SCOPES = ("openid", "profile", "email")
_AUTH_SERVER = "auth.globus.org"
#: An access token with less than this many seconds left is refreshed before it is printed.
_REFRESH_MARGIN = 300


@dataclass(frozen=True)
class _Helper:
    client_id: str | None
    scope: str | None
    store: TokenStore

    def needs(self) -> tuple[str, str]:
        """The client id and scope, or an error saying how to give them."""
        missing = [f"{flag} (or {variable})" for value, flag, variable in (
            (self.client_id, "--client-id", "FIRST_GLOBUS_CLIENT_ID"),
            (self.scope, "--scope", "FIRST_GLOBUS_SCOPE")) if not value]
        if missing:
            raise click.UsageError(f"give {' and '.join(missing)}: your gateway administrator "
                                   "has the values")
        assert self.client_id and self.scope
        return self.client_id, self.scope

    def client(self) -> globus_sdk.NativeAppAuthClient:
        return globus_sdk.NativeAppAuthClient(self.needs()[0], app_name="first-globus-token")

    def saved(self) -> SavedLogin:
        found = self.store.load(self.needs()[1])
        if found is None:
            raise click.ClickException("Not logged in: run `first-globus-token authenticate`.")
        return found


@click.group()
@click.option("--client-id", envvar="FIRST_GLOBUS_CLIENT_ID", metavar="UUID",
              help="The login helper's Globus native app client id [env: FIRST_GLOBUS_CLIENT_ID].")
@click.option("--scope", envvar="FIRST_GLOBUS_SCOPE",
              help="The gateway's scope, which its tokens must carry [env: FIRST_GLOBUS_SCOPE].")
@click.option("--token-dir", envvar="FIRST_GLOBUS_TOKEN_DIR",
              type=click.Path(file_okay=False, path_type=Path),
              help="Where tokens are kept [env: FIRST_GLOBUS_TOKEN_DIR; "
                   "default: ~/.config/first-proxy].")
@click.pass_context
def cli(ctx: click.Context, client_id: str | None, scope: str | None,
        token_dir: Path | None) -> None:
    """Log in to Globus for a first-proxy gateway, and print access tokens for it."""
    ctx.obj = _Helper(client_id, scope, TokenStore(token_dir or default_token_dir()))


def _split(values: tuple[str, ...]) -> list[str]:
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


@cli.command()
@click.option("--force", is_flag=True, help="Log in again even if already logged in.")
@click.option("--domain", "domains", multiple=True, envvar="FIRST_GLOBUS_DOMAINS",
              help="Log in through an identity of this domain (repeat, or comma-separate) "
                   "[env: FIRST_GLOBUS_DOMAINS].")
@click.option("--policy", "policies", multiple=True, envvar="FIRST_GLOBUS_POLICIES",
              help="A Globus authentication policy id the session must meet "
                   "[env: FIRST_GLOBUS_POLICIES].")
@click.pass_obj
def authenticate(helper: _Helper, force: bool, domains: tuple[str, ...],
                 policies: tuple[str, ...]) -> None:
    """Log in through a browser and keep the tokens (a refresh token included)."""
    client_id, scope = helper.needs()
    previous = helper.store.load(scope)
    if previous is not None and not force:
        click.echo(f"Already logged in as {previous.username}; `first-globus-token authenticate "
                   "--force` logs in again.", err=True)
        return
    client = helper.client()
    client.oauth2_start_flow([scope, *LOGIN_SCOPES], refresh_tokens=True)
    url = client.oauth2_get_authorize_url(
        session_required_single_domain=_split(domains) or globus_sdk.MISSING,
        session_required_policies=_split(policies) or globus_sdk.MISSING,
        prompt="login" if force else globus_sdk.MISSING)
    click.echo(f"Open this address in a browser, log in, and paste the code it shows:\n\n"
               f"  {url}\n", err=True)
    code = click.prompt("Authorization code", err=True).strip()
    with _globus("exchange the code", refused="Globus did not accept the code: a code works "
                 "once and for a few minutes only. Run `first-globus-token authenticate` again."):
        tokens = client.oauth2_exchange_code_for_tokens(code)
        gateway = tokens.by_scopes[scope]
        username = _who(client, tokens.by_resource_server.get(_AUTH_SERVER))
    login = SavedLogin(client_id=client_id, scope=scope, username=username,
                       access_token=str(gateway["access_token"]),
                       expires_at=int(gateway["expires_at_seconds"]),
                       refresh_token=_optional(gateway.get("refresh_token")))
    helper.store.save(login)
    click.echo(f"Logged in as {username}; the tokens are in {helper.store.path}.", err=True)
    if previous is not None:
        try:
            _revoke(client, previous)
        except click.ClickException as e:
            click.echo(f"The previous login's tokens stay valid until they expire: {e.message}",
                       err=True)


@cli.command("get_access_token")
@click.pass_obj
def get_access_token(helper: _Helper) -> None:
    """Print a valid access token, refreshed first if it is about to expire."""
    login = helper.saved()
    if login.expires_at - time.time() < _REFRESH_MARGIN:
        if login.refresh_token is None:
            raise click.ClickException("The access token has expired and no refresh token is "
                                       "kept: log in again with `first-globus-token authenticate`.")
        with _globus("refresh the access token", refused="Your Globus login has expired or was "
                     "revoked: log in again with `first-globus-token authenticate --force`."):
            fresh = helper.client().oauth2_refresh_token(login.refresh_token).by_scopes[login.scope]
        login = replace(login, access_token=str(fresh["access_token"]),
                        expires_at=int(fresh["expires_at_seconds"]),
                        refresh_token=_optional(fresh.get("refresh_token")) or login.refresh_token)
        helper.store.save(login)
    click.echo(login.access_token)


@cli.command()
@click.pass_obj
def status(helper: _Helper) -> None:
    """Say who is logged in and how long the access token has left."""
    login = helper.saved()
    left = login.expires_at - time.time()
    until = datetime.fromtimestamp(login.expires_at, UTC).strftime("%Y-%m-%d %H:%M UTC")
    click.echo(f"Logged in as {login.username} for {login.scope}.")
    if left > 0:
        click.echo(f"Access token: valid for {_duration(left)} (until {until}).")
    else:
        click.echo(f"Access token: expired {_duration(-left)} ago; `first-globus-token "
                   "get_access_token` refreshes it.")
    click.echo("Refresh token: kept, so get_access_token renews the access token without a "
               "login." if login.refresh_token else "Refresh token: none; log in again once the "
               "access token expires.")


@cli.command()
@click.pass_obj
def logout(helper: _Helper) -> None:
    """Revoke the tokens at Globus and delete them here."""
    login = helper.saved()
    _revoke(helper.client(), login)
    helper.store.remove(login.scope)
    click.echo(f"Logged out {login.username}: the tokens are revoked and deleted.", err=True)


def _who(client: globus_sdk.NativeAppAuthClient, auth: dict[str, Any] | None) -> str:
    """The username behind a login's Globus Auth token, which is then revoked: only the
    gateway's tokens are kept."""
    if auth is None:
        raise click.ClickException("Globus did not grant the openid scope the helper asks for; "
                                   "run `first-globus-token authenticate` again.")
    userinfo = globus_sdk.AuthClient(
        authorizer=globus_sdk.AccessTokenAuthorizer(auth["access_token"])).userinfo()
    for token in (auth.get("refresh_token"), auth["access_token"]):
        if token:
            client.oauth2_revoke_token(token)
    return str(userinfo.get("preferred_username") or userinfo["sub"])


def _revoke(client: globus_sdk.NativeAppAuthClient, login: SavedLogin) -> None:
    with _globus("revoke the tokens", refused="Globus did not revoke the tokens; run "
                 "`first-globus-token logout` again."):
        for token in (login.refresh_token, login.access_token):
            if token:
                client.oauth2_revoke_token(token)


@contextlib.contextmanager
def _globus(doing: str, *, refused: str) -> Iterator[None]:
    """Globus failures as messages that say what to do."""
    try:
        yield
    except globus_sdk.NetworkError:
        raise click.ClickException(f"Globus Auth cannot be reached, so the helper cannot "
                                   f"{doing}: check your network and try again.") from None
    except globus_sdk.GlobusAPIError as e:
        raise click.ClickException(f"{refused} (Globus answered {e.http_status} {e.code}.)") from None
    except KeyError:
        raise click.ClickException(f"Globus did not grant the gateway's scope; {refused}") from None


def _optional(value: object) -> str | None:
    return str(value) if value else None


def _duration(seconds: float) -> str:
    minutes = int(seconds // 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min"
