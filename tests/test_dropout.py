"""The fast CPU dropout and the dense attention path: the same distribution and function as
PyTorch's, checked on numbers rather than on the code's own output."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models import encoder
from models.config import EncoderConfig
from models.dropout import Dropout, dropout, keep_threshold, random_int16
from models.encoder import BertEncoder, dense_attention, prefers_dense


@pytest.mark.parametrize("p", [0.1, 0.25, 0.5, 0.9])
def test_drop_rate_and_expectation_match_the_setting(p: float) -> None:
    torch.manual_seed(0)
    y = dropout(torch.ones(2_000_000), p)
    dropped = (y == 0).double().mean().item()
    assert abs(dropped - p) < 5 * (p * (1 - p) / 2e6) ** 0.5 + 1 / 65536  # 5 sigma
    assert abs(y.double().mean().item() - 1.0) < 5 * (p / (1 - p) / 2e6) ** 0.5
    kept = y[y != 0]
    assert torch.all(kept == kept[0]) and kept[0].item() == pytest.approx(1 / (1 - p), rel=1e-4)


def test_the_uniforms_have_no_biased_bit() -> None:
    torch.manual_seed(0)
    bits = random_int16(torch.empty(1_000_000)).view(torch.uint16).to(torch.int32)
    for bit in range(16):
        share = ((bits >> bit) & 1).double().mean().item()
        assert abs(share - 0.5) < 0.003, bit  # 6 sigma at n = 1e6
    assert random_int16(torch.empty(3, 5)).shape == (3, 5)  # numel not a multiple of 4


def test_gradient_is_the_mask_times_the_scale_and_eval_is_identity() -> None:
    torch.manual_seed(1)
    x = torch.randn(64, 33, requires_grad=True)
    y = dropout(x, 0.3)
    y.sum().backward()
    _, scale = keep_threshold(0.3)
    kept = y.detach() != 0
    assert torch.equal(x.grad, kept.float() * scale)
    assert torch.allclose(y.detach()[kept], x.detach()[kept] * scale)
    module = Dropout(0.3).eval()
    assert module(x) is x and dropout(x, 0.0) is x and dropout(x, 0.3, training=False) is x
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))
    with pytest.raises(ValueError, match="between 0 and 1"):
        Dropout(1.5)


def test_seeding_makes_masks_repeat() -> None:
    x = torch.ones(1000)
    torch.manual_seed(7)
    a = dropout(x, 0.1)
    torch.manual_seed(7)
    assert torch.equal(a, dropout(x, 0.1))
    assert not torch.equal(a, dropout(x, 0.1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dense_attention_equals_sdpa_with_and_without_a_mask(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    q, k, v = (torch.randn(3, 2, 10, 8, dtype=dtype) for _ in range(3))
    mask = torch.ones(3, 1, 1, 10, dtype=torch.bool)
    mask[1, ..., 6:] = False
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    for m in (None, mask):
        want = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=m)
        assert (dense_attention(q, k, v, attn_mask=m).float() - want).abs().max() < tol


def test_a_fully_masked_query_row_stays_finite() -> None:
    q = k = v = torch.randn(1, 1, 4, 8)
    mask = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    mask[..., :2, :2] = True  # rows 2 and 3 may attend to nothing (padding queries)
    y = dense_attention(q, k, v, attn_mask=mask)
    assert torch.isfinite(y).all()
    want = F.scaled_dot_product_attention(q[..., :2, :], k[..., :2, :], v[..., :2, :])
    assert torch.allclose(y[..., :2, :], want, atol=1e-6)


def test_kernel_choice_and_bf16_dense_is_as_close_to_fp32_as_sdpa(monkeypatch: pytest.MonkeyPatch) -> None:
    q = torch.empty(1, 1, 128, 8, dtype=torch.bfloat16)
    assert prefers_dense(q, 0.0) and prefers_dense(q.float(), 0.1)
    assert not prefers_dense(q.float(), 0.0)
    assert not prefers_dense(torch.empty(1, 1, 129, 8, dtype=torch.bfloat16), 0.0)
    torch.manual_seed(0)
    shape = {"num_layers": 2, "hidden_size": 32, "num_heads": 2, "intermediate_size": 64}
    model = BertEncoder(EncoderConfig(vocab_size=50, dropout=0.0, attention_dropout=0.0, **shape)).eval()
    ids = torch.randint(5, 50, (2, 16))
    mask = torch.ones_like(ids)
    mask[0, 12:] = 0
    real = mask.bool()
    reference = model(ids, attention_mask=mask)  # fp32: SDPA
    with torch.autocast("cpu", dtype=torch.bfloat16):
        dense = model(ids, attention_mask=mask)
        monkeypatch.setattr(encoder, "prefers_dense", lambda q, p: False)
        sdpa = model(ids, attention_mask=mask)
    dense_error = (dense.float() - reference)[real].abs().max().item()
    sdpa_error = (sdpa.float() - reference)[real].abs().max().item()
    assert dense_error <= 1.5 * sdpa_error + 1e-3 and dense_error < 0.1
