"""Each pre-training objective trains a few steps on tiny packed data and its loss falls."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

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


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: see conftest


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


def train(model: torch.nn.Module, objective, source, steps: int = 40, lr: float = 1e-2) -> MemorySink:
    torch.manual_seed(0)
    sink = MemorySink()
    cfg = TrainSettings(max_steps=steps, lr=lr, warmup_ratio=0.1, log_every=10)
    fit(model, objective, source, cfg, sink)
    return sink


def first_last(sink: MemorySink, name: str = "loss") -> tuple[float, float]:
    values = [v for _, v in sink.series(name)]
    return values[0], values[-1]


def without_context(batch: dict) -> dict:
    """``batch`` with every unmasked regular token replaced by [UNK]: positions, specials and the
    masked positions (so the 10% kept originals too) stay, only the words around the masks go."""
    hide = (batch["labels"] == -100) & (batch["input_ids"] > 4)
    return batch | {"input_ids": torch.where(hide, 1, batch["input_ids"])}


@pytest.mark.parametrize(
    ("strategy", "model_options"),
    [("token", {}), ("word", {"doc_attention": True}), ("span", {"positions": "rotary", "ffn": "geglu"})],
)
def test_mlm_family_trains(packed: PackedSequences, strategy: str, model_options: dict) -> None:
    torch.manual_seed(0)
    source = MLMBatchSource(packed, 8, seed=0, mask_rate=0.3, strategy=strategy, is_continuation=CONTINUATION,
                            with_doc_ids=model_options.get("doc_attention", False))  # fmt: skip
    model = BertForMaskedLM(config(**model_options))
    sink = train(model, MLMObjective(), source, steps=200)
    first, last = first_last(sink)
    assert last < first - 0.5
    assert ("doc_ids" in source.batch(0)) == ("doc_attention" in model_options)
    # it learned to read the words around a mask, not just frequencies by position: on fresh masks,
    # hiding those words costs it 0.3-2.8 nats (init seeds 0-2). Trained without them the cost is
    # ~0.005, and at 40-100 steps (a loss already down by 0.6-1.0) token masking had not got there.
    held_out = [source.batch(100 + i) for i in range(8)]
    model.eval()
    cpu = torch.device("cpu")
    val_loss = MLMObjective().evaluate(model, held_out, cpu)["val_loss"]
    blind_loss = MLMObjective().evaluate(model, map(without_context, held_out), cpu)["val_loss"]
    assert blind_loss > val_loss + 0.2, (val_loss, blind_loss)


class OneBatch:
    """Serves the same batch at every step: a model that learns from it must fit it."""

    def __init__(self, batch: dict) -> None:
        self.fixed = batch

    def batch(self, step: int) -> dict:
        return self.fixed


@pytest.mark.parametrize("task", ["sop", "nsp"])
def test_pair_objectives_train(packed: PackedSequences, task: str) -> None:
    torch.manual_seed(0)
    source = PairBatchSource(packed, 8, seed=0, task=task)
    sink = train(BertForPreTraining(config()), PairObjective(task), source)
    first, last = first_last(sink, "mlm_loss")
    assert last < first - 0.1
    history = sink.history[-1][1]
    assert history["loss"] == pytest.approx(history["mlm_loss"] + history[f"{task}_loss"], rel=1e-5)
    assert {f"{task}_accuracy", "mlm_accuracy"} <= set(history)

    # the pair loss reaches the pair head: it memorises one batch's labels (chance: ~0.69 loss and the
    # majority share, 10-11 of 16); with the pair loss cut off the head stays at chance
    fixed = PairBatchSource(packed, 16, seed=0, task=task).batch(0)
    labels = fixed["pair_labels"]
    assert 0 < int(labels.sum()) < len(labels)
    model = BertForPreTraining(config())
    sink = train(model, PairObjective(task), OneBatch(fixed))
    assert sink.history[-1][1][f"{task}_loss"] < 0.1
    model.eval()
    assert PairObjective(task).evaluate(model, [fixed], torch.device("cpu"))[f"val_{task}_accuracy"] == 1.0


@pytest.mark.parametrize("task", ["sop", "nsp"])
def test_pair_evaluate_weights_accuracy_by_pair_count(packed: PackedSequences, task: str) -> None:
    torch.manual_seed(0)
    model = BertForPreTraining(config()).eval()
    source = PairBatchSource(packed, 16, seed=0, task=task)
    big, small = source.batch(0), {k: v[:5] for k, v in source.batch(1).items()}
    correct = 0
    with torch.no_grad():
        for batch in (big, small):
            _, pair_logits = model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"],
                                   return_pair=True)  # fmt: skip
            correct += int((pair_logits.argmax(-1) == batch["pair_labels"]).sum())
    result = PairObjective(task).evaluate(model, [big, small], torch.device("cpu"))
    assert result[f"val_{task}_accuracy"] == pytest.approx(correct / 21)


def discriminator_outputs(
    model: ElectraForPreTraining, batches: list[dict]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(discriminator logits, replaced labels) over the real tokens of ``batches``, sampling seeded."""
    logits, replaced = [], []
    with torch.no_grad():
        for batch in batches:
            flat = batch["labels"].reshape(-1)
            positions = (flat != -100).nonzero().squeeze(1)
            _, disc, was_replaced = model(
                batch["input_ids"], None, batch["attention_mask"], positions, flat[positions]
            )
            real = batch["attention_mask"].bool()
            logits.append(disc[real])
            replaced.append(was_replaced[real])
    return torch.cat(logits), torch.cat(replaced)


def test_electra_trains_generator_and_discriminator(packed: PackedSequences) -> None:
    torch.manual_seed(0)
    model = ElectraForPreTraining(config(), generator_config(config(), 0.5))
    source = MLMBatchSource(packed, 8, seed=0, mask_rate=0.3)
    sink = train(model, ElectraObjective(weight=50.0), source, steps=100, lr=3e-3)
    first, last = first_last(sink, "mlm_loss")
    assert last < first - 0.3  # the generator learns
    history = sink.history[-1][1]
    assert history["loss"] == pytest.approx(history["mlm_loss"] + 50.0 * history["disc_loss"], rel=1e-4)

    # held-out masks: the discriminator must beat the trivial "nothing was replaced" guess by a margin
    # (untrained it scores ~7 points *below* that guess), and rank replaced tokens above originals
    # (ROC AUC ~0.6 untrained, ~0.82 after these steps)
    model.eval()
    held_out = [source.batch(100 + i) for i in range(8)]
    torch.manual_seed(1)
    logits, replaced = discriminator_outputs(model, held_out)
    accuracy = float(((logits > 0) == replaced).float().mean())
    trivial = 1.0 - float(replaced.float().mean())
    assert 0.15 < 1.0 - trivial < 0.35  # roughly the mask rate: the generator rarely guesses right
    assert accuracy > trivial + 0.03, (accuracy, trivial)
    assert roc_auc_score(replaced.numpy(), logits.numpy()) > 0.75
    # evaluate() reports the same token-weighted accuracy (same seed -> same generator samples)
    torch.manual_seed(1)
    result = ElectraObjective().evaluate(model, held_out, torch.device("cpu"))
    assert result["val_disc_accuracy"] == pytest.approx(accuracy, abs=1e-6)


def test_electra_labels_mark_exactly_the_changed_tokens() -> None:
    torch.manual_seed(0)
    model = ElectraForPreTraining(config(), generator_config(config(), 0.5))
    ids = torch.randint(5, VOCAB, (2, 10))
    positions = torch.tensor([1, 2, 13])
    ids.view(-1)[positions] = torch.tensor([7, 7, 8])
    targets = ids.reshape(-1)[positions]
    masked = torch.zeros(20, dtype=torch.bool)
    masked[positions] = True
    # a generator that always samples token 9 (no target is 9): exactly the masked tokens are replaced
    with torch.no_grad():
        model.generator.mlm_head.bias.zero_()
        model.generator.mlm_head.bias[9] = 1e4
    assert torch.equal(model(ids, None, None, positions, targets)[2].reshape(-1), masked)
    # a generator that always samples token 7: positions 1 and 2 (originally 7) count as original
    with torch.no_grad():
        model.generator.mlm_head.bias.zero_()
        model.generator.mlm_head.bias[7] = 1e4
    replaced = model(ids, None, None, positions, targets)[2].reshape(-1)
    assert replaced.nonzero().flatten().tolist() == [13]
