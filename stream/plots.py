"""Pictures a planner would rather look at than read."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def plot_forecast_fans(
    history_file: Path,
    forecasts: dict[str, list[tuple[int, np.ndarray]]],
    items: list[str],
    quantiles: tuple[float, ...],
    out: Path,
    last_days: int = 150,
) -> Path:
    """Draw, per item, the actuals against the one-step-ahead interval and the last multi-horizon fan.

    ``forecasts[item]`` is a list of ``(origin bucket, values [H, Q])`` as the service produced them.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from model.history import read_history

    hist = read_history(history_file)
    row = {str(x): i for i, x in enumerate(hist.item_ids)}
    days = np.arange(hist.n_buckets) + hist.first_bucket
    mid = int(np.argmin(np.abs(np.asarray(quantiles) - 0.5)))
    shown = [it for it in items if it in row]

    def to_date(b: np.ndarray | int) -> np.ndarray:
        return np.asarray(b, dtype="datetime64[D]")

    fig, axes = plt.subplots(len(shown) or 1, 1, figsize=(11, 2.8 * max(1, len(shown))), squeeze=False)
    for ax, item in zip(axes[:, 0], shown, strict=False):
        y = hist.qty[row[item]]
        series = sorted(forecasts.get(item, []), key=lambda t: t[0])
        end = days[-1]
        start = end - last_days
        mask = days >= start
        ax.plot(to_date(days[mask]), y[mask], color="black", lw=1.0, label="actual")
        if series:
            origins = np.array([o for o, _ in series])
            vals = np.stack([v for _, v in series])  # [n, H, Q]
            keep = origins + 1 >= start
            target = origins[keep] + 1
            band = f"P{quantiles[0] * 100:g}-P{quantiles[-1] * 100:g}"
            ax.fill_between(
                to_date(target),
                vals[keep, 0, 0],
                vals[keep, 0, -1],
                step="mid",
                alpha=0.25,
                color="tab:blue",
                label=f"1-day-ahead {band}",
            )
            ax.plot(to_date(target), vals[keep, 0, mid], color="tab:blue", lw=0.8, label="1-day-ahead P50")
            o_last, v_last = series[-1]
            horizon = o_last + 1 + np.arange(v_last.shape[0])
            ax.fill_between(
                to_date(horizon),
                v_last[:, 0],
                v_last[:, -1],
                alpha=0.3,
                color="tab:orange",
                label=f"fan from {to_date(o_last)}",
            )
            ax.plot(to_date(horizon), v_last[:, mid], color="tab:orange", lw=1.2)
        ax.set_title(f"item {item}", fontsize=10)
        ax.set_ylabel("units / day")
        ax.legend(fontsize=7, loc="upper left", ncols=4)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
