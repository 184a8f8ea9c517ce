"""Globus Auth tested end to end: the plugin loaded through its entry point into a gateway on
loopback, the real ``openai`` SDK as the caller with a Globus access token as its key, and the
real globus-sdk introspecting that token at a fake of Globus Auth and Groups."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import openai
import pytest

from first_proxy import Identity, hookimpl
from first_proxy.errors import ConfigError
from first_proxy.plugins import get_plugin_manager, list_plugins
from first_proxy.testing import (
    TEST_KEY,
    FakeGlobus,
    GatewayServer,
    GlobusUser,
    MakeGateway,
    ReferenceBackend,
    ReferenceUpstream,
    eventually,
)

MODEL = "reference-model"
GATEWAY_ID = "4b1c1e8e-6f1a-4a53-9a3c-0c1f9d6b2a11"
SECRET = "gateway-secret-for-tests"
SCOPE = f"https://auth.globus.org/scopes/{GATEWAY_ID}/action_all"
IDP_EXAMPLE = "0b2b7e53-1a4a-4c4f-8c43-2f1d6e2f7a01"
IDP_PARTNER = "6a4c3a35-0d52-4b1e-9c2e-6d9a3b8f0c02"
IDP_OTHER = "9d1e5b7a-3c2f-4e8a-b6d4-1f0a2c3e4d03"
LLM_USERS = "5f3e2d1c-0b9a-4f8e-8d7c-6b5a4c3d2e10"
PARTNERS = "7a6b5c4d-3e2f-4a1b-9c8d-7e6f5a4b3c20"
HIGH_ASSURANCE = "1c2d3e4f-5a6b-4c7d-8e9f-0a1b2c3d4e30"


@pytest.fixture
def globus(fake_globus: FakeGlobus, monkeypatch: pytest.MonkeyPatch) -> FakeGlobus:
    """The fake, knowing the gateway's confidential client; its secret in the environment."""
    fake_globus.add_client(GATEWAY_ID, SECRET)
    monkeypatch.setenv("TEST_GLOBUS_SECRET", SECRET)
    return fake_globus


class Seen:
    """Records the identities the gateway authorizes."""

    def __init__(self) -> None:
        self.identities: list[Identity] = []

    @hookimpl
    def authorize(self, identity: Identity, target: Any) -> None:
        if target is None:
            self.identities.append(identity)


def target(upstream: ReferenceUpstream, name: str = "a", **more: Any) -> dict[str, Any]:
    return {"name": name, "backend": "reference", "url": upstream.url, "model": MODEL, **more}


async def gateway_for(make_gateway: MakeGateway, upstream: ReferenceUpstream, *,
                      models: dict[str, Any] | None = None, plugins: tuple[Any, ...] = (),
                      **settings: Any) -> GatewayServer:
    """A gateway with the installed plugins, Globus Auth set up with ``settings``."""
    section = {"client_id": GATEWAY_ID, "client_secret": "${TEST_GLOBUS_SECRET}", "scope": SCOPE,
               **settings}
    return await make_gateway(
        {"plugins": {"first_globus_compute": section},
         "models": models or {MODEL: {"targets": [target(upstream)]}}},
        plugins=[ReferenceBackend(), *plugins], load_entrypoints=True)


async def chat(server: GatewayServer, token: str, model: str = MODEL) -> str:
    async with openai.AsyncOpenAI(base_url=server.base_url, api_key=token, max_retries=0) as api:
        answer = await api.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hello globus"}])
    return answer.choices[0].message.content or ""


async def refusal(server: GatewayServer, token: str, model: str = MODEL) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as caught:
        await chat(server, token, model)
    return caught.value


def error_of(refused: openai.APIStatusError) -> dict[str, Any]:
    body = refused.body
    assert isinstance(body, dict), body
    return body  # the SDK hands over the "error" object itself


def alice(**facts: Any) -> GlobusUser:
    return GlobusUser("alice@example.edu", name="Alice Liddell", email="alice@example.edu",
                      idp=IDP_EXAMPLE, **facts)


# -- installed ------------------------------------------------------------------------------


def test_plugin_is_installed() -> None:
    rows = {row["name"]: row for row in list_plugins(get_plugin_manager())}
    assert rows["first_globus_compute"]["version"] == "0.1.0"
    assert {"authenticate", "authorize", "check_config", "lifespan"} <= set(
        rows["first_globus_compute"]["hooks"])


async def test_settings_are_checked_with_their_key_paths(make_gateway: MakeGateway,
                                                         globus: FakeGlobus) -> None:
    with pytest.raises(ConfigError) as caught:
        await make_gateway({"plugins": {"first_globus_compute": {
            "client_id": "not-a-uuid", "client_secret": "s", "scope": "", "allowed_groups": ["staff"],
            "authorized_idps": ["anl.gov", "not a domain"], "groups_by_idp": {"anl.gov": []},
            "cache_seconds": "soon"}}}, load_entrypoints=True)
    paths = dict(caught.value.problems)
    section = "plugins.first_globus_compute"
    assert set(paths) == {f"{section}.{key}" for key in (
        "client_id", "scope", "allowed_groups[0]", "authorized_idps[1]", "groups_by_idp.anl.gov",
        "cache_seconds")}
    assert "UUID" in paths[f"{section}.allowed_groups[0]"]
    with pytest.raises(ConfigError) as caught:
        await make_gateway({"plugins": {"first_globus_compute": {"allowed_groups": [LLM_USERS]}}},
                           load_entrypoints=True)
    [(path, message)] = caught.value.problems
    assert path == f"{section}.allowed_groups" and "scope" in message


# -- tokens ---------------------------------------------------------------------------------


async def test_an_active_token_becomes_the_users_identity(
        make_gateway: MakeGateway, reference_upstream: ReferenceUpstream,
        globus: FakeGlobus) -> None:
    linked = GlobusUser("alice@partner.org", idp=IDP_PARTNER)
    user = alice(linked=[linked])
    token = globus.issue(user, SCOPE, session=[linked, user], policies={HIGH_ASSURANCE})
    seen = Seen()
    server = await gateway_for(make_gateway, reference_upstream, plugins=(seen,),
                               policies=[HIGH_ASSURANCE], authorized_idps=["partner.org"])
    assert await chat(server, token) == "hello globus"
    [identity] = seen.identities
    assert (identity.user_id, identity.username, identity.idp) == (
        user.id, "alice@example.edu", IDP_EXAMPLE)
    extra = identity.extra
    assert (extra["name"], extra["email"]) == ("Alice Liddell", "alice@example.edu")
    assert extra["identity_set"] == (user.id, linked.id)
    assert {(login["idp"], login["domain"]) for login in extra["logins"]} == {
        (IDP_EXAMPLE, "example.edu"), (IDP_PARTNER, "partner.org")}
    assert extra["session_id"] == globus.tokens[token].session_id
    assert extra["policies_met"] == (HIGH_ASSURANCE,)
    assert extra["service_account"] is False
    assert extra["expires_at"] == globus.tokens[token].exp
    [call] = globus.received
    assert call.headers["Authorization"].startswith("Basic ")
    assert call.form["include"] == "identity_set,session_info,identity_set_detail"
    assert call.form["authentication_policies"] == HIGH_ASSURANCE
    assert reference_upstream.received[-1].headers.get("Authorization") != f"Bearer {token}"
    assert (await server.logged())[0]["user"] == user.id


async def test_a_token_is_introspected_once_while_its_answer_is_cached(
        make_gateway: MakeGateway, reference_upstream: ReferenceUpstream,
        globus: FakeGlobus, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    token = globus.issue(alice(), SCOPE)
    server = await gateway_for(make_gateway, reference_upstream)
    for _ in range(3):
        assert await chat(server, token) == "hello globus"
    assert globus.calls["introspect"] == 1
    # A site without group rules never asks for groups.
    assert globus.calls["dependent_token"] == globus.calls["my_groups"] == 0
    assert token not in caplog.text
    assert not any(token in str(row) for row in await server.logged())


async def test_twenty_concurrent_first_uses_make_one_introspection(
        make_gateway: MakeGateway, reference_upstream: ReferenceUpstream,
        globus: FakeGlobus) -> None:
    token = globus.issue(alice(groups={LLM_USERS}), SCOPE)
    server = await gateway_for(make_gateway, reference_upstream, allowed_groups=[LLM_USERS])
    globus.pause()  # every request arrives before Globus answers any
    calls = [asyncio.create_task(chat(server, token)) for _ in range(20)]
    await eventually(lambda: len(server.gateway.in_flight) == 20)
    await eventually(lambda: globus.calls["introspect"] >= 1)
    globus.resume()
    assert await asyncio.gather(*calls) == ["hello globus"] * 20
    assert (globus.calls["introspect"], globus.calls["dependent_token"],
            globus.calls["my_groups"]) == (1, 1, 1)


@pytest.mark.parametrize(("facts", "code"), [
    ({"active": False}, "invalid_token"),
    ({"expires_in": -60}, "invalid_token"),           # Globus itself reports it inactive
    ({"expires_in": -60, "active": True}, "token_expired"),   # expired after Globus looked
])
async def test_tokens_globus_does_not_vouch_for_are_refused(
        make_gateway: MakeGateway, reference_upstream: ReferenceUpstream, globus: FakeGlobus,
        facts: dict[str, Any], code: str) -> None:
    token = globus.issue(alice(), SCOPE, **facts)
    server = await gateway_for(make_gateway, reference_upstream, negative_cache_seconds=60)
    for _ in range(2):
        refused = await refusal(server, token)
        assert (refused.status_code, error_of(refused)["code"]) == (401, code)
        assert "first-globus-token get_access_token" in error_of(refused)["message"]
    assert globus.calls["introspect"] == 1  # the refusal is remembered
    assert not reference_upstream.received


async def test_a_token_for_another_scope_is_refused(
        make_gateway: MakeGateway, reference_upstream: ReferenceUpstream,
        globus: FakeGlobus) -> None:
    token = globus.issue(alice(), "urn:globus:auth:scope:transfer.api.globus.org:all")
    server = await gateway_for(make_gateway, reference_upstream)
    refused = await refusal(server, token)
    assert (refused.status_code, error_of(refused)["code"]) == (401, "insufficient_scope")
    assert SCOPE in error_of(refused)["message"]


async def test_a_revoked_token_stops_working_once_its_cache_entry_expires(
        make_gateway: MakeGateway, reference_upstream: ReferenceUpstream,
        globus: FakeGlobus) -> None:
    token = globus.issue(alice(), SCOPE)
    server = await gateway_for(make_gateway, reference_upstream, cache_seconds=0.2)
    assert await chat(server, token) == "hello globus"
    globus.revoke(token)

    async def refused() -> bool:
        try:
            await chat(server, token)
        except openai.AuthenticationError as e:
            return error_of(e)["code"] == "invalid_token"
        return False

    assert await eventually(refused)


async def test_a_cache_entry_never_outlives_the_token(
        make_gateway: MakeGateway, reference_upstream: ReferenceUpstream,
        globus: FakeGlobus) -> None:
    token = globus.issue(alice(), SCOPE, expires_in=3)
    server = await gateway_for(make_gateway, reference_upstream, cache_seconds=3600)
    assert await chat(server, token) == "hello globus"

    async def refused() -> bool:
        try:
            await chat(server, token)
        except openai.AuthenticationError:
            return True
        return False

    assert await eventually(refused)
    assert globus.calls["introspect"] == 2


async def test_a_service_account_token_is_accepted_as_its_client_identity(
        make_gateway: MakeGateway, reference_upstream: ReferenceUpstream,
        globus: FakeGlobus) -> None:
    import globus_sdk

    listed, listed_secret = globus.add_client()
    other, other_secret = globus.add_client()

    def client_token(client_id: str, secret: str) -> str:
        client = globus_sdk.ConfidentialAppAuthClient(client_id, secret)
        tokens = client.oauth2_client_credentials_tokens(requested_scopes=SCOPE)
        return str(tokens.by_scopes[SCOPE]["access_token"])

    seen = Seen()
    server = await gateway_for(make_gateway, reference_upstream, plugins=(seen,),
                               service_accounts=[listed], authorized_idps=[IDP_EXAMPLE],
                               policies=[HIGH_ASSURANCE])
    token = await asyncio.to_thread(client_token, listed, listed_secret)
    assert await chat(server, token) == "hello globus"
    identity = seen.identities[-1]
    assert (identity.user_id, identity.username) == (listed, f"{listed}@clients.auth.globus.org")
    assert identity.extra["service_account"] is True and identity.extra["client_id"] == listed
    refused = await refusal(server, await asyncio.to_thread(client_token, other, other_secret))
    assert (refused.status_code, error_of(refused)["code"]) == (403, "service_account_not_allowed")


async def test_an_api_key_is_never_sent_to_globus(
        make_gateway: MakeGateway, reference_upstream: ReferenceUpstream,
        globus: FakeGlobus) -> None:
    server = await gateway_for(make_gateway, reference_upstream, allowed_groups=[LLM_USERS])
    assert await chat(server, TEST_KEY) == "hello globus"
    assert globus.calls["introspect"] == 0
    assert not any(TEST_KEY in str(call) for call in globus.received)


# -- authorization --------------------------------------------------------------------------


async def test_allowed_groups_let_members_in_and_never_name_the_group(
        make_gateway: MakeGateway, reference_upstream: ReferenceUpstream,
        globus: FakeGlobus) -> None:
    member = globus.issue(alice(groups={LLM_USERS}), SCOPE)
    outsider = globus.issue(GlobusUser("bob@example.edu", idp=IDP_EXAMPLE, groups={PARTNERS}), SCOPE)
    server = await gateway_for(make_gateway, reference_upstream, allowed_groups=[LLM_USERS])
    assert await chat(server, member) == "hello globus"
    # A user's groups are cached for the user, whichever token they come with.
    another = globus.issue(globus.tokens[member].user, SCOPE)
    assert await chat(server, another) == "hello globus"
    assert (globus.calls["introspect"], globus.calls["my_groups"]) == (2, 1)
    refused = await refusal(server, outsider)
    error = error_of(refused)
    assert (refused.status_code, error["code"]) == (403, "group_membership_required")
    assert LLM_USERS not in error["message"] and "app.globus.org/groups" in error["message"]
    assert len(reference_upstream.received) == 2


async def test_allowed_groups_of_models_and_targets_hold_globus_group_ids(
        make_gateway: MakeGateway, reference_upstream: ReferenceUpstream,
        globus: FakeGlobus) -> None:
    models = {MODEL: {"allowed_groups": [LLM_USERS], "targets": [target(reference_upstream)]},
              "partner-model": {"targets": [target(reference_upstream, "partners-only",
                                                   allowed_groups=[PARTNERS])]}}
    member = globus.issue(alice(groups={LLM_USERS}), SCOPE)
    server = await gateway_for(make_gateway, reference_upstream, models=models)
    assert await chat(server, member) == "hello globus"
    for model, group in ((MODEL, PARTNERS), ("partner-model", LLM_USERS)):
        outsider = globus.issue(GlobusUser("bob@example.edu", idp=IDP_EXAMPLE, groups={group}),
                                SCOPE)
        refused = await refusal(server, outsider, model)
        error = error_of(refused)
        assert (refused.status_code, error["code"]) == (403, "group_membership_required")
        assert LLM_USERS not in error["message"] and PARTNERS not in error["message"]
    async with openai.AsyncOpenAI(base_url=server.base_url, api_key=member,
                                  max_retries=0) as api:
        assert [m.id async for m in api.models.list()] == [MODEL]


async def test_authorized_idps_take_ids_and_domains(
        make_gateway: MakeGateway, reference_upstream: ReferenceUpstream,
        globus: FakeGlobus) -> None:
    server = await gateway_for(make_gateway, reference_upstream,
                               authorized_idps=[IDP_EXAMPLE, "Partner.org"])
    by_id = globus.issue(alice(), SCOPE)
    by_domain = globus.issue(GlobusUser("carol@partner.org", idp=IDP_PARTNER), SCOPE)
    assert await chat(server, by_id) == await chat(server, by_domain) == "hello globus"
    elsewhere = globus.issue(GlobusUser("dave@gmail.com", idp=IDP_OTHER), SCOPE)
    refused = await refusal(server, elsewhere)
    error = error_of(refused)
    assert (refused.status_code, error["code"]) == (403, "identity_provider_not_allowed")
    assert "partner.org" in error["message"] and "authenticate --force" in error["message"]


async def test_policies_are_evaluated_by_globus_at_introspection(
        make_gateway: MakeGateway, reference_upstream: ReferenceUpstream,
        globus: FakeGlobus) -> None:
    server = await gateway_for(make_gateway, reference_upstream, policies=[HIGH_ASSURANCE])
    assert await chat(server, globus.issue(alice(), SCOPE, policies={HIGH_ASSURANCE})) \
        == "hello globus"
    refused = await refusal(server, globus.issue(alice(), SCOPE))
    error = error_of(refused)
    assert (refused.status_code, error["code"]) == (403, "session_policy_not_met")
    assert "app.globus.org/logout" in error["message"]
    assert {call.form["authentication_policies"] for call in globus.received} == {HIGH_ASSURANCE}


async def test_groups_by_idp_apply_to_logins_through_that_idp(
        make_gateway: MakeGateway, reference_upstream: ReferenceUpstream,
        globus: FakeGlobus) -> None:
    server = await gateway_for(make_gateway, reference_upstream,
                               groups_by_idp={IDP_EXAMPLE: [LLM_USERS], "partner.org": [PARTNERS]})
    assert await chat(server, globus.issue(alice(groups={LLM_USERS}), SCOPE)) == "hello globus"
    assert await chat(server, globus.issue(GlobusUser("dave@gmail.com", idp=IDP_OTHER),
                                           SCOPE)) == "hello globus"
    for user in (GlobusUser("bob@example.edu", idp=IDP_EXAMPLE, groups={PARTNERS}),
                 GlobusUser("carol@partner.org", idp=IDP_PARTNER, groups={LLM_USERS})):
        refused = await refusal(server, globus.issue(user, SCOPE))
        error = error_of(refused)
        assert (refused.status_code, error["code"]) == (403, "group_membership_required")
        assert LLM_USERS not in error["message"] and PARTNERS not in error["message"]


async def test_a_token_that_cannot_read_groups_is_told_to_log_in_again(
        make_gateway: MakeGateway, reference_upstream: ReferenceUpstream,
        globus: FakeGlobus) -> None:
    server = await gateway_for(make_gateway, reference_upstream, allowed_groups=[LLM_USERS])
    token = globus.issue(alice(groups={LLM_USERS}), SCOPE, groups_dependent=False)
    refused = await refusal(server, token)
    assert (refused.status_code, error_of(refused)["code"]) == (401, "groups_unreadable")
    assert "authenticate --force" in error_of(refused)["message"]


# -- Globus unavailable ---------------------------------------------------------------------


async def test_auth_down_is_a_503_and_service_resumes_when_it_is_back(
        make_gateway: MakeGateway, reference_upstream: ReferenceUpstream,
        globus: FakeGlobus) -> None:
    token = globus.issue(alice(), SCOPE)
    server = await gateway_for(make_gateway, reference_upstream)
    await globus.stop()
    for _ in range(2):  # nothing is remembered of a failure
        refused = await refusal(server, token)
        assert (refused.status_code, error_of(refused)["code"]) == (
            503, "identity_provider_unavailable")
        assert "Globus Auth cannot be reached" in error_of(refused)["message"]
        assert refused.response.headers["Retry-After"] == "5"
    await globus.start()
    assert await chat(server, token) == "hello globus"


@pytest.mark.parametrize("route", ["introspect", "dependent_token", "my_groups"])
async def test_a_globus_5xx_is_a_503_until_globus_recovers(
        make_gateway: MakeGateway, reference_upstream: ReferenceUpstream, globus: FakeGlobus,
        route: str) -> None:
    token = globus.issue(alice(groups={LLM_USERS}), SCOPE)
    server = await gateway_for(make_gateway, reference_upstream, allowed_groups=[LLM_USERS])
    globus.failing[route] = 502
    refused = await refusal(server, token)
    assert (refused.status_code, error_of(refused)["code"]) == (503, "identity_provider_unavailable")
    service = "Globus Groups" if route == "my_groups" else "Globus Auth"
    assert f"{service} answered 502" in error_of(refused)["message"]
    del globus.failing[route]
    assert await chat(server, token) == "hello globus"


async def test_a_gateway_with_the_wrong_secret_says_it_is_not_the_callers_fault(
        make_gateway: MakeGateway, reference_upstream: ReferenceUpstream, globus: FakeGlobus,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("TEST_GLOBUS_SECRET", "a-stale-secret")
    token = globus.issue(alice(), SCOPE)
    server = await gateway_for(make_gateway, reference_upstream)
    refused = await refusal(server, token)
    assert (refused.status_code, error_of(refused)["code"]) == (503, "identity_provider_unavailable")
    assert "not a problem with your token" in error_of(refused)["message"]
    assert "client_secret" in caplog.text and token not in caplog.text

