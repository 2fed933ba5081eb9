"""T5 family through the real data stages and the one loop: a Unigram tokenizer with T5's specials,
packed rows of text closed by </s>, span-corruption pre-training that learns, resumes exactly,
and writes a checkpoint that rebuilds the model; a BERT objective on T5 data (or the reverse) fails."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models.io import load_t5
from tasks.data.ingest import IngestConfig, ingest
from tasks.data.pack import PackConfig, pack
from tasks.data.specials import T5
from tasks.data.tokenizer import TokenizerConfig, load_tokenizer, train_tokenizer
from tasks.engine.data import MLMBatchSource, PackedDataError, PackedSequences
from tasks.engine.flops import flops_estimator
from tasks.engine.loop import fit
from tasks.engine.masking import IGNORE_INDEX
from tasks.engine.objectives import SpanCorruptionObjective
from tasks.engine.settings import TrainSettings
from tasks.engine.span_corruption import SpanBatchSource, recover
from tasks.sink import MemorySink
from tasks.store.artifact import Artifact
from tasks.train.pretrain import pretrain
from tasks.train.pretrain_config import PretrainConfig
from tasks.train.recipe import build_model

SEQ_LEN = 40


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: see conftest


@pytest.fixture(scope="module")
def stages(tmp_path_factory: pytest.TempPathFactory) -> tuple[Artifact, Artifact, Artifact]:
    """(docs, tokenizer, packed): templated sentences, so span corruption has something to learn."""
    tmp = tmp_path_factory.mktemp("t5")
    rng = np.random.default_rng(0)
    subjects, verbs, colours = ["the cat", "a dog", "my bird", "the fox"], ["sees", "eats"], ["red", "blue"]
    lines = [
        f"{rng.choice(subjects)} {rng.choice(verbs)} fish . it is {rng.choice(colours)} ." for _ in range(400)
    ]
    (tmp / "c.txt").write_text("\n".join(lines))
    sink = MemorySink()
    docs = ingest(
        IngestConfig(paths=(str(tmp / "c.txt"),), txt_mode="lines", min_chars=1), workdir=tmp, sink=sink
    )
    cfg = TokenizerConfig(family="t5", algorithm="unigram", vocab_size=320)
    tokenizer = train_tokenizer(cfg, docs, workdir=tmp, sink=sink)
    packed = pack(
        PackConfig(seq_len=SEQ_LEN, validation_fraction=0.1), docs, tokenizer, workdir=tmp, sink=sink
    )
    return docs, tokenizer, packed


def t5_cfg(**train: object) -> PretrainConfig:
    settings = {"max_steps": 120, "lr": 3e-3, "eval_every": 60, "checkpoint_every": 60} | train
    return PretrainConfig(family="t5", batch_size=16, eval_batches=4, train=settings)


def test_t5_tokenizer_has_t5s_specials_and_closes_text_with_eos(stages) -> None:
    _, tokenizer, _ = stages
    tok = load_tokenizer(tokenizer.dir)
    assert [tok.id_to_token(i) for i in range(4)] == ["<pad>", "</s>", "<unk>", "<extra_id_0>"]
    assert tok.token_to_id("<extra_id_99>") == 102
    ids = tok.encode("the cat sees fish").ids
    assert ids[-1] == 1 and 1 not in ids[:-1] and 0 not in ids  # text </s>: no [CLS], no padding
    assert tok.decode(tok.encode("the cat sees fish", add_special_tokens=False).ids) == "the cat sees fish"
    special_map = json.loads(tokenizer.file("special_tokens_map.json").read_text())
    assert special_map["eos_token"] == "</s>" and len(special_map["additional_special_tokens"]) == 100


def test_a_tokenizer_of_no_known_family_is_refused(stages, tmp_path: Path) -> None:
    _, tokenizer, _ = stages
    state = json.loads(tokenizer.file("tokenizer.json").read_text())
    state["model"]["vocab"][0][0] = "<nothing>"  # unigram vocab: [piece, score]
    state["added_tokens"][0]["content"] = "<nothing>"
    (tmp_path / "tokenizer.json").write_text(json.dumps(state))
    with pytest.raises(ValueError, match=r"tokenizer.json: the vocabulary holds neither"):
        load_tokenizer(tmp_path)


def test_t5_rows_are_text_closed_by_eos_and_pack_json_names_the_family(stages) -> None:
    _, tokenizer, packed = stages
    meta = json.loads(packed.file("pack.json").read_text())
    assert meta["family"] == "t5" and meta["eos_id"] == 1 and "cls_id" not in meta
    assert meta["sentinel_ids"] == list(range(3, 103))
    train = PackedSequences(packed.dir, "train")
    rows = np.asarray(train.rows)
    assert rows.shape[1] == SEQ_LEN
    assert not np.isin(rows, T5.sentinel_ids).any()  # sentinels are the objective's, never text
    stream = rows[:-1].reshape(-1)  # full rows: doc </s> doc </s> ... across row boundaries
    tok = load_tokenizer(tokenizer.dir)
    first_doc = stream[: int(np.argmax(stream == 1))]
    assert tok.decode(first_doc.tolist()).endswith(" .")


def test_span_batches_are_a_pure_function_of_the_step_and_recover_the_rows(stages) -> None:
    _, _, packed = stages
    train = PackedSequences(packed.dir, "train")
    a, b = SpanBatchSource(train, 8, seed=3), SpanBatchSource(train, 8, seed=3)
    for step in (0, 5, 40):
        first, again = a.batch(step), b.batch(step)
        assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(a.batch(0)["input_ids"], a.batch(1)["input_ids"])
    batch, rows = a.batch(2), train.take(a.row_indices(2))
    for inputs, labels, row in zip(batch["input_ids"], batch["labels"], rows, strict=True):
        real = row[row != 0]
        assert recover(inputs, labels[labels != IGNORE_INDEX], a.corruption.sentinel_ids, 1) == real.tolist()


def test_objectives_refuse_the_other_familys_data(stages, tmp_path: Path) -> None:
    _, _, packed = stages
    with pytest.raises(PackedDataError, match=r"pack.json's family is 't5'"):
        MLMBatchSource(PackedSequences(packed.dir, "train"), 8, seed=0)
    with pytest.raises(ValueError, match=r"family 't5' cannot train objective 'mlm'"):
        PretrainConfig(family="t5", objective="mlm")
    with pytest.raises(ValueError, match=r"family 'bert' cannot train objective 'span_corruption'"):
        PretrainConfig(objective="span_corruption")
    assert PretrainConfig(family="t5").objective == "span_corruption"


def test_t5_pretraining_learns_and_writes_a_loadable_checkpoint(stages, tmp_path: Path) -> None:
    _, tokenizer, packed = stages
    sink = MemorySink()
    checkpoint = pretrain(t5_cfg(), packed, tokenizer, workdir=tmp_path, sink=sink)
    metrics = json.loads(checkpoint.file("metrics.json").read_text())
    val = sink.series("val_loss")
    assert metrics["steps"] == 120 and metrics["val_token_accuracy"] > 0.3
    validation = SpanBatchSource(PackedSequences(packed.dir, "validation"), 16, seed=0)
    untrained = build_model(t5_cfg(), PackedSequences(packed.dir, "train"))
    before = SpanCorruptionObjective().evaluate(
        untrained, [validation.batch(i) for i in range(4)], torch.device("cpu")
    )
    assert val[-1][0] == 120 and val[-1][1] < 0.4 * before["val_loss"]
    model = load_t5(checkpoint.dir)
    assert (
        model.cfg.vocab_size == load_tokenizer(tokenizer.dir).get_vocab_size()
        and model.cfg.decoder_start_id == 0
        and model.cfg.eos_id == 1
    )
    assert json.loads(checkpoint.file("config.json").read_text())["pretrain"]["family"] == "t5"
    assert not list(tmp_path.glob(".scratch/pretrain-*"))  # resume state is gone once the stage finished


class KilledAt(SpanBatchSource):
    """The real source that dies at micro-batch ``stop_at``, as a killed process would."""

    stop_at: int | None = None

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        if self.stop_at is not None and step >= self.stop_at:
            raise KeyboardInterrupt("simulated kill")
        return super().batch(step)


def test_a_killed_t5_run_resumes_on_the_uninterrupted_trajectory(stages, tmp_path: Path) -> None:
    _, _, packed = stages
    train, cfg = PackedSequences(packed.dir, "train"), t5_cfg()
    settings = TrainSettings(max_steps=8, lr=3e-3, checkpoint_every=4, log_every=2)
    straight = build_model(cfg, train)
    fit(straight, SpanCorruptionObjective(), SpanBatchSource(train, 8, 5), settings, MemorySink(), seed=5,
        checkpoint_dir=tmp_path / "a")  # fmt: skip
    killed = KilledAt(train, 8, 5)
    killed.stop_at = 6
    with pytest.raises(KeyboardInterrupt, match="simulated kill"):
        fit(build_model(cfg, train), SpanCorruptionObjective(), killed, settings, MemorySink(), seed=5,
            checkpoint_dir=tmp_path / "b")  # fmt: skip
    resumed = build_model(cfg, train)
    result = fit(resumed, SpanCorruptionObjective(), SpanBatchSource(train, 8, 5), settings, MemorySink(),
                 seed=5, checkpoint_dir=tmp_path / "b")  # fmt: skip
    assert result.resumed_from == 4 and result.steps == 8
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert not torch.equal(straight.lm_head.weight, build_model(cfg, train).lm_head.weight)  # it trained


def test_t5_flops_count_both_stacks_and_the_output_layer(stages) -> None:
    _, _, packed = stages
    model = build_model(t5_cfg(), PackedSequences(packed.dir, "train"))
    flops = flops_estimator(model)
    short = {"input_ids": torch.zeros(2, 10, dtype=torch.long), "labels": torch.zeros(2, 4, dtype=torch.long)}
    longer = {
        "input_ids": torch.zeros(2, 10, dtype=torch.long),
        "labels": torch.zeros(2, 8, dtype=torch.long),
    }
    params = sum(p.numel() for p in model.parameters()) - model.embedding.weight.numel()
    assert 6 * params * 2 * 4 < flops(short) < flops(longer)  # more targets, more decoder work


def test_a_t5_vocabulary_too_small_for_its_specials_and_alphabet_is_refused(stages, tmp_path: Path) -> None:
    docs, _, _ = stages
    cfg = TokenizerConfig(family="t5", algorithm="unigram", vocab_size=180)
    with pytest.raises(ValueError, match=r"vocab_size=180 leaves no room beside the 103 special tokens"):
        train_tokenizer(cfg, docs, workdir=tmp_path, sink=MemorySink())
