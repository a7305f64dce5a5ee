"""The RPN's tiled NMS returns torchvision's indices, and a model trained with it torchvision's losses."""

import pytest
import torch
from torchvision.ops import boxes as box_ops

from dynrcnn.modeling import nms
from dynrcnn.modeling.model import autocast_dtype, build_model
from dynrcnn.presets import get_preset


def _boxes(n, g, size=128.0, dtype=torch.float32):
    xy = torch.rand(n, 2, generator=g, dtype=dtype) * size
    wh = torch.rand(n, 2, generator=g, dtype=dtype) * size / 4
    return torch.cat([xy, xy + wh], 1)


def _rpn_like(n, g):
    """Boxes like an RPN level's: a dense grid of 16 px anchors at stride 4, jittered."""
    centres = torch.stack(torch.meshgrid(torch.arange(32) * 4.0, torch.arange(32) * 4.0, indexing="ij"), -1)
    centres = centres.reshape(-1, 2)[torch.randperm(1024, generator=g)[:n]]
    wh = 16 * torch.exp(torch.randn(n, 2, generator=g) * 0.2)
    centres = centres + torch.randn(n, 2, generator=g)
    return torch.cat([centres - wh / 2, centres + wh / 2], 1).clamp(0, 128)


def _cases():
    g = torch.Generator().manual_seed(0)
    cases = []
    for t in (0.0, 0.5, 0.7, 0.85):
        b = _boxes(1500, g)
        cases.append((f"random t={t}", b, torch.rand(1500, generator=g), torch.randint(0, 3, (1500,), generator=g), t))
        cases.append((f"random, coordinate trick, t={t}", b[:700], torch.rand(700, generator=g),
                      torch.randint(0, 2, (700,), generator=g), t))
    for t in (0.7, 0.85):
        b = torch.cat([_rpn_like(1000, g), _rpn_like(768, g)])
        cases.append((f"RPN-like t={t}", b, torch.rand(1768, generator=g), torch.tensor([0] * 1000 + [1] * 768), t))
    b = _boxes(1300, g)
    tied = (torch.rand(1300, generator=g) * 10).round() / 10  # eleven distinct scores
    cases.append(("tied scores", b, tied, torch.randint(0, 2, (1300,), generator=g), 0.7))
    cases.append(("tied scores, coordinate trick", b[:900], tied[:900], torch.randint(0, 2, (900,), generator=g), 0.7))
    same = _boxes(1, g).repeat(1100, 1)
    cases.append(("identical boxes and scores", same, torch.full((1100,), 0.5), torch.zeros(1100, dtype=torch.long),
                  0.7))
    flat = _boxes(1200, g)
    flat[::3, 2] = flat[::3, 0]  # zero width
    flat[1::3, 3] = flat[1::3, 1] - 1  # inverted
    flat[2::6] = 0.0  # a point
    cases.append(("zero-area and inverted boxes", flat, torch.rand(1200, generator=g),
                  torch.randint(0, 2, (1200,), generator=g), 0.5))
    cases.append(("negative coordinates", _boxes(1100, g) - 64, torch.rand(1100, generator=g),
                  torch.randint(0, 2, (1100,), generator=g), 0.7))
    cases.append(("float64", _boxes(1100, g, dtype=torch.float64), torch.rand(1100, generator=g, dtype=torch.float64),
                  torch.randint(0, 2, (1100,), generator=g), 0.85))
    step = torch.arange(1100, dtype=torch.float32)[:, None] * 0.5  # each box suppresses the next: a long chain
    chain = torch.cat([step, torch.zeros_like(step), step + 8, torch.full_like(step, 8)], 1)
    cases.append(("chain", chain, torch.linspace(1, 0, 1100), torch.zeros(1100, dtype=torch.long), 0.85))
    cases.append(("one box", _boxes(1, g), torch.rand(1, generator=g), torch.zeros(1, dtype=torch.long), 0.7))
    cases.append(("empty", torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long), 0.7))
    return cases


CASES = _cases()


@pytest.mark.parametrize("min_boxes", [1, nms.MIN_BOXES])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_indices_equal_torchvisions(case, min_boxes, monkeypatch):
    monkeypatch.setattr(nms, "MIN_BOXES", min_boxes)  # 1: every group by the tiled method
    name, b, s, i, t = case
    assert torch.equal(nms.batched_nms(b, s, i, t), box_ops.batched_nms(b, s, i, t)), name
    for group in torch.unique(i).tolist():
        bg, sg = b[i == group], s[i == group]
        assert torch.equal(nms.tiled_nms(bg, sg, t), box_ops.nms(bg, sg, t)), (name, group)


def test_the_chain_needs_the_sequential_pass():
    name, b, s, i, t = next(c for c in CASES if c[0] == "chain")
    order = torch.arange(len(b)).numpy()
    a, c = nms.suppressing_pairs(b.numpy(), i.numpy(), t)
    assert len(a) >= len(b) - 1  # every box suppresses its successor: more rounds than ROUNDS
    assert nms.greedy_keep(order, a, c).sum() == (len(b) + 1) // 2


def test_bf16_under_autocast_is_torchvisions():
    g = torch.Generator().manual_seed(1)
    b, s = _boxes(1200, g).bfloat16(), torch.rand(1200, generator=g).bfloat16()
    i = torch.randint(0, 2, (1200,), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(nms.batched_nms(b, s, i, 0.7), box_ops.batched_nms(b, s, i, 0.7))


def _batch(seed):
    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for _ in range(4):
        images.append(torch.rand(3, 128, 128, generator=g))
        k = int(torch.randint(2, 7, (1,), generator=g))
        wh = torch.randint(8, 64, (k, 2), generator=g).float()
        xy = torch.rand(k, 2, generator=g) * (128 - wh)
        targets.append({"boxes": torch.cat([xy, xy + wh], 1), "labels": torch.randint(1, 6, (k,), generator=g)})
    return images, targets


def _train(exact: bool, iterations: int = 5):
    cfg = get_preset("mini_smoke")
    cfg.model.pretrained_backbone = False
    torch.manual_seed(0)
    model = build_model(cfg, 6).train()
    model.rpn.exact_nms = exact
    if cfg.channels_last:
        model.backbone.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.02, momentum=0.9)
    amp = autocast_dtype("cpu", cfg.amp)
    losses = []
    for it in range(iterations):
        torch.manual_seed(100 + it)
        with torch.autocast("cpu", dtype=amp, enabled=amp is not None):
            loss = model(*_batch(it))
        losses.append({k: v.detach().clone() for k, v in loss.items()})
        opt.zero_grad()
        sum(loss.values()).backward()
        opt.step()
    return losses, model


def test_a_model_trained_with_it_has_torchvisions_losses(monkeypatch):
    calls = []
    original = nms.keep_mask
    monkeypatch.setattr(nms, "keep_mask", lambda *a: calls.append(len(a[0])) or original(*a))
    ours, model_ours = _train(exact=True)
    assert calls and max(calls) >= nms.MIN_BOXES  # the tiled method ran on the RPN's large levels
    theirs, model_theirs = _train(exact=False)
    for it, (a, b) in enumerate(zip(ours, theirs)):
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (it, k, a[k], b[k])
    for (name, p), q in zip(model_ours.named_parameters(), model_theirs.parameters()):
        assert torch.equal(p, q), name
