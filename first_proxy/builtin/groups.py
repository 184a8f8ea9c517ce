"""``allowed_groups`` on a model or a target: callers outside every listed group are refused."""

from __future__ import annotations

from ..gateway import Gateway
from ..hookspecs import hookimpl
from ..types import Denial, Identity, Target


@hookimpl(trylast=True)
def authorize(identity: Identity, model: str, target: Target | None,
              gateway: Gateway) -> Denial | None:
    if target is None:
        config = gateway.model(model)
        allowed = config.allowed_groups if config is not None else frozenset()
        what = f"model {model!r}"
    else:
        allowed = target.allowed_groups
        what = f"target {target.name!r} of model {model!r}"
    if not allowed or identity.groups & allowed:
        return None
    return Denial(
        f"{what} is open to members of {', '.join(sorted(allowed))}; "
        f"{identity.name!r} is in none of them. Ask your gateway administrator for access.",
        code="group_not_allowed",
    )
