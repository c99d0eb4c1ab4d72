"""Weight sync learner -> rollout engines: :class:`WeightSync` (``sync.py``, the driver's side)
over the transports of ``transports.py`` (the workers' side, which imports nothing from align)."""

from align.weight_sync.sync import WeightSync

__all__ = ["WeightSync"]
