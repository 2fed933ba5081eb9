"""Encoder, heads, multi-task routing, init and checkpoint save/load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from models.config import SIZES, ConfigError, EncoderConfig
from models.encoder import BertEncoder, document_block_mask, document_ids, document_mask
from models.heads import SPAN_PAD_LOGIT, HeadSpec, pool
from models.io import CheckpointError, load_multitask, load_pretraining, read_config, save_checkpoint
from models.multitask import MultiTaskModel
from models.pretraining import BertForMaskedLM

HEADS = {
    "cola": HeadSpec("classification", 2),
    "mnli": HeadSpec("classification", 3),
    "stsb": HeadSpec("regression"),
    "squad": HeadSpec("span"),
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: see conftest


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
    ids, mask = ids_and_mask()
    torch.manual_seed(0)
    out = BertEncoder(tiny("pre")).eval()(ids, None, mask)  # (3, 9, 32)
    # a fresh LayerNorm (weight 1, bias 0) leaves every token at mean 0, variance 1; the bare residual
    # stream of this pre-LN stack is off by up to 4e-3 in the mean and 1.4e-2 in the variance
    assert out.mean(-1).abs().max() < 1e-5
    assert (out.var(-1, unbiased=False) - 1).abs().max() < 1e-4


def test_mlm_head_is_tied_to_word_embeddings() -> None:
    model = BertForMaskedLM(tiny())
    names = [n for n, _ in model.named_parameters()]
    assert not any("decoder" in n for n in names)
    assert model.mlm_head.bias.shape == (60,)
    ids, mask = ids_and_mask()
    model(ids, None, mask, torch.tensor([1, 2])).sum().backward()
    # ids absent from the input reach the loss only through the decoder, i.e. only if it is tied: each
    # such row's gradient of the summed logits is the sum of the two transformed hidden states
    absent = sorted(set(range(60)) - set(ids.flatten().tolist()))
    grad = model.encoder.embeddings.word.weight.grad[absent]  # (n_absent, 32)
    assert len(absent) > 30 and grad.abs().sum(-1).min() > 1.0
    assert torch.allclose(grad, grad[0].expand_as(grad))


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
    with pytest.raises(ValueError, match=r"pooling must be cls\|mean"):
        HeadSpec("regression", pooling="max")  # type: ignore[arg-type]
    # checkpoints written before the pooling option existed read back as [CLS] pooling
    assert HeadSpec.from_dict({"kind": "regression", "num_labels": 1}).pooling == "cls"


def test_mean_pooling_averages_only_real_tokens() -> None:
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]], [[5.0, 6.0], [7.0, 8.0], [9.0, 10.0]]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert torch.equal(pool(hidden, mask, "mean"), torch.tensor([[2.0, 3.0], [7.0, 8.0]]))  # by hand
    assert torch.equal(pool(hidden, mask, "cls"), torch.tensor([[1.0, 2.0], [5.0, 6.0]]))
    assert torch.equal(pool(hidden, None, "mean"), hidden.mean(dim=1))


def test_mean_pooled_heads_ignore_padding_and_round_trip(tmp_path: Path) -> None:
    heads = {
        "sst2": HeadSpec("classification", 2, pooling="mean"),
        "stsb": HeadSpec("regression", pooling="mean"),
    }
    model = MultiTaskModel(tiny(norm="pre"), heads).eval()
    ids, mask = ids_and_mask()  # row 1 already ends in padding
    padded_ids = torch.cat([ids, torch.zeros(3, 3, dtype=torch.long)], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(3, 3, dtype=torch.long)], dim=1)
    for task in heads:
        short, long = (
            model(task, ids, attention_mask=mask),
            model(task, padded_ids, attention_mask=padded_mask),
        )
        assert torch.allclose(short, long, atol=1e-5), task
    save_checkpoint(tmp_path, model)
    loaded = load_multitask(tmp_path).eval()
    assert loaded.head_specs == heads
    assert torch.equal(loaded("stsb", ids, attention_mask=mask), model("stsb", ids, attention_mask=mask))


def test_missing_or_broken_checkpoint_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"config\.json: missing"):
        read_config(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "bert_mlm",\n "encoder": }')
    with pytest.raises(CheckpointError, match=r"config\.json: line 2: invalid JSON"):
        read_config(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert_mlm", "encoder": tiny().to_dict()}))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: missing"):
        load_pretraining(tmp_path)


# ---- architecture options -------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"positions": "sinusoidal"},
        {"positions": "rotary", "norm": "pre"},
        {"ffn": "geglu"},
        {"bias": False},
        {"doc_attention": True},
    ],
)
def test_every_option_trains_and_round_trips(options: dict, tmp_path: Path) -> None:
    ids, mask = ids_and_mask()
    model = BertForMaskedLM(tiny(**options, dropout=0.0, attention_dropout=0.0))
    model(ids, None, mask, torch.tensor([1, 2, 20])).logsumexp(-1).sum().backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "token_type" not in n), options
    save_checkpoint(tmp_path, model)
    loaded = load_pretraining(tmp_path)
    assert loaded.cfg == model.cfg
    assert torch.equal(model.eval()(ids, None, mask), loaded.eval()(ids, None, mask))


def test_position_options_change_the_parameters() -> None:
    learned, sinusoidal, rotary = (
        BertEncoder(tiny(positions=p)) for p in ("learned", "sinusoidal", "rotary")
    )
    assert "embeddings.position.weight" in learned.state_dict()
    for enc in (sinusoidal, rotary):  # fixed tables are rebuilt from the config, not saved
        assert not any("position" in k or "sinusoid" in k or "rotary" in k for k in enc.state_dict())
    assert (
        sum(p.numel() for p in sinusoidal.parameters())
        == sum(p.numel() for p in learned.parameters()) - 512 * 32
    )


def test_sinusoidal_positions_make_the_encoder_order_aware() -> None:
    encoder = BertEncoder(tiny(positions="sinusoidal")).eval()
    ids = torch.tensor([[7, 8, 9, 10]])
    assert not torch.allclose(encoder(ids)[0, 0], encoder(ids.flip(1))[0, 3], atol=1e-4)


def test_rotary_scores_depend_only_on_the_offset() -> None:
    from models.encoder import Rotary, apply_rotary

    cos, sin = Rotary(tiny(positions="rotary"))(20)  # head size 8
    q, k = torch.randn(1, 1, 1, 8).expand(1, 1, 20, 8), torch.randn(1, 1, 1, 8).expand(1, 1, 20, 8)
    scores = apply_rotary(q, cos, sin) @ apply_rotary(k, cos, sin).transpose(-1, -2)  # (1, 1, 20, 20)
    assert torch.allclose(scores[0, 0, 3, 1], scores[0, 0, 12, 10], atol=1e-4)  # offset 2 both
    assert not torch.allclose(scores[0, 0, 3, 1], scores[0, 0, 3, 2], atol=1e-4)
    with pytest.raises(ConfigError, match="even head size"):
        EncoderConfig(
            vocab_size=60, hidden_size=36, num_layers=1, num_heads=4, intermediate_size=8, positions="rotary"
        )


def test_geglu_and_bias_options_shape_the_ffn() -> None:
    geglu = BertEncoder(tiny(ffn="geglu")).layers[0].ffn
    assert geglu.up.weight.shape == (128, 32) and geglu.down.weight.shape == (32, 64)
    no_bias = BertEncoder(tiny(bias=False))
    assert not [n for n, _ in no_bias.named_parameters() if n.endswith("bias")]


def test_document_ids_from_separators() -> None:
    from models.encoder import document_ids, document_mask

    ids = torch.tensor([[2, 7, 8, 3, 9, 3, 0, 0]])
    mask = (ids != 0).long()
    docs = document_ids(ids, 3, mask)
    assert docs.tolist() == [[0, 0, 0, 0, 1, 1, -1, -1]]
    allowed = document_mask(docs)[0, 0]
    assert allowed[1, 3] and not allowed[1, 4] and allowed[5, 4] and not allowed[4, 6] and allowed[7, 6]


def test_doc_attention_isolates_packed_documents() -> None:
    ids = torch.tensor([[2, 7, 8, 3, 9, 10, 11, 3]])  # [CLS] a a [SEP] | b b b [SEP]
    other = ids.clone()
    other[0, 4:7] = torch.tensor([30, 31, 32])  # change only the second document
    for doc_attention, isolated in ((True, True), (False, False)):
        encoder = BertEncoder(tiny(doc_attention=doc_attention)).eval()
        first_doc = encoder(ids)[0, :4], encoder(other)[0, :4]
        assert torch.allclose(*first_doc, atol=1e-5) == isolated
    encoder = BertEncoder(tiny(doc_attention=True)).eval()
    explicit = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1]])
    assert torch.allclose(encoder(ids), encoder(ids, doc_ids=explicit), atol=1e-6)


def test_multitask_model_never_masks_by_document() -> None:
    model = MultiTaskModel(tiny(doc_attention=True), HEADS)
    assert model.cfg.doc_attention is False


def test_flex_document_mask_matches_the_dense_mask() -> None:
    """The FlexAttention BlockMask path (CUDA's) against the dense block-diagonal mask. On a CPU-only
    machine the same compiled flex kernel runs on the CPU (slower to compile, same maths)."""
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = EncoderConfig(vocab_size=60, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128,
                        doc_attention=True, attention_dropout=0.0)  # fmt: skip
    encoder = BertEncoder(cfg).to(device).eval()
    ids = torch.randint(5, 60, (2, 200), device=device)
    ids[:, [50, 120, 199]] = 3

    def run(mask: object) -> torch.Tensor:
        x = encoder.embeddings(ids, torch.zeros_like(ids))
        for layer in encoder.layers:
            x = layer(x, mask, None)
        return x

    docs = document_ids(ids, cfg.sep_id)
    with torch.no_grad():
        flex, dense = run(document_block_mask(docs)), run(document_mask(docs))
    assert torch.allclose(flex, dense, atol=1e-4)
    with torch.no_grad():  # whichever path the encoder picks here (flex on CUDA, dense on CPU)
        assert torch.allclose(encoder(ids), flex, atol=1e-4)


def test_pair_head_and_electra_models() -> None:
    from models.pretraining import BertForPreTraining, ElectraForPreTraining, generator_config

    ids, mask = ids_and_mask()
    pair_model = BertForPreTraining(tiny())
    logits, pair = pair_model(ids, None, mask, torch.tensor([0, 5]), return_pair=True)
    assert logits.shape == (2, 60) and pair.shape == (3, 2)
    gen_cfg = generator_config(tiny(), 0.25)
    assert (gen_cfg.hidden_size, gen_cfg.num_heads, gen_cfg.intermediate_size) == (8, 1, 16)
    electra = ElectraForPreTraining(tiny(), gen_cfg)
    positions = torch.tensor([1, 2, 12])
    gen_logits, disc, replaced = electra(ids, None, mask, positions, ids.reshape(-1)[positions])
    assert gen_logits.shape == (3, 60) and disc.shape == (3, 9) and replaced.shape == (3, 9)
    assert not replaced.reshape(-1)[[0, 3, 4, 5]].any()  # never-masked positions are never "replaced"


@pytest.mark.filterwarnings("ignore")
def test_flex_block_mask_equals_the_dense_document_mask() -> None:
    """The CUDA path's BlockMask, checked with eager flex_attention on CPU against SDPA + dense mask."""
    from torch.nn.attention.flex_attention import flex_attention

    from models.encoder import document_block_mask, document_ids, document_mask

    ids = torch.randint(5, 60, (2, 200), generator=torch.Generator().manual_seed(0))
    ids[:, [50, 120, 199]] = 3
    mask = torch.ones_like(ids)
    mask[1, 150:] = 0
    docs = document_ids(ids, 3, mask)
    q, k, v = (torch.randn(2, 4, 200, 16) for _ in range(3))
    flex = flex_attention(q, k, v, block_mask=document_block_mask(docs))
    dense = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=document_mask(docs))
    assert torch.allclose(flex, dense, atol=1e-5)
