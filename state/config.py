"""Configuration of the per-partition state."""

from __future__ import annotations

from dataclasses import dataclass

from state.buckets import check_freq


@dataclass(frozen=True)
class StateConfig:
    """What a partition's state keeps and how its buckets close.

    ``context_length``, ``horizons``, ``quantiles``, ``feedback_window`` and ``feedback_previous``
    must match the model being
    served; the runner builds this object from the model's metadata so they cannot drift apart.
    """

    freq: str = "D"
    context_length: int = 56
    horizons: int = 14
    quantiles: tuple[float, ...] = (0.1, 0.5, 0.9)
    allowed_lateness_ms: int = 600_000
    feedback_alpha: float = 0.3
    #: Scored buckets kept one by one in the feedback features (the model's ``feedback_window``).
    feedback_window: int = 0
    #: Whether the feedback features hold each horizon's previous forecast (the model's
    #: ``feedback_previous``).
    feedback_previous: bool = False
    initial_capacity: int = 1024
    #: Items without a sale in this many closed buckets are forgotten (0 keeps every item forever).
    evict_after_buckets: int = 0

    def __post_init__(self) -> None:
        check_freq(self.freq)
        if self.context_length < 1:
            raise ValueError(f"context_length must be >= 1, got {self.context_length}")
        if self.horizons < 1:
            raise ValueError(f"horizons must be >= 1, got {self.horizons}")
        if not self.quantiles or list(self.quantiles) != sorted(self.quantiles):
            raise ValueError(f"quantiles must be a non-empty increasing sequence, got {self.quantiles}")
        if self.allowed_lateness_ms < 0:
            raise ValueError(f"allowed lateness must be >= 0 ms, got {self.allowed_lateness_ms}")
        if not 0.0 < self.feedback_alpha <= 1.0:
            raise ValueError(f"feedback_alpha must be in (0, 1], got {self.feedback_alpha}")
        if self.feedback_window < 0:
            raise ValueError(f"feedback_window must be >= 0, got {self.feedback_window}")
        if self.evict_after_buckets < 0:
            raise ValueError(f"evict_after_buckets must be >= 0, got {self.evict_after_buckets}")
        if self.initial_capacity < 1:
            raise ValueError(f"initial_capacity must be >= 1, got {self.initial_capacity}")
