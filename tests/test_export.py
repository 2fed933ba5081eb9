"""Export to transformers: the exported BERT directories give our model's logits on a batch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

from models.config import EncoderConfig
from models.heads import HeadSpec
from models.io import save_checkpoint
from models.multitask import MultiTaskModel
from models.pretraining import BertForMaskedLM
from tasks.commands.export import ExportError, export_checkpoint
from tasks.store.ownership import ForeignDirectoryError

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
TEXTS = ["the cat sat on the mat", "a dog ran in the park", "birds sing at dawn and dusk"] * 20


def write_tokenizer(out: Path) -> None:
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(TEXTS, trainers.WordPieceTrainer(vocab_size=60, special_tokens=SPECIALS))
    tok.save(str(out / "tokenizer.json"))
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    (out / "vocab.txt").write_text("".join(f"{t}\n" for t, _ in vocab))
    (out / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "BertTokenizerFast", "do_lower_case": True})
    )
    (out / "special_tokens_map.json").write_text(
        json.dumps({"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
                    "mask_token": "[MASK]"})
    )  # fmt: skip


def encoder_cfg(**overrides: object) -> EncoderConfig:
    base = {"vocab_size": 64, "hidden_size": 32, "num_layers": 2, "num_heads": 4, "intermediate_size": 64}
    return EncoderConfig(**{**base, "dropout": 0.0, "attention_dropout": 0.0, **overrides})


def batch() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 64, (3, 12), generator=gen)  # (B, T)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0  # one padded row
    ids[1, 8:] = 0
    types = torch.zeros_like(ids)
    types[:, 6:] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def checkpoint(tmp_path: Path, model: torch.nn.Module) -> Path:
    src = tmp_path / "ckpt"
    save_checkpoint(src, model)
    write_tokenizer(src)
    return src


def perturbed(model: torch.nn.Module) -> torch.nn.Module:
    """Random non-trivial weights everywhere (fresh LayerNorms and biases would hide misplaced tensors)."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return model.eval()


EXACT = {"atol": 1e-5, "rtol": 0.0}  # the README's promise: the same logits


def test_masked_lm_logits_match(tmp_path: Path) -> None:
    model = perturbed(BertForMaskedLM(encoder_cfg()))
    (out,) = export_checkpoint(checkpoint(tmp_path, model), tmp_path / "hf")
    hf = transformers.BertForMaskedLM.from_pretrained(out, attn_implementation="eager").eval()
    b = batch()
    with torch.no_grad():
        ours = model(b["input_ids"], b["token_type_ids"], b["attention_mask"])  # (B*T, V)
        theirs = hf(**b).logits.reshape(-1, 64)  # (B, T, V) -> (B*T, V)
    real = b["attention_mask"].reshape(-1).bool()
    torch.testing.assert_close(theirs[real], ours[real], **EXACT)
    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert tok("The cat sat")["input_ids"][0] == 2  # [CLS] id is fixed at 2


@pytest.mark.parametrize(
    "heads",
    [
        {"MRPC": HeadSpec("classification", 2)},
        {"STS-B": HeadSpec("regression", 1)},
        {"SQuAD": HeadSpec("span")},
        {"WikiANN-en": HeadSpec("token", 7)},
        {
            "SST-2": HeadSpec("classification", 2),
            "STS-B": HeadSpec("regression"),
            "SQuAD": HeadSpec("span"),
            "WikiANN-en": HeadSpec("token", 7, pooling="mean"),
        },  # a token head pools nothing: exportable
    ],
    ids=["classification", "regression", "span", "token", "all-kinds"],
)
def test_every_cls_pooled_head_kind_exports_with_the_same_logits(tmp_path: Path, heads: dict) -> None:
    model = perturbed(MultiTaskModel(encoder_cfg(), heads))
    dirs = export_checkpoint(checkpoint(tmp_path, model), tmp_path / "hf")
    assert sorted(d.name for d in dirs) == sorted(heads)
    b = batch()
    real = b["attention_mask"].bool()
    for task, spec in heads.items():
        families = {
            "span": transformers.BertForQuestionAnswering,
            "token": transformers.BertForTokenClassification,
        }
        family = families.get(spec.kind, transformers.BertForSequenceClassification)
        hf = family.from_pretrained(tmp_path / "hf" / task, attn_implementation="eager").eval()
        with torch.no_grad():
            ours = model(task, b["input_ids"], b["token_type_ids"], b["attention_mask"])
            out = hf(**b)
        if spec.kind == "span":  # compared where an answer can be: the non-padding positions
            torch.testing.assert_close(out.start_logits[real], ours[0][real], **EXACT)
            torch.testing.assert_close(out.end_logits[real], ours[1][real], **EXACT)
        elif spec.kind == "token":  # every position, padding included: neither model masks it
            torch.testing.assert_close(out.logits, ours, **EXACT)
            assert hf.config.id2label[1] == "B-PER" and hf.config.label2id["I-LOC"] == 6
        else:
            torch.testing.assert_close(out.logits.reshape(ours.shape), ours, **EXACT)


@pytest.mark.parametrize("kind", ["classification", "regression"])
def test_mean_pooled_heads_are_refused_with_the_reason(tmp_path: Path, kind: str) -> None:
    spec = HeadSpec(kind, 2 if kind == "classification" else 1, pooling="mean")
    model = MultiTaskModel(encoder_cfg(), {"SST-2": spec, "SQuAD": HeadSpec("span")})
    with pytest.raises(ExportError, match=r"SST-2 pool the mean of the tokens.*pools \[CLS\]"):
        export_checkpoint(checkpoint(tmp_path, model), tmp_path / "hf")
    assert not (tmp_path / "hf").exists() and not list(tmp_path.glob(".tmp-*"))  # nothing half-written


def test_export_replaces_its_own_output_but_never_a_foreign_folder(tmp_path: Path) -> None:
    src = checkpoint(tmp_path, perturbed(BertForMaskedLM(encoder_cfg())))
    export_checkpoint(src, tmp_path / "hf")
    export_checkpoint(src, tmp_path / "hf")  # ours: replaced
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(ForeignDirectoryError, match="not created by bertflow"):
        export_checkpoint(src, mine)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_pre_ln_is_refused_with_the_reason(tmp_path: Path) -> None:
    model = BertForMaskedLM(encoder_cfg(norm="pre", positions="rotary"))
    with pytest.raises(ExportError, match=r"norm='pre'.*positions='rotary'"):
        export_checkpoint(checkpoint(tmp_path, model), tmp_path / "hf")
