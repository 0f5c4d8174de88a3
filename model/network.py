"""MQ-CNN: the multi-horizon quantile network, whole, in one file.

Encoder: a stack of causal dilated convolutions (kernel 2 by default, with residual paths) over the
past target (log1p), its observed mask, the past covariates (calendar, log price) and a short-window
demand level. Global decoder: an MLP that turns the encoding at a forecast origin, the item's scale,
the known future covariates of all horizons, the static embeddings (store, category: pooled across
items, which is what serves cold start) and the feedback features (realised errors of the item's own
past forecasts) into one context per horizon plus a horizon-agnostic context. Local decoder: one small
MLP shared across horizons that maps (horizon context, agnostic context, that horizon's covariates
and, with a ``feedback_window``, what that horizon's query reads from the item's last scored
buckets: a single-head attention over previous forecasts' realised errors, the MQTransformer's
feedback-aware decoding; and, with ``feedback_previous``, what the item's previous origin forecast
for that horizon's target) to monotone, non-negative quantiles, shifted by the calibration fitted
after training (``quantile_shift``, ``model/calibrate.py``) and multiplied back by the item's scale.
Each horizon's known inputs are its calendar plus, with a ``season`` (opt-in), the item's demand one
cycle before the target (relative to the scale, read from the window: a seasonal-naive input). With
``recent`` (weekly data: 8 by default), the global decoder also reads the item's latest buckets of
demand directly, relative to the scale, as a forest reads lag features.

``forward_all`` makes a forecast at every time step in one pass (forking sequences, for training);
``forward`` is the serving entry and equals ``forward_all`` at the last step of a window of
``context_length`` buckets, because the encoder's receptive field fits in the window and both the
scale and the level feature are rolling means that also fit in it. ``forward`` evaluates each encoder
layer only at the steps the last output depends on (with dilations 1, 2, 4, 8, 16: 16, 8, 4, 2 and 1
steps instead of 32 per layer), which is most of what makes serving fast on a CPU.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.features import FUTURE_COVARIATES, PAST_COVARIATES


@dataclass
class ModelArgs:
    """Everything needed to rebuild the network; checkpoints and artefacts carry it."""

    context_length: int = 56
    horizons: int = 14
    quantiles: tuple[float, ...] = (0.1, 0.5, 0.9)
    n_past_cov: int = len(PAST_COVARIATES)
    n_future_cov: int = len(FUTURE_COVARIATES)
    n_static: int = 0  # static categorical columns, each hashed into [0, static_vocab)
    static_vocab: int = 1024
    static_dim: int = 8
    channels: int = 32
    dilations: tuple[int, ...] = (1, 2, 4, 8, 16)
    kernel_size: int = 2
    global_hidden: int = 128
    horizon_context: int = 16
    agnostic_context: int = 32
    local_hidden: int = 32
    use_feedback: bool = True
    # Buckets in the seasonal cycle (0: none). The decoder then also sees, for each horizon, the demand
    # of the same season phase in the last cycle the window holds (a seasonal-naive input); it must
    # fit in the context, so the serving window holds it. Off by default: with season=52 on the weekly
    # set it improved validation wQL by 10% but made the rolling-origin backtest worse.
    season: int = 0
    # Buckets of the item's latest demand (log1p of demand over the scale, 0 where unobserved) the
    # global decoder reads directly, besides the encoding (0: none), as lag features would give it.
    recent: int = 0
    # Scored buckets (newest first) the decoder attends over, besides the error averages (0: none).
    # Each is one block of the feedback input (``state.feedback``); used only with use_feedback.
    feedback_window: int = 0
    attention_dim: int = 16
    # Each horizon's local decoder also reads the quantiles the item's previous origin forecast for
    # the same target (the last horizon has none): the MQTransformer's decoder looking back at its
    # own earlier forecasts, served from the ledger. Used only with use_feedback.
    feedback_previous: bool = False
    # Networks of these arguments, trained from consecutive seeds, whose quantiles are averaged
    # (``MQCNNEnsemble``; 1: a single network). Each member costs a whole training and a forward.
    ensemble: int = 1
    # Width of the hidden layers of a feed-forward member that reads the window itself
    # (``WindowMLP``), averaged with the MQ-CNNs as one more member (0: none). It is the backtest's
    # ffn rung, trained by that rung's recipe; it makes other errors than the convolutions do.
    window_member: int = 0
    # Derived, never set: (3 + len(quantiles)) * (1 + feedback_window), plus horizons *
    # (1 + len(quantiles)) with feedback_previous, the width of state.feedback's features. A field
    # so that checkpoints list it, recomputed so that ``dataclasses.replace`` with other quantiles
    # or another window cannot carry a stale width.
    n_feedback: int = field(default=-1)

    def __post_init__(self) -> None:
        self.quantiles = tuple(float(q) for q in self.quantiles)
        self.dilations = tuple(int(d) for d in self.dilations)
        if self.feedback_window < 0 or self.attention_dim < 1:
            raise ValueError("feedback_window must be >= 0 and attention_dim >= 1")
        if self.ensemble < 1:
            raise ValueError(f"ensemble must be >= 1 (networks averaged), got {self.ensemble}")
        if self.window_member < 0:
            raise ValueError(f"window_member must be >= 0 (0: none), got {self.window_member}")
        self.n_feedback = (3 + len(self.quantiles)) * (1 + self.feedback_window)
        if self.feedback_previous:
            self.n_feedback += self.horizons * (1 + len(self.quantiles))
        if not self.quantiles or list(self.quantiles) != sorted(set(self.quantiles)):
            raise ValueError(f"quantiles must be strictly increasing, got {self.quantiles}")
        if not all(0.0 < q < 1.0 for q in self.quantiles):
            raise ValueError(f"quantiles must lie in (0, 1), got {self.quantiles}")
        if not self.dilations or min(self.dilations) < 1 or self.kernel_size < 2:
            raise ValueError("the encoder needs at least one dilation >= 1 and a kernel of 2 or more")
        if not 0 <= self.season <= self.context_length:
            raise ValueError(f"season must be in [0, context_length], got {self.season}")
        if not 0 <= self.recent <= self.context_length:
            raise ValueError(f"recent must be in [0, context_length], got {self.recent}")
        if self.receptive_field > self.context_length:
            raise ValueError(
                f"the encoder sees {self.receptive_field} buckets but the context is {self.context_length}: "
                "serving would not match training; use fewer/smaller dilations or a longer context"
            )

    @property
    def receptive_field(self) -> int:
        """Buckets the encoder output at one step depends on (that step included)."""
        return 1 + sum((self.kernel_size - 1) * d for d in self.dilations)

    def to_dict(self) -> dict:
        """JSON-ready arguments; ``ModelArgs(**d)`` rebuilds them."""
        d = asdict(self)
        d["quantiles"] = list(self.quantiles)
        d["dilations"] = list(self.dilations)
        return d


def default_args_for(freq: str) -> ModelArgs:
    """Context and horizons that suit a bucket unit (``h``, ``D``, ``W``, ``M``)."""
    if freq == "W":
        # The latest 8 weeks read directly: on the Walmart backtest wQL 0.0616 / 0.0602 against
        # 0.0648 / 0.0639 without (seeds 0 / 1); on daily retail it changed nothing (0.6489 / 0.6495).
        # Two members: on Walmart about 1.5% lower wQL and a quarter less volatility than single
        # networks; a week's bucket closes once a week, so the second forward costs little. The
        # window member on top: lower wQL in five backtest pairs of six (0.5-4%) and lower
        # volatility in all six (README, "A feed-forward member"). The previous forecasts as decoder
        # inputs: lower wQL in three backtest pairs of three (0.7-2.2%), lower volatility in two
        # (README, "Previous forecasts").
        return ModelArgs(
            context_length=52,
            horizons=8,
            dilations=(1, 2, 4, 8, 16),
            recent=8,
            ensemble=2,
            window_member=256,
            feedback_previous=True,
        )
    if freq == "M":
        return ModelArgs(context_length=24, horizons=6, dilations=(1, 2, 4, 8))
    if freq == "h":
        return ModelArgs(context_length=168, horizons=24, dilations=(1, 2, 4, 8, 16, 32, 64))
    return ModelArgs(context_length=56, horizons=14, dilations=(1, 2, 4, 8, 16))


def rolling_mean(target: Tensor, observed: Tensor, window: int) -> Tensor:
    """Mean observed demand over the last ``window`` steps up to each step, [B, T]."""
    # Double precision: differences of long cumulative sums lose digits in float32.
    t = target.shape[1]
    qty = torch.cumsum((target * observed).double(), dim=1)
    cnt = torch.cumsum(observed.double(), dim=1)
    # Sums up to step s minus sums up to step s - window (zero before the series starts).
    qty = qty - F.pad(qty, (window, 0))[:, :t]
    cnt = cnt - F.pad(cnt, (window, 0))[:, :t]
    return (qty / torch.clamp(cnt, min=1.0)).to(target.dtype)


def item_scale(target: Tensor, observed: Tensor, window: int) -> Tensor:
    """An item's scale at each step, [B, T]: 1 + its mean observed demand over the last ``window``
    steps (``state.feedback.item_scale`` of that window). Every network of an ensemble divides by it."""
    return 1.0 + rolling_mean(target, observed, window)


def monotone_quantiles(raw: Tensor) -> Tensor:
    """Non-crossing quantiles from raw outputs [..., Q]: a free base plus positive increments."""
    # The increments are copied out first: torch's CPU softplus is five times slower on the strided
    # slice than the copy and the softplus together.
    return raw[..., :1] + torch.cumsum(F.pad(F.softplus(raw[..., 1:].contiguous()), (1, 0)), dim=-1)


def running_max(x: Tensor) -> Tensor:
    """The running maximum along the last dimension, [..., Q] -> [..., Q] (``torch.cummax``'s
    values), one column at a time: for the few quantiles of a forecast, about four times faster
    on a CPU than ``cummax``."""
    cols = [x[..., :1]]
    for i in range(1, x.shape[-1]):
        cols.append(torch.maximum(cols[-1], x[..., i : i + 1]))
    return torch.cat(cols, dim=-1)


class CausalConv(nn.Module):
    """A causal dilated convolution with a residual path.

    It is written as one linear map of the taps ``(x[s - (k-1)d], ..., x[s - d], x[s])`` so that the
    same weights serve both the dense pass over every step and the sparse pass over the few steps
    that one forecast needs.
    """

    def __init__(self, c_in: int, c_out: int, kernel: int, dilation: int, taps: Tensor) -> None:
        super().__init__()
        self.kernel = kernel
        self.dilation = dilation
        self.mix = nn.Linear(kernel * c_in, c_out)
        self.skip = nn.Linear(c_in, c_out, bias=False) if c_in != c_out else nn.Identity()
        # The sparse pass's taps (see _sparse_taps); derived from the arguments, so not saved.
        self.register_buffer("taps", taps, persistent=False)

    def _combine(self, taps: Tensor, current: Tensor) -> Tensor:
        return F.relu(self.mix(taps)) + self.skip(current)

    def forward(self, x: Tensor) -> Tensor:
        """Every step: ``x`` [B, T, C_in] -> [B, T, C_out]; steps before the series start are zeros."""
        t = x.shape[1]
        padded = F.pad(x, (0, 0, (self.kernel - 1) * self.dilation, 0))
        taps = [padded[:, j * self.dilation : j * self.dilation + t] for j in range(self.kernel)]
        return self._combine(torch.cat(taps, dim=-1), x)

    def sparse(self, x: Tensor) -> Tensor:
        """Only the steps the next layer needs: ``x`` [B, n_in, C_in] -> [B, n_out, C_out], where row
        ``i`` of ``taps`` names the rows of ``x`` that output ``i`` reads (oldest first, itself last)."""
        b, n_out = x.shape[0], self.taps.shape[0]
        # Explicit sizes: -1 is ambiguous for an empty batch.
        gathered = x.index_select(1, self.taps.reshape(-1)).reshape(b, n_out, self.taps.shape[1] * x.shape[2])
        return self._combine(gathered, x.index_select(1, self.taps[:, -1]))


class FeedbackAttention(nn.Module):
    """Each horizon's query attends over the item's last scored buckets (newest first).

    A bucket's token is its realised errors (bias, interval hit rate, pinball per quantile) embedded,
    plus a learned vector for its age. Slots not yet filled (seen flag 0) are masked out; a learned
    "nothing seen" slot is always there, so a new item gets a defined answer rather than an average
    of blanks. The tokens serve as keys and values as they are: a key projection would fold into the
    query's and a value projection into the local decoder's first layer, so neither would add
    anything the layers around the attention cannot learn.
    """

    def __init__(self, query_dim: int, block: int, window: int, dim: int) -> None:
        super().__init__()
        self.window = window
        self.block = block
        self.scale = dim**-0.5
        self.embed = nn.Linear(block, dim)
        self.age = nn.Parameter(0.02 * torch.randn(window, dim))
        self.query = nn.Linear(query_dim, dim)
        self.empty = nn.Parameter(0.02 * torch.randn(1, 1, dim))

    def forward(self, queries: Tensor, blocks: Tensor) -> Tensor:
        """queries [N,H,Dq], blocks [N, window * block] (seen flag first in each) -> [N,H,dim]."""
        n = blocks.shape[0]
        tokens = blocks.reshape(n, self.window, self.block)
        keys = torch.cat([self.empty.expand(n, 1, -1), F.relu(self.embed(tokens)) + self.age], dim=1)
        # Slots along dim 1: torch's CPU softmax over a short last dim is twice as slow.
        scores = torch.bmm(keys, self.query(queries).transpose(1, 2)) * self.scale  # [N, 1+K, H]
        seen = torch.cat([tokens.new_ones(n, 1), tokens[..., 0]], dim=1) > 0.5
        scores = scores.masked_fill(~seen.unsqueeze(2), float("-inf"))
        return torch.bmm(torch.softmax(scores, dim=1).transpose(1, 2), keys)


def _sparse_taps(dilations: tuple[int, ...], kernel: int) -> tuple[list[int], list[Tensor]]:
    """Which steps each layer must compute for the output at the last step.

    Walks down from the top layer, which needs only step 0 (the last; earlier steps are negative).
    Returns the input steps of the bottom layer and, per layer, its taps as rows of its input.
    """
    need = [0]
    taps_per_layer: list[Tensor] = []
    for d in reversed(dilations):
        inputs = sorted({s - j * d for s in need for j in range(kernel)})
        row = {s: i for i, s in enumerate(inputs)}
        taps = [[row[s - j * d] for j in reversed(range(kernel))] for s in need]
        taps_per_layer.append(torch.tensor(taps, dtype=torch.long))
        need = inputs
    taps_per_layer.reverse()
    return need, taps_per_layer


class MQCNN(nn.Module):
    """The multi-horizon quantile CNN (see the module docstring)."""

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.context_length = args.context_length
        self.horizons = args.horizons
        self.n_quantiles = len(args.quantiles)
        self.n_feedback = args.n_feedback
        self.use_feedback = args.use_feedback
        self.n_static = args.n_static
        self.horizon_context = args.horizon_context
        self.agnostic_context = args.agnostic_context
        self.static_dim = args.static_dim
        self.receptive_field = args.receptive_field
        # The level feature's window is short enough that, for every step the last output depends on,
        # it lies inside the serving window: that is what keeps forward == forward_all exact.
        self.level_window = args.context_length - args.receptive_field + 1

        c_in = 3 + args.n_past_cov  # log1p(target), observed, level, covariates
        steps, taps = _sparse_taps(args.dilations, args.kernel_size)
        self.encoder = nn.ModuleList(
            [
                CausalConv(c_in if i == 0 else args.channels, args.channels, args.kernel_size, d, taps[i])
                for i, d in enumerate(args.dilations)
            ]
        )
        # Window rows the sparse pass starts from (step 0 is the window's last).
        self.register_buffer(
            "input_steps", torch.tensor(steps, dtype=torch.long) + args.context_length - 1, persistent=False
        )
        # One table, a separate block of rows per column: equal strings in two columns ("1" as a store
        # and as a department) must not share a vector.
        self.static_emb = nn.Embedding(max(1, args.n_static * args.static_vocab), args.static_dim)
        self.register_buffer(
            "static_offset",
            torch.arange(args.n_static, dtype=torch.long) * args.static_vocab,
            persistent=False,
        )
        # Covariate masks (1 = used, 0 = ignored), persistent so checkpoints and the TorchScript artefact
        # carry them: training turns off the day-of-year columns when the history is too short to learn
        # a yearly cycle from (``mask_covariates``). The inputs the service feeds stay the same.
        self.register_buffer("past_cov_mask", torch.ones(args.n_past_cov))
        self.register_buffer("future_cov_mask", torch.ones(args.n_future_cov))
        # Calibration: a shift of each quantile, in units of the item's scale, fitted after training on
        # the held-out targets (``model.calibrate``). Zero until then, which changes nothing.
        self.register_buffer("quantile_shift", torch.zeros(len(args.quantiles)))
        # Reduced-precision serving casts the whole module (``module.to(torch.bfloat16)``); this empty
        # buffer is cast with it and tells the forward which dtype the layers compute in. Inputs,
        # item scales and the quantiles in demand units stay float32 (see ``decode``).
        self.register_buffer("compute_dtype", torch.zeros(0), persistent=False)
        # Seasonal lags: horizon h reads the bucket season * ceil(h / season) before its target,
        # i.e. ``season_lag[h-1]`` buckets before the origin (log1p of demand / scale, observed flag).
        self.recent = args.recent
        self.season = args.season
        self.n_seasonal = 2 if args.season > 0 else 0
        lags = [args.season * math.ceil(h / max(1, args.season)) - h for h in range(1, args.horizons + 1)]
        lags = lags if args.season > 0 else [0] * args.horizons
        self.register_buffer("season_lag", torch.tensor(lags, dtype=torch.long), persistent=False)
        self.season_pad = max(lags)
        n_known = args.n_future_cov + self.n_seasonal  # known inputs of each horizon
        # The feedback input: the error averages, which the global decoder reads, then the window of
        # scored buckets in blocks of the same width, which the attention reads, then (with
        # feedback_previous) one block per horizon of the previous origin's forecast of its target,
        # which that horizon's local decoder reads.
        self.feedback_block = 3 + self.n_quantiles
        self.feedback_errors = self.feedback_block * (1 + args.feedback_window)
        self.n_previous = 1 + self.n_quantiles if args.use_feedback and args.feedback_previous else 0
        self.fb_attention = (
            FeedbackAttention(
                args.horizon_context, self.feedback_block, args.feedback_window, args.attention_dim
            )
            if args.use_feedback and args.feedback_window > 0
            else None
        )
        n_attended = args.attention_dim if self.fb_attention is not None else 0
        g_in = (
            args.channels
            + args.recent
            + 1  # log scale
            + args.horizons * n_known
            + args.n_static * args.static_dim
            + (self.feedback_block if args.use_feedback else 0)
        )
        self.global_mlp = nn.Sequential(
            nn.Linear(g_in, args.global_hidden),
            nn.ReLU(),
            nn.Linear(args.global_hidden, args.horizons * args.horizon_context + args.agnostic_context),
        )
        self.local_mlp = nn.Sequential(
            nn.Linear(
                args.horizon_context + args.agnostic_context + n_known + n_attended + self.n_previous,
                args.local_hidden,
            ),
            nn.ReLU(),
            nn.Linear(args.local_hidden, self.n_quantiles),
        )

    @torch.jit.unused
    def mask_covariates(self, names: tuple[str, ...]) -> None:
        """Make the network ignore the named covariates (names of ``model.features``) from now on."""
        for mask, cols in ((self.past_cov_mask, PAST_COVARIATES), (self.future_cov_mask, FUTURE_COVARIATES)):
            if mask.numel() != len(cols):
                raise ValueError(f"the network has {mask.numel()} covariate columns, not {list(cols)}")
            for name in names:
                if name in cols:
                    mask[cols.index(name)] = 0.0

    @torch.jit.unused
    def masked_covariates(self) -> list[str]:
        """Names of the covariates the network ignores."""
        out = []
        for mask, cols in ((self.past_cov_mask, PAST_COVARIATES), (self.future_cov_mask, FUTURE_COVARIATES)):
            if mask.numel() == len(cols):
                out += [c for c, m in zip(cols, mask.tolist(), strict=True) if m == 0.0 and c not in out]
        return out

    @torch.jit.export
    def rolling_scale(self, target: Tensor, observed: Tensor) -> Tensor:
        """Item scale at each step, [B, T] (:func:`item_scale` over ``context_length`` steps)."""
        return item_scale(target, observed, self.context_length)

    def _encoder_input(
        self, target: Tensor, observed: Tensor, past_cov: Tensor, steps: Tensor | None = None
    ) -> Tensor:
        """The encoder's input channels [B, T, C_in] at every step, or only at ``steps`` [S]."""
        level = rolling_mean(target, observed, self.level_window)
        if steps is not None:
            # The level reads the whole window; the rest only the steps the encoder will use.
            level = level.index_select(1, steps)
            target = target.index_select(1, steps)
            observed = observed.index_select(1, steps)
            past_cov = past_cov.index_select(1, steps)
        demand = torch.log1p(target.clamp(min=0.0)) * observed
        return torch.cat(
            [
                demand.unsqueeze(-1),
                observed.unsqueeze(-1),
                torch.log1p(level).unsqueeze(-1),
                past_cov * self.past_cov_mask,
            ],
            dim=-1,
        ).to(self.compute_dtype.dtype)

    def _encode_last(self, h: Tensor) -> Tensor:
        """Encoder state at the last step of a window from the input at the window's ``input_steps``
        [B, S, C_in] (``_encoder_input`` with those steps) -> [B, C]."""
        for layer in self.encoder:
            h = layer.sparse(h)
        return h[:, -1]

    def _recent(self, target: Tensor, observed: Tensor, scale: Tensor) -> Tensor:
        """The last ``recent`` buckets' demand up to each step, relative to that step's scale:
        target/observed [B,T], scale [B,T] -> [B,T,recent] (oldest first, zeros before the start)."""
        b, t = target.shape[0], target.shape[1]
        if self.recent == 0:
            return target.new_zeros((b, t, 0))
        demand = F.pad(target.clamp(min=0.0) * observed, (self.recent - 1, 0)).unfold(1, self.recent, 1)
        return torch.log1p(demand / scale.unsqueeze(-1))

    @torch.jit.export
    def encode(self, target: Tensor, observed: Tensor, past_cov: Tensor) -> Tensor:
        """Encoder states at every step: target/observed [B,T], past_cov [B,T,Cp] -> [B,T,C + recent]
        (with ``recent``, the latest demand follows the convolutions' channels)."""
        h = self._encoder_input(target, observed, past_cov)
        for layer in self.encoder:
            h = layer(h)
        if self.recent > 0:
            recent = self._recent(target, observed, self.rolling_scale(target, observed))
            h = torch.cat([h, recent.to(h.dtype)], dim=-1)
        return h

    @torch.jit.export
    def seasonal_inputs(self, target: Tensor, observed: Tensor) -> Tensor:
        """Demand and observed flag of each horizon's seasonal lag at every step, [B,T,H,2] ([B,T,H,0]
        without a season); zeros before the series start."""
        b, t = target.shape[0], target.shape[1]
        if self.season <= 0:
            return target.new_zeros((b, t, self.horizons, 0))
        both = torch.stack([target.clamp(min=0.0) * observed, observed], dim=-1)  # [B,T,2]
        padded = F.pad(both, (0, 0, self.season_pad, 0))
        idx = torch.arange(t, device=target.device).unsqueeze(1) + self.season_pad - self.season_lag  # [T,H]
        return padded[:, idx.reshape(-1)].reshape(b, t, self.horizons, 2)

    @torch.jit.export
    def embed_static(self, static: Tensor) -> Tensor:
        """Static ids [B,S] int64 -> concatenated embeddings [B, S * static_dim]."""
        # Explicit sizes: -1 is ambiguous for an empty batch.
        return self.static_emb(static + self.static_offset).reshape(
            static.shape[0], self.n_static * self.static_dim
        )

    def _previous(self, block: Tensor, scale: Tensor) -> Tensor:
        """The previous origin's forecast of each horizon's target, [N, H*(1+Q)] in demand units ->
        [N, H, 1+Q]: the seen flag, then the quantiles in units of the current scale (the units the
        decoder's own quantiles come out in, so keeping to them is a near-linear map), clipped so
        that one old spike cannot dominate."""
        n = block.shape[0]
        prev = block.reshape(n, self.horizons, self.n_previous)
        seen = prev[..., :1]
        ratio = (F.relu(prev[..., 1:]) / scale.reshape(n, 1, 1)).clamp(max=20.0)
        return torch.cat([seen, ratio * seen], dim=-1)

    def _local_hidden(self, per_horizon: Tensor, agnostic: Tensor) -> Tensor:
        """The local decoder's first layer and its ReLU, which read [ctx, agnostic, the rest] of
        each horizon: per_horizon [N,H,D] (the horizon's context, then the rest), agnostic [N,A]
        -> [N,H,hidden]. The agnostic context is the same for every horizon, so its share of the
        layer is computed once per forecast and added to each horizon's, rather than copied into
        H rows and multiplied H times: the same map, at 45% of the layer's multiplications for
        the daily default (14 horizons of 22 inputs and one of 32, against 14 of 54)."""
        first = self.local_mlp[0]
        a, b = self.horizon_context, self.horizon_context + self.agnostic_context
        shared = F.linear(agnostic, first.weight[:, a:b], first.bias)
        weight = torch.cat([first.weight[:, :a], first.weight[:, b:]], dim=1)
        # In place on the product, which nothing else holds: two fewer tensors of N*H*hidden.
        hidden = F.linear(per_horizon, weight)
        hidden += shared.unsqueeze(1)
        return torch.relu_(hidden)

    def _local_out(self, hidden: Tensor) -> Tensor:
        """The local decoder's last layer: hidden [N,H,D] -> raw quantiles [N,H,Q]. Written as
        ``weight @ hidden.T``: with only Q outputs per row, torch's CPU ``linear`` over N*H rows
        takes twice as long as the product the other way round and its transpose. Reduced
        precision keeps the plain layer: there the two round differently, and eager and scripted
        bfloat16 outputs no longer agree."""
        last = self.local_mlp[2]
        if hidden.dtype != torch.float32:
            return last(hidden)
        n, h = hidden.shape[0], hidden.shape[1]
        flat = hidden.reshape(n * h, hidden.shape[2])
        out = torch.addmm(last.bias.unsqueeze(1), last.weight, flat.t())  # [Q, N*H]
        return out.t().contiguous().reshape(n, h, self.n_quantiles)

    @torch.jit.export
    def decode(
        self,
        enc: Tensor,
        scale: Tensor,
        future_cov: Tensor,
        static_emb: Tensor,
        feedback: Tensor,
        seasonal: Tensor,
    ) -> Tensor:
        """Quantiles for N forecasts, one per row: enc [N,C], scale [N], future_cov [N,H,Cf],
        static_emb [N,E], feedback [N,F], seasonal [N,H,2] (``seasonal_inputs``) -> [N,H,Q] in demand
        units, float32 whatever the dtype the layers compute in."""
        n = enc.shape[0]
        dtype = self.compute_dtype.dtype
        future_cov = future_cov * self.future_cov_mask
        if self.season > 0:
            lag = torch.log1p(seasonal[..., :1] / scale.reshape(n, 1, 1))
            future_cov = torch.cat([future_cov, lag, seasonal[..., 1:]], dim=-1)
        parts = [
            enc,
            torch.log(scale).unsqueeze(-1),
            future_cov.reshape(n, self.horizons * future_cov.shape[2]),
        ]
        if self.n_static > 0:
            parts.append(static_emb)
        if self.use_feedback:
            parts.append(feedback[:, : self.feedback_block])
        g = self.global_mlp(torch.cat([p.to(dtype) for p in parts], dim=-1))
        split = self.horizons * self.horizon_context
        ctx = g[:, :split].reshape(n, self.horizons, self.horizon_context)
        local = [ctx, future_cov.to(dtype)]
        if self.fb_attention is not None:
            local.append(
                self.fb_attention(ctx, feedback[:, self.feedback_block : self.feedback_errors].to(dtype))
            )
        if self.n_previous > 0:
            local.append(self._previous(feedback[:, self.feedback_errors :], scale).to(dtype))
        hidden = self._local_hidden(torch.cat(local, dim=-1), g[:, split:])
        # The quantiles are assembled in float32: bfloat16 keeps three significant digits, too few
        # for the sums of increments and shifts that follow and for the product with the scale.
        raw = self._local_out(hidden).float()
        # Non-crossing: a free base plus positive increments. Non-negative: the ReLU after it, which
        # also lets low quantiles be exactly zero, as they are for intermittent demand.
        q = monotone_quantiles(raw)
        if not self.training:
            # The calibration shift applies to what the network forecasts (non-negative, in scale
            # units); the running maximum keeps the quantiles ordered whatever the shifts.
            q = running_max(F.relu(F.relu(q) + self.quantile_shift.float()))
        # Training scores the quantiles before the ReLU. Behind it, a network whose outputs had all
        # fallen below zero got no gradient and stayed there: on the retail backtest with seed 1
        # every quantile was zero from the first epoch to the last. For demand (y >= 0) the pinball
        # loss of a negative q exceeds that of 0, so the unclipped loss has the same minimiser and
        # pulls such outputs back up.
        return q * scale.reshape(n, 1, 1)

    @torch.jit.export
    def forward_all(
        self,
        target: Tensor,
        observed: Tensor,
        past_cov: Tensor,
        future_cov: Tensor,
        static: Tensor,
        feedback: Tensor,
    ) -> Tensor:
        """Forecasts at every origin (forking sequences): target/observed [B,T], past_cov [B,T,Cp],
        future_cov [B,T,H,Cf], static [B,S] int64, feedback [B,T,F] -> quantiles [B,T,H,Q]."""
        b, t = target.shape[0], target.shape[1]
        enc = self.encode(target, observed, past_cov)
        emb = self.embed_static(static).unsqueeze(1).expand(-1, t, -1)
        out = self.decode(
            enc.reshape(b * t, -1),
            self.rolling_scale(target, observed).reshape(b * t),
            future_cov.reshape(b * t, self.horizons, -1),
            emb.reshape(b * t, -1),
            feedback.reshape(b * t, -1),
            self.seasonal_inputs(target, observed).reshape(b * t, self.horizons, self.n_seasonal),
        )
        return out.reshape(b, t, self.horizons, self.n_quantiles)

    def forward(
        self,
        target: Tensor,
        observed: Tensor,
        past_cov: Tensor,
        future_cov: Tensor,
        static: Tensor,
        feedback: Tensor,
    ) -> Tensor:
        """Forecast at the last step of a window (serving): target/observed [B,L], past_cov [B,L,Cp],
        future_cov [B,H,Cf], static [B,S] int64, feedback [B,F] -> quantiles [B,H,Q]."""
        torch._assert(target.shape[1] == self.context_length, "the window must be context_length long")
        enc = self._encode_last(self._encoder_input(target, observed, past_cov, self.input_steps))
        scale = item_scale(target, observed, self.context_length)[:, -1]
        if self.recent > 0:
            k = self.context_length - self.recent
            recent = self._recent(target[:, k:], observed[:, k:], scale.unsqueeze(1).expand(-1, self.recent))
            enc = torch.cat([enc, recent[:, -1].to(enc.dtype)], dim=-1)
        seasonal = self.seasonal_inputs(target, observed)[:, -1]
        return self.decode(enc, scale, future_cov, self.embed_static(static), feedback, seasonal)


class WindowMLP(nn.Module):
    """A feed-forward member that reads the window itself rather than an encoding of it.

    Per forecast: the last ``context_length`` buckets of demand over the item's scale (the MQ-CNN's
    rolling scale) and their observed flags, the log scale, the calendar of every target bucket and
    the static embeddings, through two hidden layers, to the same non-crossing quantile head as the
    MQ-CNN's decoder, times the scale. It is the backtest's ffn rung (``model.baselines.FeedForward``
    trains it); averaged with MQ-CNNs (``MQCNNEnsemble``) it adds a model that errs differently.
    It takes the MQ-CNN's inputs, so serving needs nothing else; it ignores the past covariates and
    the feedback.
    """

    def __init__(
        self,
        context_length: int,
        horizons: int,
        n_quantiles: int,
        n_static: int,
        vocab: int,
        hidden: int,
        static_dim: int = 8,
        n_future_cov: int = len(FUTURE_COVARIATES),
    ) -> None:
        super().__init__()
        if hidden < 1:
            # A zero width would build a member whose output ignores its inputs, silently.
            raise ValueError(f"a window member needs hidden layers at least 1 wide, got {hidden}")
        self.context_length = context_length
        self.horizons = horizons
        self.n_quantiles = n_quantiles
        self.n_static = n_static
        self.static_dim = static_dim
        self.n_future_cov = n_future_cov
        # The first layer reads the window, its observed flags and the log scale, then each
        # horizon's calendar (n_future_cov columns a horizon) from this column on, then the statics.
        self.calendar_start = 2 * context_length + 1
        self.emb = nn.Embedding(max(1, n_static) * vocab, static_dim)
        self.register_buffer("offset", torch.arange(n_static) * vocab, persistent=False)
        n_in = self.calendar_start + horizons * n_future_cov + static_dim * n_static
        self.net = nn.Sequential(
            nn.Linear(n_in, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, horizons * n_quantiles),
        )
        # As the MQ-CNN's: cast by ``module.to(dtype)``, read to compute in that dtype.
        self.register_buffer("compute_dtype", torch.zeros(0), persistent=False)

    @torch.jit.unused
    def ignore_calendar(self, names: tuple[str, ...]) -> None:
        """Make the member ignore the named target-calendar columns (names of ``FUTURE_COVARIATES``)
        at every horizon: their first-layer weights are zeroed, and training keeps them at zero (their
        gradients are zeroed too, and decay leaves a zero weight at zero), so the exported member
        ignores them in serving as well. Columns that are zero in every training window (Easter's,
        in a history without one) would otherwise keep their random initial weights and fire first
        in serving."""
        n_cov = len(FUTURE_COVARIATES)
        if self.n_future_cov != n_cov:
            raise ValueError(f"the member's calendar columns are not {list(FUTURE_COVARIATES)}")
        first = self.calendar_start
        keep = torch.ones_like(self.net[0].weight)
        for name in names:
            col = FUTURE_COVARIATES.index(name)
            keep[:, first + col : first + self.horizons * n_cov : n_cov] = 0.0
        with torch.no_grad():
            self.net[0].weight.mul_(keep)
        if not bool(keep.all()):
            self.net[0].weight.register_hook(lambda grad: grad * keep.to(grad.device))

    @classmethod
    def from_args(cls, args: ModelArgs) -> WindowMLP:
        """The member ``args.window_member`` asks for."""
        return cls(
            args.context_length,
            args.horizons,
            len(args.quantiles),
            args.n_static,
            args.static_vocab,
            args.window_member,
            args.static_dim,
            args.n_future_cov,
        )

    def scaled_quantiles(
        self, hist: Tensor, obs: Tensor, log_scale: Tensor, cal: Tensor, static: Tensor
    ) -> Tensor:
        """Quantiles in units of the scale, [N,H,Q], from the features of N forecasts: the window
        over the scale and its observed flags [N,L], the log scale [N], the target buckets'
        calendar [N,H,Cf] and static ids [N,S]. Not clipped at zero in training (as the MQ-CNN's
        decoder, so that outputs below zero still get a gradient)."""
        n = hist.shape[0]
        dtype = self.compute_dtype.dtype
        parts = [hist, obs, log_scale.unsqueeze(-1), cal.reshape(n, cal.shape[1] * cal.shape[2])]
        if self.n_static > 0:
            parts.append(self.emb(static + self.offset).reshape(n, self.n_static * self.static_dim).float())
        raw = self.net(torch.cat(parts, dim=1).to(dtype)).float()
        q = monotone_quantiles(raw.reshape(n, self.horizons, self.n_quantiles))
        return q if self.training else F.relu(q)

    @torch.jit.export
    def forward_all(
        self,
        target: Tensor,
        observed: Tensor,
        past_cov: Tensor,
        future_cov: Tensor,
        static: Tensor,
        feedback: Tensor,
    ) -> Tensor:
        """Forecasts at every origin, as :meth:`MQCNN.forward_all`: [B,T,H,Q]."""
        b, t, length = target.shape[0], target.shape[1], self.context_length
        scale = item_scale(target, observed, length)  # [B,T]
        # The window up to each step, zeros before the series start (as unobserved buckets).
        hist = F.pad(target * observed, (length - 1, 0)).unfold(1, length, 1) / scale.unsqueeze(-1)
        obs = F.pad(observed, (length - 1, 0)).unfold(1, length, 1)
        q = self.scaled_quantiles(
            hist.reshape(b * t, length),
            obs.reshape(b * t, length),
            torch.log(scale).reshape(b * t),
            future_cov.reshape(b * t, self.horizons, future_cov.shape[3]),
            static.unsqueeze(1).expand(-1, t, -1).reshape(b * t, static.shape[1]),
        )
        return (q * scale.reshape(b * t, 1, 1)).reshape(b, t, self.horizons, self.n_quantiles)

    def forward(
        self,
        target: Tensor,
        observed: Tensor,
        past_cov: Tensor,
        future_cov: Tensor,
        static: Tensor,
        feedback: Tensor,
    ) -> Tensor:
        """Forecast at the last step of a window (serving), as :meth:`MQCNN.forward`: [B,H,Q]."""
        torch._assert(target.shape[1] == self.context_length, "the window must be context_length long")
        scale = item_scale(target, observed, self.context_length)[:, -1]  # [B]
        q = self.scaled_quantiles(
            target * observed / scale.unsqueeze(-1), observed, torch.log(scale), future_cov, static
        )
        return q * scale.reshape(-1, 1, 1)


class MQCNNEnsemble(nn.Module):
    """Several MQ-CNNs of the same arguments, trained from different seeds, forecasting the mean of
    their quantiles (each member's are non-negative and ordered, so their mean's are too).

    Networks trained from different seeds make different errors, and their mean moves less from
    one origin to the next: on the Walmart backtest two networks were steadier than one in every
    run and about 1.5% better in two seeds of three (README, "Ensembles"). The inputs and outputs
    are a single network's, so everything that serves an :class:`MQCNN` serves an ensemble; each
    member costs a whole training and a forward, hence two only for weekly data by default.

    A :class:`WindowMLP` can be a member too (``ModelArgs.window_member``): it takes the same
    inputs and counts as one member in the mean.
    """

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        first = members[0]
        self.members = nn.ModuleList(members)
        self.n_members = len(members)
        self.context_length = first.context_length
        self.horizons = first.horizons
        self.n_quantiles = first.n_quantiles
        # Cast with the members by ``module.to(dtype)``: serving reads it to tell whether the
        # artefact supports reduced precision, as it does a single network's.
        self.register_buffer("compute_dtype", torch.zeros(0), persistent=False)

    @torch.jit.export
    def forward_all(
        self,
        target: Tensor,
        observed: Tensor,
        past_cov: Tensor,
        future_cov: Tensor,
        static: Tensor,
        feedback: Tensor,
    ) -> Tensor:
        """:meth:`MQCNN.forward_all`, averaged over the members."""
        out = torch.zeros(0)
        for i, member in enumerate(self.members):
            pred = member.forward_all(target, observed, past_cov, future_cov, static, feedback)
            out = pred if i == 0 else out + pred
        return out / float(self.n_members)

    def forward(
        self,
        target: Tensor,
        observed: Tensor,
        past_cov: Tensor,
        future_cov: Tensor,
        static: Tensor,
        feedback: Tensor,
    ) -> Tensor:
        """:meth:`MQCNN.forward` (serving), averaged over the members: [B, H, Q]."""
        out = torch.zeros(0)
        for i, member in enumerate(self.members):
            pred = member(target, observed, past_cov, future_cov, static, feedback)
            out = pred if i == 0 else out + pred
        return out / float(self.n_members)


def build_network(args: ModelArgs) -> MQCNN | MQCNNEnsemble:
    """A fresh network for ``args``: an :class:`MQCNN`, or an ensemble of ``args.ensemble`` of them
    (and a :class:`WindowMLP` last, with ``args.window_member``)."""
    if args.ensemble == 1 and not args.window_member:
        return MQCNN(args)
    members: list[nn.Module] = [MQCNN(args) for _ in range(args.ensemble)]
    if args.window_member:
        members.append(WindowMLP.from_args(args))
    return MQCNNEnsemble(members)


def ignore_calendar_columns(model: MQCNN | MQCNNEnsemble, names: tuple[str, ...]) -> None:
    """Make every member of ``model`` ignore the named calendar columns, as training leaves them:
    masked in each MQ-CNN (:meth:`MQCNN.mask_covariates`), zero weights in a window member
    (:meth:`WindowMLP.ignore_calendar`)."""
    for net in member_networks(model):
        net.mask_covariates(names)
    for member in window_members(model):
        member.ignore_calendar(names)


def member_networks(model: MQCNN | MQCNNEnsemble) -> list[MQCNN]:
    """The MQ-CNNs of ``model``: itself, or an ensemble's MQ-CNN members."""
    if isinstance(model, MQCNNEnsemble):
        return [m for m in model.members if isinstance(m, MQCNN)]
    return [model]


def window_members(model: nn.Module) -> list[WindowMLP]:
    """The :class:`WindowMLP` members of an ensemble (none for a single MQ-CNN)."""
    if isinstance(model, MQCNNEnsemble):
        return [m for m in model.members if isinstance(m, WindowMLP)]
    return []


def input_spec(args: ModelArgs) -> dict[str, tuple[tuple[str, ...], str]]:
    """Names, shapes and dtypes of :meth:`MQCNN.forward`'s inputs, in order (B = batch)."""
    return {
        "target": (("B", str(args.context_length)), "float32"),
        "observed": (("B", str(args.context_length)), "float32"),
        "past_cov": (("B", str(args.context_length), str(args.n_past_cov)), "float32"),
        "future_cov": (("B", str(args.horizons), str(args.n_future_cov)), "float32"),
        "static": (("B", str(args.n_static)), "int64"),
        "feedback": (("B", str(args.n_feedback)), "float32"),
    }


def n_parameters(model: nn.Module) -> int:
    """Trainable parameter count."""
    return int(sum(math.prod(p.shape) for p in model.parameters() if p.requires_grad))
