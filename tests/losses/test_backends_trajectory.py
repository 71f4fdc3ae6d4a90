"""The Triton and torch backends give the same training trajectory: a tiny linear classifier, 5 SGD steps."""

from __future__ import annotations

import pytest
import torch

from audit.losses import kd_loss, label_smoothed_cross_entropy


def _train(loss: str, backend: str, device: str, steps: int = 5) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 8, generator=g).to(device)
    y = torch.randint(0, 5, (32,), generator=g).to(device)
    y[::7] = -100
    teacher = (x @ torch.randn(8, 5, generator=g).to(device)).detach()
    model = torch.nn.Linear(8, 5).to(device)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(steps):
        opt.zero_grad()
        logits = model(x)
        if loss == "ls":
            value = label_smoothed_cross_entropy(logits, y, label_smoothing=0.1, backend=backend)
        else:
            value = kd_loss(logits, teacher, y, temperature=2.0, kd_weight=0.7, label_smoothing=0.1, backend=backend)
        value.backward()
        opt.step()
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize("loss", ["ls", "kd"])
def test_triton_and_torch_backends_train_alike(loss: str, device: str) -> None:
    start = _train(loss, "torch", device, steps=0)
    torch_params = _train(loss, "torch", device)
    triton_params = _train(loss, "triton", device)
    assert (torch_params - start).abs().max() > 1e-2  # the steps moved the parameters
    torch.testing.assert_close(triton_params, torch_params, rtol=1e-5, atol=1e-5)
