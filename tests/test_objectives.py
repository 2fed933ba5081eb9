"""Each pre-training objective trains a few steps on tiny packed data and its loss falls."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from models.config import EncoderConfig
from models.pretraining import BertForMaskedLM, BertForPreTraining, ElectraForPreTraining, generator_config
from tasks.engine.data import MLMBatchSource, PackedSequences, PairBatchSource
from tasks.engine.loop import fit
from tasks.engine.objectives import ElectraObjective, MLMObjective, PairObjective
from tasks.engine.settings import TrainSettings
from tasks.sink import MemorySink

VOCAB = 64
CONTINUATION = torch.zeros(VOCAB, dtype=torch.bool)
CONTINUATION[40:] = True  # ids >= 40 are "##" pieces


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> PackedSequences:
    """Rows of two documents; each document is a fixed pattern so there is something to learn."""
    rng = np.random.default_rng(0)
    rows = np.zeros((32, 24), dtype=np.uint16)
    for r in range(32):
        a, b = rng.integers(5, 30, size=2)
        doc1 = [a, a + 1, 40 + a % 20, a + 2, a + 3]
        doc2 = [b, b + 1, b + 2, 40 + b % 20, b + 3, b + 4]
        row = [2, *doc1, 3, *doc2, 3]
        rows[r, : len(row)] = row
    dir = tmp_path_factory.mktemp("packed")
    rows.tofile(dir / "train.bin")
    meta = {"dtype": "uint16", "seq_len": 24, "vocab_size": VOCAB, "splits": {"train": 32}}
    meta |= {"pad_id": 0, "unk_id": 1, "cls_id": 2, "sep_id": 3, "mask_id": 4}
    (dir / "pack.json").write_text(json.dumps(meta))
    return PackedSequences(dir, "train")


def config(**kw) -> EncoderConfig:
    return EncoderConfig(vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                         max_position=32, dropout=0.0, attention_dropout=0.0, **kw)  # fmt: skip


def train(model: torch.nn.Module, objective, source, steps: int = 40) -> MemorySink:
    torch.manual_seed(0)
    sink = MemorySink()
    cfg = TrainSettings(max_steps=steps, lr=1e-2, warmup_ratio=0.1, log_every=10)
    fit(model, objective, source, cfg, sink)
    return sink


def first_last(sink: MemorySink, name: str = "loss") -> tuple[float, float]:
    values = [v for _, v in sink.series(name)]
    return values[0], values[-1]


@pytest.mark.parametrize(
    ("strategy", "model_options"),
    [("token", {}), ("word", {"doc_attention": True}), ("span", {"positions": "rotary", "ffn": "geglu"})],
)
def test_mlm_family_trains(packed: PackedSequences, strategy: str, model_options: dict) -> None:
    torch.manual_seed(0)
    source = MLMBatchSource(packed, 8, seed=0, mask_rate=0.3, strategy=strategy, is_continuation=CONTINUATION,
                            with_doc_ids=model_options.get("doc_attention", False))  # fmt: skip
    sink = train(BertForMaskedLM(config(**model_options)), MLMObjective(), source)
    first, last = first_last(sink)
    assert last < first - 0.2
    assert ("doc_ids" in source.batch(0)) == ("doc_attention" in model_options)


@pytest.mark.parametrize("task", ["sop", "nsp"])
def test_pair_objectives_train(packed: PackedSequences, task: str) -> None:
    torch.manual_seed(0)
    source = PairBatchSource(packed, 8, seed=0, task=task)
    sink = train(BertForPreTraining(config()), PairObjective(task), source)
    first, last = first_last(sink)
    assert last < first - 0.1
    assert {f"{task}_accuracy", f"{task}_loss", "mlm_accuracy"} <= set(sink.history[-1][1])
    result = PairObjective(task).evaluate(
        BertForPreTraining(config()), [source.batch(0)], torch.device("cpu")
    )
    assert 0.0 <= result[f"val_{task}_accuracy"] <= 1.0 and "val_loss" in result


def test_electra_trains_generator_and_discriminator(packed: PackedSequences) -> None:
    torch.manual_seed(0)
    model = ElectraForPreTraining(config(), generator_config(config(), 0.5))
    source = MLMBatchSource(packed, 8, seed=0, mask_rate=0.3)
    sink = train(model, ElectraObjective(weight=50.0), source, steps=40)
    first, last = first_last(sink, "mlm_loss")
    assert last < first - 0.3  # the generator learns
    history = sink.history[-1][1]
    assert history["loss"] == pytest.approx(history["mlm_loss"] + 50.0 * history["disc_loss"], rel=1e-4)
    # the discriminator beats the trivial "nothing was replaced" guess on the replaced tokens' share
    assert history["disc_accuracy"] >= 1.0 - history["replaced_fraction"] - 0.02
    result = ElectraObjective().evaluate(model, [source.batch(1)], torch.device("cpu"))
    assert {"val_loss", "val_mlm_accuracy", "val_disc_accuracy"} <= set(result)


def test_electra_labels_mark_exactly_the_changed_tokens() -> None:
    torch.manual_seed(0)
    model = ElectraForPreTraining(config(), generator_config(config(), 0.5))
    ids = torch.randint(5, VOCAB, (2, 10))
    positions = torch.tensor([1, 2, 13])
    targets = ids.reshape(-1)[positions]
    _, _, replaced = model(ids, None, None, positions, targets)
    assert not replaced.reshape(-1)[[0, 3, 4, 12]].any()
    # with a generator that always predicts the original, nothing counts as replaced
    with torch.no_grad():
        model.generator.mlm_head.bias.zero_()
        model.generator.mlm_head.bias[targets] = 1e4
    if len(set(targets.tolist())) == 1:
        assert not model(ids, None, None, positions, targets)[2].any()
