"""The shared training loop: learning, exact resume, guards, budget, evaluation, schedules."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from models.config import EncoderConfig
from models.pretraining import BertForMaskedLM
from tasks.engine.loop import STATE_FILE, WEIGHTS_FILE, LoopConfig, NonFiniteLossError, fit
from tasks.engine.masking import mask_tokens
from tasks.engine.objectives import MLMObjective
from tasks.engine.optim import build_optimizer, build_scheduler, lr_multiplier, param_groups
from tasks.engine.sink import MemorySink, NullSink

VOCAB = 40


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread, and don't thrash when other test runs share the CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_model(seed: int = 0, dropout: float = 0.1) -> BertForMaskedLM:
    torch.manual_seed(seed)
    cfg = EncoderConfig(
        vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
        dropout=dropout, attention_dropout=dropout, max_position=32,
    )  # fmt: skip
    return BertForMaskedLM(cfg)


class ToySource:
    """Eight fixed sequences; each step masks a different, (seed, step)-determined subset.

    ``same_mask`` masks every step like step 0: a pure memorisation task.
    """

    def __init__(self, seed: int = 0, stop_at: int | None = None, same_mask: bool = False) -> None:
        gen = torch.Generator().manual_seed(123)
        self.rows = torch.randint(5, VOCAB, (8, 12), generator=gen)
        self.rows[:, 0] = 2
        self.seed, self.stop_at, self.same_mask = seed, stop_at, same_mask

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        if self.stop_at is not None and step >= self.stop_at:
            raise KeyboardInterrupt("simulated kill")
        gen = torch.Generator().manual_seed(self.seed * 100_003 + (0 if self.same_mask else step))
        ids, labels = mask_tokens(
            self.rows, generator=gen, mask_rate=0.3, mask_id=4, vocab_size=VOCAB, special_ids=range(5)
        )
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def test_loss_falls_on_a_memorisation_task() -> None:
    sink = MemorySink()
    cfg = LoopConfig(max_steps=40, lr=1e-2, warmup_ratio=0.05, log_every=10)
    result = fit(tiny_model(dropout=0.0), MLMObjective(), ToySource(same_mask=True), cfg, sink)
    losses = [v for _, v in sink.series("loss")]
    assert result.steps == 40 and len(losses) == 4
    assert losses[-1] < 0.3 * losses[0]
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "mlm_accuracy"} <= set(result.metrics)
    assert result.tokens == 40 * 8 * 12
    assert sink.last_progress == (40, 40)


def test_resume_follows_the_uninterrupted_trajectory_exactly(tmp_path: Path) -> None:
    cfg = LoopConfig(max_steps=8, lr=1e-3, grad_accum=2, checkpoint_every=4, seed=3, log_every=2)
    straight = tiny_model()
    fit(straight, MLMObjective(), ToySource(), cfg, NullSink(), checkpoint_dir=tmp_path / "a")

    killed = tiny_model()  # micro-batch 10 belongs to step 6: dies after the step-4 checkpoint
    with pytest.raises(KeyboardInterrupt):
        fit(killed, MLMObjective(), ToySource(stop_at=10), cfg, NullSink(), checkpoint_dir=tmp_path / "b")
    assert (tmp_path / "b" / WEIGHTS_FILE).is_file() and (tmp_path / "b" / STATE_FILE).is_file()

    resumed = tiny_model()  # fresh objects, as in a new process
    result = fit(resumed, MLMObjective(), ToySource(), cfg, NullSink(), checkpoint_dir=tmp_path / "b")
    assert result.resumed_from == 4 and result.steps == 8
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert not torch.equal(straight.mlm_head.bias, tiny_model().mlm_head.bias)  # it did train


def test_finished_checkpoint_is_not_trained_again(tmp_path: Path) -> None:
    cfg = LoopConfig(max_steps=3, lr=1e-3)
    model = tiny_model()
    fit(model, MLMObjective(), ToySource(), cfg, NullSink(), checkpoint_dir=tmp_path)
    again = tiny_model(seed=9)
    result = fit(again, MLMObjective(), ToySource(stop_at=0), cfg, NullSink(), checkpoint_dir=tmp_path)
    assert result.steps == 3 and result.resumed_from == 3
    assert torch.equal(again.mlm_head.bias, model.mlm_head.bias)


def test_non_finite_loss_stops_training_with_the_step() -> None:
    calls = {"n": 0}

    def poisoned(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        calls["n"] += 1
        loss, metrics = MLMObjective()(model, batch)
        return (loss * math.nan if calls["n"] == 3 else loss), metrics

    with pytest.raises(NonFiniteLossError, match=r"non-finite loss .* at step 3") as err:
        fit(tiny_model(), poisoned, ToySource(), LoopConfig(max_steps=10, lr=1e-3), NullSink())
    assert err.value.step == 3


def test_time_budget_stops_early_and_checkpoints(tmp_path: Path) -> None:
    cfg = LoopConfig(max_steps=1000, lr=1e-3, max_minutes=1e-6)
    result = fit(tiny_model(), MLMObjective(), ToySource(), cfg, NullSink(), checkpoint_dir=tmp_path)
    assert result.stopped_early and result.steps == 1
    assert torch.load(tmp_path / STATE_FILE, weights_only=True)["step"] == 1


def test_evaluate_runs_periodically_without_touching_the_training_rng() -> None:
    calls: list[bool] = []

    def evaluate() -> dict[str, float]:
        calls.append(torch.is_grad_enabled())
        torch.rand(100)  # would shift dropout masks if evaluation shared the training RNG
        return {"val_loss": 1.0}

    cfg = LoopConfig(max_steps=7, lr=1e-3, eval_every=3)
    sink = MemorySink()
    with_eval, without_eval = tiny_model(), tiny_model()
    result = fit(with_eval, MLMObjective(), ToySource(), cfg, sink, evaluate=evaluate)
    fit(without_eval, MLMObjective(), ToySource(), cfg, NullSink())
    assert [s for s, _ in sink.series("val_loss")] == [3, 6, 7]
    assert calls == [False, False, False] and result.eval == {"val_loss": 1.0}
    assert all(
        torch.equal(a, b) for a, b in zip(with_eval.parameters(), without_eval.parameters(), strict=True)
    )


def test_bf16_autocast_trains_on_cpu() -> None:
    cfg = LoopConfig(max_steps=4, lr=1e-3, precision="bf16", log_every=1)
    result = fit(tiny_model(), MLMObjective(), ToySource(), cfg, NullSink())
    assert math.isfinite(result.metrics["loss"])


def test_loop_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="grad_accum"):
        LoopConfig(max_steps=1, lr=1e-3, grad_accum=0)
    with pytest.raises(ValueError, match="precision"):
        LoopConfig(max_steps=1, lr=1e-3, precision="fp16")  # type: ignore[arg-type]


def test_schedule_warms_up_then_decays_to_zero() -> None:
    kw = {"max_steps": 100, "warmup_steps": 10}
    assert lr_multiplier(0, schedule="linear", **kw) == pytest.approx(0.1)
    assert lr_multiplier(9, schedule="linear", **kw) == pytest.approx(1.0)
    assert lr_multiplier(55, schedule="linear", **kw) == pytest.approx(0.5)
    assert lr_multiplier(55, schedule="cosine", **kw) == pytest.approx(0.5)
    assert lr_multiplier(32, schedule="cosine", **kw) > lr_multiplier(32, schedule="linear", **kw)
    assert lr_multiplier(100, schedule="linear", **kw) == 0.0
    assert lr_multiplier(100, schedule="cosine", **kw) == pytest.approx(0.0)


def test_scheduler_drives_the_optimizer_lr() -> None:
    model = tiny_model()
    optimizer = build_optimizer(model, lr=1.0, weight_decay=0.01)
    scheduler = build_scheduler(optimizer, max_steps=4, warmup_ratio=0.5, schedule="linear")
    lrs = []
    for _ in range(4):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([0.5, 1.0, 1.0, 0.5])


def test_no_weight_decay_on_biases_and_layer_norms() -> None:
    model = tiny_model()
    decay, no_decay = param_groups(model, 0.01)
    no_decay_ids = {id(p) for p in no_decay["params"]}
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.01
    assert id(model.encoder.embeddings.norm.weight) in no_decay_ids
    assert id(model.encoder.layers[0].attention.qkv.bias) in no_decay_ids
    assert id(model.encoder.layers[0].attention.qkv.weight) not in no_decay_ids
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
