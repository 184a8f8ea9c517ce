"""``allowed_groups`` on a model or a target: callers outside every listed group are refused."""

from __future__ import annotations

from ..gateway import Gateway
from ..hookspecs import hookimpl
from ..types import Denial, Identity, Target


@hookimpl(trylast=True)
def authorize(identity: Identity, model: str, target: Target | None,
              gateway: Gateway) -> Denial | None:
    if target is None:
        config = gateway.config.models.get(model)
        allowed = config.allowed_groups if config is not None else frozenset()
    else:
        allowed = target.allowed_groups
    if not allowed or identity.groups & allowed:
        return None
    what = f"model {model!r}" if target is None else f"target {target.name!r} of model {model!r}"
    return Denial(
        f"{what} is open to members of {', '.join(sorted(allowed))}; "
        f"{identity.name!r} is in none of them. Ask your gateway administrator for access.",
        code="group_not_allowed",
    )
