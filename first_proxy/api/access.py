"""What a caller may use: the models and, of each, the targets ``authorize`` lets them reach."""

from __future__ import annotations

from ..config import ModelConfig
from ..gateway import Gateway
from ..types import Identity, Target

__all__ = ["allowed_targets", "usable_targets"]


async def allowed_targets(gateway: Gateway, identity: Identity,
                          model: ModelConfig) -> list[Target]:
    """The targets of ``model`` the caller may be routed to, in file order; none when the
    model itself is refused."""
    if await gateway.hooks.authorize(identity, model.name, None) is not None:
        return []
    return [target for target in model.targets
            if await gateway.hooks.authorize(identity, model.name, target) is None]


async def usable_targets(gateway: Gateway, identity: Identity) -> dict[str, list[Target]]:
    """Each model the caller may use -> its targets they may be routed to, in file order.

    A model whose every target is refused is left out, as it is of ``GET /v1/models``.
    """
    found: dict[str, list[Target]] = {}
    for model in gateway.config.models.values():
        targets = await allowed_targets(gateway, identity, model)
        if targets:
            found[model.name] = targets
    return found
