"""Weight sync learner -> rollout engines: :class:`WeightSync` (``sync.py``, the driver's side)
over the transports of ``transports.py`` (the workers' side, which imports nothing from align).

``WeightSync`` is imported from ``sync.py`` when first asked for (PEP 562): a worker that imports
``align.weight_sync.transports`` (an engine or a learner, at weight-sync set-up) then does not
import the driver's side, which pulls in ``align.cluster`` and the recipe schema.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from align.weight_sync.sync import WeightSync

__all__ = ["WeightSync"]


def __getattr__(name: str) -> Any:
    if name == "WeightSync":
        from align.weight_sync.sync import WeightSync

        return WeightSync
    raise AttributeError(f"module 'align.weight_sync' has no attribute {name!r}")
