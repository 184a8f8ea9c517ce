"""The users' login helper, ``first-globus-token``, run with click's CliRunner against the fake
Globus Auth. It calls the synchronous SDK, so each run goes to a thread: the fake answers on
the test's event loop meanwhile."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import stat
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import openai
import pytest
from click.testing import CliRunner, Result
from first_globus_compute.token_cli import cli

from first_proxy.testing import FakeGlobus, GlobusUser, MakeGateway, ReferenceBackend

MODEL = "reference-model"
GATEWAY_ID = "0f6a2d3e-8b1c-4d5e-9f7a-2b3c4d5e6f70"
SCOPE = f"https://auth.globus.org/scopes/{GATEWAY_ID}/action_all"
GRANTED = [SCOPE, "openid", "profile", "email"]


@pytest.fixture
def helper(fake_globus: FakeGlobus, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The helper's native client id, registered at the fake; the helper's settings in the
    environment, as a site would hand them out."""
    client_id = fake_globus.add_native_client()
    monkeypatch.setenv("FIRST_GLOBUS_CLIENT_ID", client_id)
    monkeypatch.setenv("FIRST_GLOBUS_SCOPE", SCOPE)
    monkeypatch.setenv("FIRST_GLOBUS_TOKEN_DIR", str(tmp_path / "tokens"))
    return client_id


async def run(*args: str, input: str | None = None) -> Result:
    return await asyncio.to_thread(CliRunner().invoke, cli, list(args), input=input)


def saved(tmp_path: Path) -> dict[str, Any]:
    return json.loads((tmp_path / "tokens" / "globus-tokens.json").read_text())["logins"][SCOPE]


def authorize_url(result: Result) -> dict[str, list[str]]:
    [url] = [word for word in result.stderr.split() if word.startswith("http")]
    return parse_qs(urlsplit(url).query)


async def log_in(fake: FakeGlobus, client_id: str, user: GlobusUser, *args: str) -> Result:
    code = fake.authorization_code(user, client_id, GRANTED)
    result = await run("authenticate", *args, input=f"{code}\n")
    assert result.exit_code == 0, result.output
    return result


def alice() -> GlobusUser:
    return GlobusUser("alice@example.edu", name="Alice")


async def test_authenticate_logs_in_with_pkce_and_keeps_the_tokens_for_the_user_alone(
        fake_globus: FakeGlobus, helper: str, tmp_path: Path) -> None:
    result = await log_in(fake_globus, helper, alice(), "--domain", "example.edu,partner.org")
    query = authorize_url(result)
    assert query["client_id"] == [helper]
    assert set(query["scope"][0].split()) == set(GRANTED)
    assert query["access_type"] == ["offline"]  # refresh tokens
    assert query["session_required_single_domain"] == ["example.edu,partner.org"]
    [exchange] = [c for c in fake_globus.received if c.route == "authorization_code"]
    verifier = exchange.form["code_verifier"].encode()
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier).digest()).rstrip(b"=")
    assert query["code_challenge"] == [challenge.decode()]
    assert "Logged in as alice@example.edu" in result.stderr

    folder = tmp_path / "tokens"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / "globus-tokens.json").stat().st_mode) == 0o600
    login = saved(tmp_path)
    assert login["username"] == "alice@example.edu" and login["refresh_token"]
    assert fake_globus.tokens[login["access_token"]].scope == SCOPE
    # Only the gateway's tokens are kept: the one that read the username is revoked.
    [userinfo] = [c for c in fake_globus.received if c.route == "userinfo"]
    auth_token = userinfo.headers["Authorization"].removeprefix("Bearer ")
    assert fake_globus.tokens[auth_token].revoked

    status = await run("status")
    assert status.exit_code == 0, status.output
    assert "Logged in as alice@example.edu" in status.stdout
    assert "valid for 47 h 59 min" in status.stdout


async def test_authenticate_again_needs_force_which_replaces_the_login(
        fake_globus: FakeGlobus, helper: str, tmp_path: Path) -> None:
    await log_in(fake_globus, helper, alice())
    first = saved(tmp_path)
    again = await run("authenticate")
    assert again.exit_code == 0 and "Already logged in as alice@example.edu" in again.stderr
    assert fake_globus.calls["authorization_code"] == 1

    bob = GlobusUser("bob@example.edu")
    result = await log_in(fake_globus, helper, bob, "--force")
    assert authorize_url(result)["prompt"] == ["login"]
    assert saved(tmp_path)["username"] == "bob@example.edu"
    assert fake_globus.tokens[first["access_token"]].revoked


async def test_get_access_token_prints_a_token_the_gateway_accepts_and_refreshes_it_silently(
        fake_globus: FakeGlobus, helper: str, tmp_path: Path, make_gateway: MakeGateway,
        reference_upstream: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_globus.add_client(GATEWAY_ID, "gateway-secret")
    monkeypatch.setenv("TEST_GLOBUS_SECRET", "gateway-secret")
    server = await make_gateway({
        "plugins": {"first_globus_compute": {
            "client_id": GATEWAY_ID, "client_secret": "${TEST_GLOBUS_SECRET}", "scope": SCOPE}},
        "models": {MODEL: {"targets": [{"backend": "reference", "url": reference_upstream.url}]}},
    }, plugins=[ReferenceBackend()], load_entrypoints=True)
    await log_in(fake_globus, helper, alice())
    printed = await run("get_access_token")
    assert printed.exit_code == 0, printed.output
    token = printed.stdout.strip()
    assert token == saved(tmp_path)["access_token"] and fake_globus.calls["refresh_token"] == 0

    # An access token about to expire is refreshed before it is printed.
    path = tmp_path / "tokens" / "globus-tokens.json"
    data = json.loads(path.read_text())
    data["logins"][SCOPE]["expires_at"] = int(time.time()) + 10
    path.write_text(json.dumps(data))
    refreshed = await run("get_access_token")
    assert refreshed.exit_code == 0, refreshed.output
    fresh = refreshed.stdout.strip()
    assert fresh != token and fake_globus.calls["refresh_token"] == 1
    assert saved(tmp_path)["access_token"] == fresh
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    async with openai.AsyncOpenAI(base_url=server.base_url, api_key=fresh, max_retries=0) as api:
        answer = await api.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "logged in"}])
    assert answer.choices[0].message.content == "logged in"


async def test_a_revoked_login_is_told_to_authenticate_again(
        fake_globus: FakeGlobus, helper: str, tmp_path: Path) -> None:
    await log_in(fake_globus, helper, alice())
    login = saved(tmp_path)
    fake_globus.revoke(login["refresh_token"])
    path = tmp_path / "tokens" / "globus-tokens.json"
    data = json.loads(path.read_text())
    data["logins"][SCOPE]["expires_at"] = 0
    path.write_text(json.dumps(data))
    result = await run("get_access_token")
    assert result.exit_code == 1
    assert "first-globus-token authenticate --force" in result.stderr
    assert result.stdout == ""


async def test_logout_revokes_the_tokens_and_deletes_them(
        fake_globus: FakeGlobus, helper: str, tmp_path: Path) -> None:
    await log_in(fake_globus, helper, alice())
    login = saved(tmp_path)
    result = await run("logout")
    assert result.exit_code == 0, result.output
    assert fake_globus.tokens[login["access_token"]].revoked
    revoked = {c.form["token"] for c in fake_globus.received if c.route == "revoke"}
    assert {login["access_token"], login["refresh_token"]} <= revoked
    assert not (tmp_path / "tokens" / "globus-tokens.json").exists()
    status = await run("status")
    assert status.exit_code == 1 and "Not logged in" in status.stderr


async def test_the_helper_says_which_settings_are_missing(
        fake_globus: FakeGlobus, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FIRST_GLOBUS_CLIENT_ID", raising=False)
    monkeypatch.delenv("FIRST_GLOBUS_SCOPE", raising=False)
    result = await run("get_access_token")
    assert result.exit_code == 2
    assert "--client-id (or FIRST_GLOBUS_CLIENT_ID) and --scope (or FIRST_GLOBUS_SCOPE)" \
        in result.stderr
    assert not fake_globus.received
