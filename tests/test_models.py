"""Encoder, heads, multi-task routing, init and checkpoint save/load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from models.config import SIZES, ConfigError, EncoderConfig
from models.encoder import BertEncoder
from models.heads import SPAN_PAD_LOGIT, HeadSpec
from models.io import CheckpointError, load_multitask, load_pretraining, read_config, save_checkpoint
from models.multitask import MultiTaskModel
from models.pretraining import BertForMaskedLM

HEADS = {
    "cola": HeadSpec("classification", 2),
    "mnli": HeadSpec("classification", 3),
    "stsb": HeadSpec("regression"),
    "squad": HeadSpec("span"),
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread, and don't thrash when other test runs share the CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(norm: str = "post", **kw) -> EncoderConfig:
    return EncoderConfig(
        vocab_size=60, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, norm=norm, **kw
    )


def ids_and_mask(B: int = 3, T: int = 9, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 60, (B, T), generator=gen)
    mask = torch.ones(B, T, dtype=torch.long)
    ids[1, 6:], mask[1, 6:] = 0, 0  # one row with padding
    return ids, mask


def test_encoder_and_head_shapes() -> None:
    ids, mask = ids_and_mask()
    model = MultiTaskModel(tiny(), HEADS).eval()
    assert model.encoder(ids, attention_mask=mask).shape == (3, 9, 32)
    assert model("cola", ids, attention_mask=mask).shape == (3, 2)
    assert model("mnli", ids, torch.zeros_like(ids), mask).shape == (3, 3)
    assert model("stsb", ids, attention_mask=mask).shape == (3,)
    start, end = model("squad", ids, attention_mask=mask)
    assert start.shape == end.shape == (3, 9)
    assert (start[1, 6:] == SPAN_PAD_LOGIT).all() and (end[1, 6:] == SPAN_PAD_LOGIT).all()
    assert (start[1, :6] > SPAN_PAD_LOGIT).all()
    with pytest.raises(KeyError, match="no head 'qqp'"):
        model("qqp", ids)


def test_mlm_logits_only_at_masked_positions() -> None:
    ids, mask = ids_and_mask()
    model = BertForMaskedLM(tiny()).eval()
    positions = torch.tensor([0, 4, 20])  # flat indices into the 3 x 9 grid
    logits = model(ids, None, mask, positions)
    assert logits.shape == (3, 60)
    everything = model(ids, None, mask)  # no positions: every token
    assert everything.shape == (27, 60)
    assert torch.allclose(logits, everything[positions], atol=1e-5)


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_appending_padding_does_not_change_real_token_outputs(norm: str) -> None:
    ids, mask = ids_and_mask()
    padded_ids = torch.cat([ids, torch.zeros(3, 5, dtype=torch.long)], dim=1)  # (3, 14)
    padded_mask = torch.cat([mask, torch.zeros(3, 5, dtype=torch.long)], dim=1)
    encoder = BertEncoder(tiny(norm)).eval()
    short = encoder(ids, attention_mask=mask)
    long = encoder(padded_ids, attention_mask=padded_mask)
    real = mask.bool()
    assert torch.allclose(short[real], long[:, :9][real], atol=1e-5)


def test_padding_changes_outputs_when_not_masked() -> None:
    """Guards the test above: without the mask, padding keys do change the outputs."""
    ids, mask = ids_and_mask()
    encoder = BertEncoder(tiny()).eval()
    padded = torch.cat([ids, torch.zeros(3, 5, dtype=torch.long)], dim=1)
    assert not torch.allclose(encoder(ids, attention_mask=mask)[0], encoder(padded)[0, :9], atol=1e-5)


def test_bert_initialisation() -> None:
    model = BertForMaskedLM(EncoderConfig(vocab_size=500, **SIZES["tiny"]))
    weight = model.encoder.layers[0].ffn.up.weight
    assert weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert (model.encoder.layers[0].ffn.up.bias == 0).all()
    assert (model.encoder.embeddings.word.weight[0] == 0).all()  # [PAD] embedding
    assert (model.encoder.layers[1].ffn_norm.weight == 1).all()


def test_pre_norm_adds_a_final_layer_norm() -> None:
    assert BertEncoder(tiny("post")).final_norm is None
    assert BertEncoder(tiny("pre")).final_norm is not None


def test_mlm_head_is_tied_to_word_embeddings() -> None:
    model = BertForMaskedLM(tiny())
    names = [n for n, _ in model.named_parameters()]
    assert not any("decoder" in n for n in names)
    assert model.mlm_head.bias.shape == (60,)
    ids, mask = ids_and_mask()
    model(ids, None, mask, torch.tensor([1, 2])).sum().backward()
    assert model.encoder.embeddings.word.weight.grad is not None


def test_pretraining_checkpoint_round_trip(tmp_path: Path) -> None:
    ids, mask = ids_and_mask()
    model = BertForMaskedLM(tiny("pre", dropout=0.0, attention_dropout=0.0)).eval()
    save_checkpoint(tmp_path, model, extra_config={"note": "hi"})
    loaded = load_pretraining(tmp_path).eval()
    assert torch.equal(model(ids, None, mask), loaded(ids, None, mask))
    config = read_config(tmp_path)
    assert config["note"] == "hi" and config["model_type"] == "bert_mlm"
    assert EncoderConfig.from_dict(config["encoder"]) == model.cfg


def test_multitask_checkpoint_round_trip(tmp_path: Path) -> None:
    ids, mask = ids_and_mask()
    model = MultiTaskModel(tiny(), HEADS).eval()
    save_checkpoint(tmp_path, model)
    loaded = load_multitask(tmp_path).eval()
    assert loaded.head_specs == HEADS
    for task in HEADS:
        out, again = model(task, ids, attention_mask=mask), loaded(task, ids, attention_mask=mask)
        pairs = zip(out, again, strict=True) if isinstance(out, tuple) else [(out, again)]
        assert all(torch.equal(a, b) for a, b in pairs)


def test_fine_tuning_starts_from_the_pretrained_encoder(tmp_path: Path) -> None:
    ids, mask = ids_and_mask()
    pretrained = BertForMaskedLM(tiny()).eval()
    save_checkpoint(tmp_path, pretrained)
    with pytest.raises(CheckpointError, match="pass heads="):
        load_multitask(tmp_path)
    model = load_multitask(tmp_path, heads={"sst2": HeadSpec("classification", 2)}).eval()
    assert torch.equal(model.encoder(ids, None, mask), pretrained.encoder(ids, None, mask))
    fresh = MultiTaskModel(tiny(), {"sst2": HeadSpec("classification", 2)}).eval()
    fresh.load_encoder_state(pretrained.state_dict())  # a whole MLM state dict works: encoder keys are picked
    assert torch.equal(fresh.encoder(ids, None, mask), pretrained.encoder(ids, None, mask))


def test_load_encoder_state_is_strict() -> None:
    model = MultiTaskModel(tiny(), {"a": HeadSpec("regression")})
    other = BertEncoder(
        EncoderConfig(vocab_size=60, hidden_size=16, num_layers=2, num_heads=4, intermediate_size=64)
    )
    with pytest.raises(RuntimeError, match="size mismatch"):
        model.load_encoder_state(other.state_dict())


def test_config_validation_and_presets() -> None:
    assert EncoderConfig.from_size("base", vocab_size=100).num_layers == 12
    assert EncoderConfig.from_size("mini", vocab_size=100, num_layers=2, hidden_size=None).hidden_size == 256
    with pytest.raises(ConfigError, match="divisible"):
        EncoderConfig(vocab_size=10, hidden_size=30, num_layers=1, num_heads=4, intermediate_size=8)
    with pytest.raises(ConfigError, match="unknown model size"):
        EncoderConfig.from_size("huge", vocab_size=10)
    with pytest.raises(ConfigError, match="unknown EncoderConfig field"):
        EncoderConfig.from_dict({**tiny().to_dict(), "hiden_size": 3})


def test_head_spec_validation() -> None:
    assert HeadSpec("span").num_labels == 2 and HeadSpec("regression").num_labels == 1
    with pytest.raises(ValueError, match="num_labels >= 2"):
        HeadSpec("classification", 1)
    with pytest.raises(ValueError, match="regression head has num_labels=1"):
        HeadSpec("regression", 3)


def test_missing_or_broken_checkpoint_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"config\.json: missing"):
        read_config(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "bert_mlm",\n "encoder": }')
    with pytest.raises(CheckpointError, match=r"config\.json: line 2: invalid JSON"):
        read_config(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert_mlm", "encoder": tiny().to_dict()}))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: missing"):
        load_pretraining(tmp_path)
