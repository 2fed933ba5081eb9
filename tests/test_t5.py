"""T5 v1.1 model: relative-position buckets, the decoder's key/value cache, the loss, and export to
transformers' T5ForConditionalGeneration with the same logits and the same greedy outputs."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from models.config import ConfigError
from models.io import CheckpointError, load_t5, read_encoder_config, save_checkpoint
from models.t5 import IGNORE, DecoderCache, T5ForConditionalGeneration, relative_buckets
from models.t5_config import T5Config
from tasks.commands.export import export_checkpoint
from tasks.commands.export_t5 import t5_weights

CFG = T5Config(vocab_size=120, d_model=32, num_layers=2, num_decoder_layers=3, num_heads=4, d_kv=8, d_ff=48)


def model(seed: int = 0, cfg: T5Config = CFG) -> T5ForConditionalGeneration:
    torch.manual_seed(seed)
    net = T5ForConditionalGeneration(cfg).eval()
    with torch.no_grad():  # norms away from 1, so a norm mapped to the wrong place would show
        for name, p in net.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    return net


def batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, CFG.vocab_size, (3, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 7:], mask[2, 4:] = 0, 0  # two padded rows
    return ids.masked_fill(mask == 0, CFG.pad_id), mask


def test_buckets_hold_exact_near_distances_and_log_spaced_far_ones() -> None:
    rel = torch.tensor([0, 1, 2, 7, -1, -7, -8, -200, 200])
    both = relative_buckets(rel, bidirectional=True, num_buckets=32, max_distance=128)
    # 16 buckets per direction: 0..7 exact, 8..15 log-spaced up to 128; keys after the query start at 16
    assert both.tolist() == [0, 17, 18, 23, 1, 7, 8, 15, 31]
    causal = relative_buckets(rel, bidirectional=False, num_buckets=32, max_distance=128)
    # keys after the query all fall in bucket 0 (the causal mask hides them anyway)
    assert causal.tolist() == [0, 0, 0, 0, 1, 7, 8, 31, 0]
    far = relative_buckets(-torch.arange(16, 129), bidirectional=False, num_buckets=32, max_distance=128)
    assert far.diff().ge(0).all() and far.min() == 16 and far.max() == 31  # monotone, log-spaced


def test_cached_greedy_steps_give_the_full_decoders_logits() -> None:
    net, (ids, mask) = model(), batch()
    targets = torch.randint(2, CFG.vocab_size, (3, 6), generator=torch.Generator().manual_seed(3))
    decoder_in = net.shift_right(targets)
    encoded = net.encode(ids, mask)
    full = net.decode(decoder_in, encoded, mask)
    cache = DecoderCache(self_kv=[None] * CFG.num_decoder_layers, cross_kv=[None] * CFG.num_decoder_layers)
    stepped = torch.cat([net.decode(decoder_in[:, t : t + 1], encoded, mask, cache) for t in range(6)], dim=1)
    torch.testing.assert_close(stepped, full, atol=1e-5, rtol=1e-5)


def test_loss_skips_ignored_targets_and_decoding_starts_from_pad() -> None:
    net, (ids, mask) = model(), batch()
    labels = torch.randint(2, CFG.vocab_size, (3, 5), generator=torch.Generator().manual_seed(4))
    padded = labels.clone()
    padded[:, 3:] = IGNORE
    shifted = net.shift_right(padded)
    assert shifted[:, 0].eq(CFG.decoder_start_id).all() and shifted[:, 4].eq(CFG.pad_id).all()
    logits, loss = net(ids, mask, labels=padded)
    by_hand = torch.nn.functional.cross_entropy(
        logits[:, :3].reshape(-1, CFG.vocab_size), labels[:, :3].reshape(-1)
    )
    torch.testing.assert_close(loss, by_hand)


def test_padding_does_not_change_a_rows_outputs() -> None:
    net, (ids, mask) = model(), batch()
    labels = torch.randint(2, CFG.vocab_size, (3, 4), generator=torch.Generator().manual_seed(5))
    logits, _ = net(ids, mask, labels=labels)
    alone, _ = net(ids[2:, :4], mask[2:, :4], labels=labels[2:])
    torch.testing.assert_close(logits[2:], alone, atol=1e-5, rtol=1e-5)


def write_hf(tmp_path: Path, net: T5ForConditionalGeneration) -> Path:
    """Our checkpoint dir, then `bertflow export`'s conversion of it."""
    save_checkpoint(tmp_path / "ckpt", net)
    (out,) = export_checkpoint(tmp_path / "ckpt", tmp_path / "hf")
    return out


def hf_greedy(theirs: object, ids: torch.Tensor, mask: torch.Tensor, steps: int) -> list[list[int]]:
    """transformers' greedy output without its start token. It sizes its decoder cache by the
    ENCODER's depth, so with 2 + 3 blocks it decodes without one: our cached decoding is checked
    against a full recomputation at every step."""
    with torch.no_grad():
        out = theirs.generate(  # type: ignore[attr-defined]
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=steps,
            do_sample=False,
            num_beams=1,
            use_cache=False,
        )
    return out[:, 1:].tolist()


@pytest.mark.parametrize("tied", [False, True], ids=["v1.1-own-output-layer", "v1.0-tied-embedding"])
def test_export_loads_in_transformers_with_the_same_logits_and_greedy_outputs(
    tmp_path: Path, tied: bool
) -> None:
    transformers = pytest.importorskip("transformers")
    net, (ids, mask) = model(cfg=replace(CFG, tie_embeddings=tied)), batch()
    assert (net.lm_head is None) == tied and ("lm_head.weight" in net.state_dict()) != tied
    theirs = transformers.T5ForConditionalGeneration.from_pretrained(write_hf(tmp_path, net)).eval()
    labels = torch.randint(2, CFG.vocab_size, (3, 7), generator=torch.Generator().manual_seed(6))
    ours_logits, ours_loss = net(ids, mask, labels=labels)
    with torch.no_grad():
        out = theirs(input_ids=ids, attention_mask=mask, labels=labels)
    assert (ours_logits - out.logits).abs().max() <= 1e-4
    torch.testing.assert_close(ours_loss, out.loss, atol=1e-5, rtol=1e-5)

    assert net.generate(ids, mask, max_new_tokens=9).tolist() == hf_greedy(theirs, ids, mask, 9)


def test_generation_stops_at_end_of_sequence_like_transformers(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    net, (ids, mask) = model(seed=2), batch()
    token = int(net.generate(ids, mask, max_new_tokens=12)[0, 3])
    with torch.no_grad():  # swap the output rows of that token and </s>: row 0 now ends by step 3
        rows = net.lm_head.weight
        rows[[token, CFG.eos_id]] = rows[[CFG.eos_id, token]].clone()
    ours = net.generate(ids, mask, max_new_tokens=12)
    ended = [row.index(CFG.eos_id) for row in ours.tolist() if CFG.eos_id in row]
    assert ended, "no row ended: the test would not exercise stopping"
    theirs = transformers.T5ForConditionalGeneration.from_pretrained(write_hf(tmp_path, net)).eval()
    assert ours.tolist() == hf_greedy(theirs, ids, mask, 12)
    for row in ours.tolist():  # after </s> only padding
        if CFG.eos_id in row:
            assert set(row[row.index(CFG.eos_id) + 1 :]) <= {CFG.pad_id}


def test_export_refuses_a_state_dict_that_does_not_match_the_shape() -> None:
    state = model().state_dict()
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"no transformers name \['extra.weight'\]"):
        t5_weights(state, CFG)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"num_buckets": 5}, "num_buckets must be an even number"),
        ({"max_distance": 8}, "max_distance"),
        ({"eos_id": 500}, "eos_id 500 is outside the vocabulary"),
        ({"d_kv": 0}, "d_kv must be >= 1"),
    ],
)
def test_bad_t5_configs_are_refused(change: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        T5Config(**{**CFG.to_dict(), **change})


def test_named_sizes_and_the_config_round_trip() -> None:
    base = T5Config.from_size("base", vocab_size=32128)
    assert (base.num_layers, base.num_decoder_layers, base.d_model, base.num_heads, base.d_ff) == (
        12,
        12,
        768,
        12,
        2048,
    )
    assert T5Config.from_dict(base.to_dict()) == base
    with pytest.raises(ConfigError, match="unknown T5Config field"):
        T5Config.from_dict({**base.to_dict(), "hidden": 3})


def test_checkpoint_round_trip_and_a_t5_checkpoint_is_no_bert_encoder(tmp_path: Path) -> None:
    net = model()
    save_checkpoint(tmp_path, net)
    loaded = load_t5(tmp_path).eval()
    assert loaded.cfg == net.cfg
    assert all(
        torch.equal(a, b)
        for a, b in zip(loaded.state_dict().values(), net.state_dict().values(), strict=True)
    )
    with pytest.raises(CheckpointError, match="model_type 't5' has no BERT encoder to fine-tune"):
        read_encoder_config(tmp_path)


def test_dense_attention_with_a_position_bias_equals_sdpa() -> None:
    """The CPU bf16 / dropout path of T5's attention computes what SDPA computes with the float bias."""
    from models.encoder import dense_attention

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 8, generator=g) for _ in range(3))
    bias = torch.randn(1, 3, 5, 5, generator=g)
    bias[..., -1] = torch.finfo(torch.float32).min  # a padded key
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0)
    assert torch.allclose(dense_attention(q, k, v, bias, scale=1.0), expected, atol=1e-5)
    half = dense_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), bias.bfloat16(), scale=1.0)
    assert torch.isfinite(half).all() and torch.allclose(half.float(), expected, atol=0.05)
