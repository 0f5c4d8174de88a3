"""MQ-CNN: the multi-horizon quantile network, whole, in one file.

Encoder: a stack of causal dilated 1-D convolutions over the past target (log1p), its observed mask,
the past covariates (calendar, log price) and the item's demand level. Global decoder: an MLP that
turns the encoding at a forecast origin, the known future covariates of all horizons, the static
embeddings (store, category: pooled across items, which is what serves cold start) and the feedback
features (realised errors of the item's own past forecasts) into one context per horizon plus a
horizon-agnostic context. Local decoder: one small MLP shared across horizons that maps (horizon
context, agnostic context, that horizon's covariates) to monotone, non-negative quantiles.

``forward_all`` makes a forecast at every time step in one pass (forking sequences, for training);
``forward`` is the serving entry and equals ``forward_all`` at the last step of a window of
``context_length`` buckets, because the encoder's receptive field fits in the window and the demand
level is a rolling mean over the same window.
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
    n_static: int = 0
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
    n_feedback: int = field(default=-1)

    def __post_init__(self) -> None:
        self.quantiles = tuple(float(q) for q in self.quantiles)
        self.dilations = tuple(int(d) for d in self.dilations)
        if self.n_feedback < 0:
            self.n_feedback = 3 + len(self.quantiles)
        if self.receptive_field > self.context_length:
            raise ValueError(
                f"the encoder sees {self.receptive_field} buckets but the context is {self.context_length}: "
                "serving would not match training; use fewer/smaller dilations or a longer context"
            )
        if list(self.quantiles) != sorted(self.quantiles):
            raise ValueError(f"quantiles must increase, got {self.quantiles}")

    @property
    def receptive_field(self) -> int:
        return 1 + sum((self.kernel_size - 1) * d for d in self.dilations)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["quantiles"] = list(self.quantiles)
        d["dilations"] = list(self.dilations)
        return d


def default_args_for(freq: str) -> ModelArgs:
    """Context and horizons that suit a bucket unit."""
    if freq == "W":
        return ModelArgs(context_length=52, horizons=8, dilations=(1, 2, 4, 8, 16))
    if freq == "M":
        return ModelArgs(context_length=24, horizons=6, dilations=(1, 2, 4, 8))
    if freq == "h":
        return ModelArgs(context_length=168, horizons=24, dilations=(1, 2, 4, 8, 16, 32, 64))
    return ModelArgs(context_length=56, horizons=14, dilations=(1, 2, 4, 8, 16))


class CausalConv(nn.Module):
    """A dilated convolution that only looks back, with a residual connection."""

    def __init__(self, c_in: int, c_out: int, kernel: int, dilation: int) -> None:
        super().__init__()
        self.pad = (kernel - 1) * dilation
        self.conv = nn.Conv1d(c_in, c_out, kernel, dilation=dilation)
        self.skip = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(F.pad(x, (self.pad, 0)))
        return F.relu(y) + self.skip(x)


class MQCNN(nn.Module):
    """The multi-horizon quantile CNN (see the module docstring)."""

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.context_length = args.context_length
        self.horizons = args.horizons
        self.n_quantiles = len(args.quantiles)
        self.n_future_cov = args.n_future_cov
        self.n_feedback = args.n_feedback
        self.use_feedback = args.use_feedback
        self.n_static = args.n_static
        self.horizon_context = args.horizon_context
        self.receptive_field = args.receptive_field
        # The encoder's own level feature uses a window short enough that, for every step the last
        # output depends on, it lies inside the serving window: forward == forward_all exactly.
        self.level_window = max(1, args.context_length - args.receptive_field + 1)

        c_in = 3 + args.n_past_cov  # log1p(target), observed, level, covariates
        layers = []
        for i, d in enumerate(args.dilations):
            layers.append(CausalConv(c_in if i == 0 else args.channels, args.channels, args.kernel_size, d))
        self.encoder = nn.Sequential(*layers)
        self.static_emb = nn.Embedding(args.static_vocab, args.static_dim)
        g_in = (
            args.channels
            + 1
            + args.horizons * args.n_future_cov
            + args.n_static * args.static_dim
            + (args.n_feedback if args.use_feedback else 0)
        )
        self.global_mlp = nn.Sequential(
            nn.Linear(g_in, args.global_hidden),
            nn.ReLU(),
            nn.Linear(args.global_hidden, args.horizons * args.horizon_context + args.agnostic_context),
        )
        self.local_mlp = nn.Sequential(
            nn.Linear(args.horizon_context + args.agnostic_context + args.n_future_cov, args.local_hidden),
            nn.ReLU(),
            nn.Linear(args.local_hidden, self.n_quantiles),
        )
        # A learnable horizon embedding lets the shared local MLP tell horizons apart.
        self.horizon_emb = nn.Parameter(torch.zeros(args.horizons, args.horizon_context))
        nn.init.normal_(self.horizon_emb, std=0.1)

    def _rolling_mean(self, target: Tensor, observed: Tensor, window: int) -> Tensor:
        """Mean observed demand over the last ``window`` steps up to each step, [B, T]."""
        qty = torch.cumsum(F.pad((target * observed).double(), (1, 0)), dim=1)
        cnt = torch.cumsum(F.pad(observed.double(), (1, 0)), dim=1)
        t = target.shape[1]
        hi = torch.arange(1, t + 1, device=target.device)
        lo = torch.clamp(hi - window, min=0)
        mean = (qty[:, hi] - qty[:, lo]) / torch.clamp(cnt[:, hi] - cnt[:, lo], min=1.0)
        return mean.to(target.dtype)

    @torch.jit.export
    def rolling_scale(self, target: Tensor, observed: Tensor) -> Tensor:
        """Demand level at each step: 1 + mean observed demand over the last ``context_length`` steps."""
        return 1.0 + self._rolling_mean(target, observed, self.context_length)

    def _encode(self, target: Tensor, observed: Tensor, past_cov: Tensor, last: int) -> Tensor:
        """Encoder states [B, T', C] of the last ``last`` steps (all steps when ``last`` <= 0)."""
        level = torch.log1p(self._rolling_mean(target, observed, self.level_window))
        x = torch.cat(
            [
                (torch.log1p(target.clamp(min=0.0)) * observed).unsqueeze(-1),
                observed.unsqueeze(-1),
                level.unsqueeze(-1),
                past_cov,
            ],
            dim=-1,
        )
        if last > 0:
            x = x[:, -last:]
        return self.encoder(x.transpose(1, 2)).transpose(1, 2)

    def _decode(
        self, enc: Tensor, scale: Tensor, future_cov: Tensor, static: Tensor, feedback: Tensor
    ) -> Tensor:
        # enc [B, T, C], scale [B, T], future_cov [B, T, H, Cf], static [B, S], feedback [B, T, F]
        b, t = enc.shape[0], enc.shape[1]
        parts = [enc, torch.log(scale).unsqueeze(-1), future_cov.reshape(b, t, -1)]
        if self.n_static > 0:
            emb = self.static_emb(static).reshape(b, 1, -1).expand(b, t, -1)
            parts.append(emb)
        if self.use_feedback:
            parts.append(feedback)
        g = self.global_mlp(torch.cat(parts, dim=-1))
        ctx = g[..., : self.horizons * self.horizon_context].reshape(
            b, t, self.horizons, self.horizon_context
        )
        ctx = ctx + self.horizon_emb
        agn = g[..., self.horizons * self.horizon_context :].unsqueeze(2).expand(-1, -1, self.horizons, -1)
        raw = self.local_mlp(torch.cat([ctx, agn, future_cov], dim=-1))  # [B, T, H, Q]
        # Non-crossing: a free base plus positive increments. Non-negative: the ReLU after it, which
        # also lets low quantiles be exactly zero, as they are for intermittent demand.
        q = raw[..., :1] + torch.cumsum(F.pad(F.softplus(raw[..., 1:]), (1, 0)), dim=-1)
        return F.relu(q) * scale.unsqueeze(-1).unsqueeze(-1)

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
        """Forecasts at every origin: target/observed [B,T], past_cov [B,T,Cp], future_cov [B,T,H,Cf],
        static [B,S] int64, feedback [B,T,F] -> quantiles [B,T,H,Q]."""
        enc = self._encode(target, observed, past_cov, 0)
        return self._decode(enc, self.rolling_scale(target, observed), future_cov, static, feedback)

    def forward(
        self,
        target: Tensor,
        observed: Tensor,
        past_cov: Tensor,
        future_cov: Tensor,
        static: Tensor,
        feedback: Tensor,
    ) -> Tensor:
        """Forecast at the last step of a window: target/observed [B,L], past_cov [B,L,Cp],
        future_cov [B,H,Cf], static [B,S] int64, feedback [B,F] -> quantiles [B,H,Q]."""
        # The last output depends on the last ``receptive_field`` steps only: encode just those.
        enc = self._encode(target, observed, past_cov, self.receptive_field)
        scale = self.rolling_scale(target, observed)
        out = self._decode(enc[:, -1:], scale[:, -1:], future_cov.unsqueeze(1), static, feedback.unsqueeze(1))
        return out[:, 0]


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
