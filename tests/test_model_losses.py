"""Loss functions against hand-computed values."""

import math

import pytest
import torch

from lit_modules.losses import (
    classification_loss,
    multi_hot_softmax_loss,
    multi_label_bce_loss,
    normalized_multi_hot,
    proxy_logits,
    proxy_loss,
)

LN2, LN3, LN4 = math.log(2), math.log(3), math.log(4)


def test_normalized_multi_hot_divides_rows_and_flags_empty_rows():
    dist, has = normalized_multi_hot(torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]))
    assert torch.allclose(dist, torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]))
    assert has.tolist() == [True, False, True]


def test_multi_hot_softmax_matches_hand_values_and_excludes_unlabelled_rows():
    logits = torch.tensor([[0.0, 0.0, 0.0], [LN2, 0.0, 0.0], [5.0, -3.0, 1.0]])
    target = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    # row 0: uniform softmax, target (1/2, 1/2, 0) -> ln 3; row 1: softmax (1/2, 1/4, 1/4), target class 2 -> ln 4;
    # row 2 has no label and is left out of the mean.
    assert multi_hot_softmax_loss(logits, target).item() == pytest.approx((LN3 + LN4) / 2, rel=1e-6)


def test_multi_hot_softmax_label_smoothing():
    logits = torch.tensor([[LN2, 0.0, 0.0]])
    target = torch.tensor([[0.0, 0.0, 1.0]])
    # eps = 0.3 over 3 classes: target (0.1, 0.1, 0.8); log p = (-ln 2, -ln 4, -ln 4)
    expected = 0.1 * LN2 + 0.9 * LN4
    assert multi_hot_softmax_loss(logits, target, label_smoothing=0.3).item() == pytest.approx(expected, rel=1e-6)


def test_multi_hot_softmax_soft_target_is_normalized():
    logits = torch.tensor([[LN2, 0.0, 0.0]])
    # a mixup-style soft row (0.6, 0, 0.2) is the distribution (3/4, 0, 1/4)
    expected = 0.75 * LN2 + 0.25 * LN4
    assert multi_hot_softmax_loss(logits, torch.tensor([[0.6, 0.0, 0.2]])).item() == pytest.approx(expected, rel=1e-6)


def test_multi_hot_softmax_all_rows_unlabelled_gives_zero_with_graph():
    logits = torch.randn(2, 4, requires_grad=True)
    loss = multi_hot_softmax_loss(logits, torch.zeros(2, 4))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros(2, 4))


def test_bce_hand_values_and_smoothing():
    logits = torch.tensor([[0.0, LN3]])
    # -ln sigmoid(0) = ln 2; -ln(1 - sigmoid(ln 3)) = -ln(1/4) = ln 4; summed over the 2 labels
    assert multi_label_bce_loss(logits, torch.tensor([[1.0, 0.0]])).item() == pytest.approx(3 * LN2, rel=1e-6)
    # eps = 0.2: targets (0.9, 0.1)
    expected = LN2 + -(0.1 * math.log(0.75) + 0.9 * math.log(0.25))
    got = multi_label_bce_loss(logits, torch.tensor([[1.0, 0.0]]), label_smoothing=0.2).item()
    assert got == pytest.approx(expected, rel=1e-6)


def test_bce_keeps_unlabelled_rows_as_all_negative():
    logits = torch.tensor([[0.0, 0.0]])
    assert multi_label_bce_loss(logits, torch.zeros(1, 2)).item() == pytest.approx(2 * LN2, rel=1e-6)


def test_bce_sums_over_labels_and_averages_over_rows():
    # big_vision sigmoid_xent: sum over the C labels, mean over the B rows. At logits 0 every element
    # costs ln 2, so the loss is C ln 2 whatever B is (a mean over B x C would give ln 2 for every C).
    for b, c in ((1, 3), (4, 3), (4, 1000)):
        target = torch.zeros(b, c)
        target[:, 0] = 1.0
        assert multi_label_bce_loss(torch.zeros(b, c), target).item() == pytest.approx(c * LN2, rel=1e-5)
    # Rows weigh alike: row losses 2 ln 2 and 3 ln 2 + ln 4 ... average to their mean.
    logits = torch.tensor([[0.0, 0.0], [0.0, LN3]])
    target = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert multi_label_bce_loss(logits, target).item() == pytest.approx((2 * LN2 + 3 * LN2) / 2, rel=1e-6)


def test_classification_loss_long_targets_and_smoothing():
    logits = torch.tensor([[LN2, 0.0, 0.0]])
    assert classification_loss(logits, torch.tensor([0])).item() == pytest.approx(LN2, rel=1e-6)
    # eps = 0.3: (0.8, 0.1, 0.1) . (ln 2, ln 4, ln 4)
    got = classification_loss(logits, torch.tensor([0]), label_smoothing=0.3).item()
    assert got == pytest.approx(0.8 * LN2 + 0.2 * LN4, rel=1e-6)


def test_proxy_loss_cosine_over_temperature():
    emb = torch.tensor([[3.0, 0.0]])  # normalized to (1, 0)
    proxies = torch.tensor([[2.0, 0.0], [0.0, 5.0]])  # normalized to the unit axes
    logits = proxy_logits(emb, proxies, temperature=0.5)
    assert torch.allclose(logits, torch.tensor([[2.0, 0.0]]))  # cosines (1, 0) / 0.5
    lse = math.log(math.exp(2.0) + 1.0)
    assert proxy_loss(emb, proxies, torch.tensor([0]), 0.5).item() == pytest.approx(lse - 2.0, rel=1e-6)
    assert proxy_loss(emb, proxies, torch.tensor([1]), 0.5).item() == pytest.approx(lse, rel=1e-6)
    # multi-label: normalized multi-hot target (1/2, 1/2)
    assert proxy_loss(emb, proxies, torch.tensor([[1.0, 1.0]]), 0.5).item() == pytest.approx(lse - 1.0, rel=1e-6)


def test_proxy_loss_lower_temperature_sharpens():
    emb = torch.tensor([[1.0, 1.0]])
    proxies = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # equal cosines: the loss is ln 2 at any temperature
    assert proxy_loss(emb, proxies, torch.tensor([0]), 0.05).item() == pytest.approx(LN2, rel=1e-6)
    emb = torch.tensor([[1.0, 0.5]])
    assert proxy_loss(emb, proxies, torch.tensor([0]), 0.05) < proxy_loss(emb, proxies, torch.tensor([0]), 1.0)


def test_proxy_logits_stay_float32_under_bf16_autocast():
    g = torch.Generator().manual_seed(0)
    emb, proxies = torch.randn(4, 16, generator=g), torch.randn(5, 16, generator=g)
    exact = proxy_logits(emb, proxies, temperature=0.05)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = proxy_logits(emb, proxies, temperature=0.05)
    assert under.dtype == torch.float32 and torch.equal(under, exact)
