"""Leave the calendar columns a trained network ignores out of the artefact it is served from.

Training masks the calendar columns a history cannot teach (``model.train``: the day of the month
for daily data, the day of the year under a year of history, Easter's without one) by multiplying
them by zero, and a window member zeroes their weights, so every forward still assembles them and
multiplies them. On the 2-core development machine the daily model's forward at batch 1,024 took
11-15% longer with the two day-of-month columns it ignores than without them. So the exported
network drops them: its first layers lose the weights those columns met, its arguments count
fewer covariates, and the artefact's metadata names only the columns it reads, which are all the
service computes (``stream.inputs.calendar_columns``). Forecasts are the same up to float rounding
(``tests/unit/test_prune.py``). Only the export is cut (``stream.training.train_artifact``): the
trained network, and a checkpoint of it (``model.export.save_checkpoint``), keep every column.
"""

from __future__ import annotations

import dataclasses

import torch

from model.features import CALENDAR_FEATURES, FUTURE_COVARIATES, PAST_COVARIATES
from model.network import MQCNN, ModelArgs, MQCNNEnsemble, WindowMLP


def ignored_calendar(model: MQCNN | MQCNNEnsemble) -> tuple[str, ...]:
    """The calendar columns no member of ``model`` reads, in :data:`CALENDAR_FEATURES` order: masked
    in an MQ-CNN's past and future covariates both, all-zero weights in a window member. A network
    whose columns are not today's (an older, shorter calendar) ignores none as far as this knows."""
    members = list(model.members) if isinstance(model, MQCNNEnsemble) else [model]
    ignored = set(CALENDAR_FEATURES)
    for member in members:
        ignored &= set(_member_ignores(member))
    return tuple(c for c in CALENDAR_FEATURES if c in ignored)


def _member_ignores(member: torch.nn.Module) -> tuple[str, ...]:
    if isinstance(member, MQCNN):
        past, future = member.past_cov_mask.tolist(), member.future_cov_mask.tolist()
        if len(past) != len(PAST_COVARIATES) or len(future) != len(FUTURE_COVARIATES):
            return ()
        return tuple(
            c
            for c in CALENDAR_FEATURES
            if past[PAST_COVARIATES.index(c)] == 0.0 and future[FUTURE_COVARIATES.index(c)] == 0.0
        )
    if isinstance(member, WindowMLP):
        n_cov, first = len(FUTURE_COVARIATES), member.calendar_start
        if member.n_future_cov != n_cov:
            return ()
        weight = member.net[0].weight.detach()
        calendar = weight[:, first : first + member.horizons * n_cov].reshape(-1, member.horizons, n_cov)
        zero = ~calendar.any(dim=(0, 1))
        return tuple(c for c in CALENDAR_FEATURES if bool(zero[FUTURE_COVARIATES.index(c)]))
    return ()


def drop_calendar(
    model: MQCNN | MQCNNEnsemble, args: ModelArgs, names: tuple[str, ...]
) -> tuple[MQCNN | MQCNNEnsemble, ModelArgs]:
    """A copy of ``model`` (and its arguments) that takes the calendar without the columns ``names``,
    which every member must ignore (:func:`ignored_calendar`); it forecasts as ``model`` does.
    Without ``names``, ``model`` and ``args`` themselves."""
    if not names:
        return model, args
    unknown = [c for c in names if c not in CALENDAR_FEATURES]
    if unknown:
        raise ValueError(f"not calendar columns: {unknown}")
    read = set(ignored_calendar(model))
    if not set(names) <= read:
        raise ValueError(f"the network reads {sorted(set(names) - read)}: only ignored columns can go")
    keep_past = [i for i, c in enumerate(PAST_COVARIATES) if c not in names]
    keep_future = [i for i, c in enumerate(FUTURE_COVARIATES) if c not in names]
    new_args = dataclasses.replace(args, n_past_cov=len(keep_past), n_future_cov=len(keep_future))
    if 3 + new_args.n_past_cov == new_args.channels:
        # The encoder's first layer would lose its skip projection (an identity when the widths
        # match), so the weights would not carry over: serve the whole network instead.
        return model, args
    if isinstance(model, MQCNNEnsemble):
        members = [_drop_member(m, new_args, keep_past, keep_future) for m in model.members]
        return MQCNNEnsemble(members).eval(), new_args
    return _drop_member(model, new_args, keep_past, keep_future), new_args


def _drop_member(
    member: torch.nn.Module, args: ModelArgs, keep_past: list[int], keep_future: list[int]
) -> torch.nn.Module:
    state = {k: v.detach().clone() for k, v in member.state_dict().items()}
    if isinstance(member, MQCNN):
        out = MQCNN(args)
        n_known_old = len(FUTURE_COVARIATES) + member.n_seasonal
        # Each horizon's known inputs: the calendar's kept columns, then the seasonal lag's.
        known = keep_future + list(range(len(FUTURE_COVARIATES), n_known_old))
        c_in_old = 3 + len(PAST_COVARIATES)
        channels = [0, 1, 2] + [3 + i for i in keep_past]  # demand, observed, level, covariates
        # The first convolution reads its taps side by side, each tap c_in_old channels wide.
        kernel = member.encoder[0].kernel
        taps = _kept_inputs(kernel * c_in_old, 0, kernel, c_in_old, channels)
        state["encoder.0.mix.weight"] = state["encoder.0.mix.weight"][:, taps]
        state["encoder.0.skip.weight"] = state["encoder.0.skip.weight"][:, channels]
        state["past_cov_mask"] = state["past_cov_mask"][keep_past]
        state["future_cov_mask"] = state["future_cov_mask"][keep_future]
        # The global decoder reads the encoding, the log scale, then every horizon's known inputs.
        g_old = state["global_mlp.0.weight"]
        start = args.channels + args.recent + 1
        cols = _kept_inputs(g_old.shape[1], start, args.horizons, n_known_old, known)
        state["global_mlp.0.weight"] = g_old[:, cols]
        # The local decoder reads the horizon's context, the agnostic context, then its known inputs.
        l_old = state["local_mlp.0.weight"]
        start = args.horizon_context + args.agnostic_context
        state["local_mlp.0.weight"] = l_old[:, _kept_inputs(l_old.shape[1], start, 1, n_known_old, known)]
    elif isinstance(member, WindowMLP):
        n_static = member.n_static
        out = WindowMLP(
            member.context_length,
            member.horizons,
            member.n_quantiles,
            n_static,
            member.emb.num_embeddings // max(1, n_static),
            member.net[0].out_features,
            member.static_dim,
            len(keep_future),
        )
        w_old = state["net.0.weight"]
        cols = _kept_inputs(
            w_old.shape[1], member.calendar_start, member.horizons, len(FUTURE_COVARIATES), keep_future
        )
        state["net.0.weight"] = w_old[:, cols]
    else:
        raise TypeError(f"cannot drop calendar columns from a {type(member).__name__}")
    out.load_state_dict(state, strict=True)
    return out.to(next(member.parameters()).device).eval()


def _kept_inputs(n_in: int, start: int, blocks: int, width: int, keep: list[int]) -> list[int]:
    """The input columns of a layer that stay when, of ``blocks`` blocks of ``width`` columns from
    column ``start`` on (one per horizon), only the columns ``keep`` of each stay; every column
    before and after the blocks stays."""
    cut = [start + b * width + k for b in range(blocks) for k in keep]
    return [*range(start), *cut, *range(start + blocks * width, n_in)]


def served_form(
    model: MQCNN | MQCNNEnsemble, args: ModelArgs
) -> tuple[MQCNN | MQCNNEnsemble, ModelArgs, list[str], list[str]]:
    """``model`` as it is exported: without the calendar columns it ignores. Returns the network,
    its arguments and the names of its past and future covariates (the artefact's ``features``)."""
    dropped = ignored_calendar(model)
    served, served_args = drop_calendar(model, args, dropped)
    if served is model:
        dropped = ()
    past = [c for c in PAST_COVARIATES if c not in dropped]
    future = [c for c in FUTURE_COVARIATES if c not in dropped]
    return served, served_args, past, future
