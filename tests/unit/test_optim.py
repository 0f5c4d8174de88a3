"""The trainers' optimiser: fused where it can be, the same update as torch's default AdamW."""

from __future__ import annotations

import torch

from model.optim import adamw


def _net(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))


def _train(net: torch.nn.Module, opt: torch.optim.Optimizer, steps: int = 30) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(8, 12, generator=g)
        loss = net(x).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return torch.cat([p.detach().flatten() for p in net.parameters()])


def test_cpu_parameters_get_the_fused_kernel() -> None:
    opt = adamw(_net(0).parameters(), lr=1e-3, weight_decay=1e-5)
    assert opt.defaults["fused"] is True


def test_fused_update_matches_the_default_adamw_within_rounding() -> None:
    a, b = _net(0), _net(0)
    fused = _train(a, adamw(a.parameters(), lr=2e-3, weight_decay=1e-2))
    plain = _train(b, torch.optim.AdamW(b.parameters(), lr=2e-3, weight_decay=1e-2))
    assert not torch.equal(fused, torch.cat([p.detach().flatten() for p in _net(0).parameters()]))
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-6)


def test_parameters_on_a_device_without_the_kernel_use_the_default_loop() -> None:
    net = _net(0).to("meta")
    opt = adamw(net.parameters(), lr=1e-3, weight_decay=0.0)
    assert not opt.defaults["fused"]


def test_learning_rate_set_per_step_reaches_the_fused_update() -> None:
    # The trainers set each group's lr every step (their cosine schedule); a zero rate must freeze.
    net = _net(0)
    opt = adamw(net.parameters(), lr=1e-3, weight_decay=0.0)
    for group in opt.param_groups:
        group["lr"] = 0.0
    before = torch.cat([p.detach().flatten() for p in net.parameters()]).clone()
    after = _train(net, opt, steps=3)
    assert torch.equal(before, after)
