"""Who may use the gateway, a model, a target: the rules applied to Globus identities.

Every denial says what to do next and never names a group the caller is not in. Identities
that did not come from Globus (API keys) are left to the other plugins.
"""

from __future__ import annotations

from first_proxy import Denial, GatewayConfig, Identity, Target

from .auth_settings import AuthSettings
from .globus_identity import AUTH_NAME

__all__ = ["AuthRules"]

_HELPER = "first-globus-token"
_LOGOUT = "https://app.globus.org/logout"
_JOIN = ("Ask the gateway administrator which Globus group to join, then request membership at "
         "https://app.globus.org/groups.")


class AuthRules:
    """The site's rules (``plugins.first_globus_compute``) and the ``allowed_groups`` of models
    and targets, checked against an identity's session, policies and groups."""

    def __init__(self, settings: AuthSettings, config: GatewayConfig) -> None:
        self.settings = settings
        self._model_groups = {name: model.allowed_groups for name, model in config.models.items()}
        #: Whether any rule looks at groups: if none does, no caller's groups are read.
        self.needs_groups = bool(
            settings.allowed_groups or settings.groups_by_idp
            or any(self._model_groups.values())
            or any(target.allowed_groups for target in config.targets()))

    def check(self, identity: Identity, model: str, target: Target | None) -> Denial | None:
        """The denial of ``identity`` for ``model`` (``target`` None) or one of its targets."""
        if identity.extra.get("auth") != AUTH_NAME:
            return None
        if target is None:
            denial = self._site(identity)
            if denial is not None:
                return denial
            allowed = self._model_groups.get(model, frozenset())
            what = f"The model {model!r}"
        else:
            allowed = target.allowed_groups
            what = f"The {target.name!r} target of {model!r}"
        if allowed and not identity.groups & allowed:
            return Denial(f"{what} is open to members of certain Globus groups, and you are in "
                          f"none of them. {_JOIN}", code="group_membership_required")
        return None

    def _site(self, identity: Identity) -> Denial | None:
        settings = self.settings
        if identity.extra["service_account"]:
            # A client acting as itself has no login session: the site lists the ones it trusts.
            if identity.extra["client_id"] in settings.service_accounts:
                return None
            return Denial("This gateway accepts client-credentials (service account) tokens only "
                          "from the clients its administrator lists: ask them to add your client "
                          "id to plugins.first_globus_compute.service_accounts.",
                          code="service_account_not_allowed")
        logins = identity.extra["logins"]
        if settings.authorized_idps and not any(
                login["idp"] in settings.authorized_idps or login["domain"] in settings.authorized_idps
                for login in logins):
            accepted = ", ".join(sorted(settings.authorized_idps))
            return Denial(f"This gateway accepts logins through {accepted} only, and your Globus "
                          f"session has none. Log out at {_LOGOUT}, then log in again through one "
                          f"of them: `{_HELPER} authenticate --force --domain <domain>`.",
                          code="identity_provider_not_allowed")
        if any(policy not in identity.extra["policies_met"] for policy in settings.policies):
            return Denial("Your Globus session does not meet this gateway's authentication policy "
                          "(such as a recent login through an approved identity provider, as "
                          f"high-assurance policies require). Log out at {_LOGOUT}, then log in "
                          f"again with `{_HELPER} authenticate --force`.",
                          code="session_policy_not_met")
        if settings.allowed_groups and not identity.groups & settings.allowed_groups:
            return Denial(f"This gateway is open to members of certain Globus groups, and you are "
                          f"in none of them. {_JOIN}", code="group_membership_required")
        for login in logins:
            for idp in (login["idp"], login["domain"]):
                required = settings.groups_by_idp.get(idp)
                if required and not identity.groups & required:
                    return Denial(f"Logins through {idp} are open to members of certain Globus "
                                  f"groups, and you are in none of them. {_JOIN}",
                                  code="group_membership_required")
        return None
