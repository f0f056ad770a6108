"""Expert placement algorithms; every one returns a ``Placement`` (see ``moe.placement.base``)."""

from moe.placement.base import Placement

__all__ = ["Placement"]
