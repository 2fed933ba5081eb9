"""The shared training loop: learning, exact resume, guards, budget, evaluation, schedules."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from models.config import EncoderConfig
from models.pretraining import BertForMaskedLM
from tasks.engine.flops import default_peak_flops
from tasks.engine.loop import STATE_FILE, WEIGHTS_FILE, NonFiniteLossError, fit
from tasks.engine.masking import mask_tokens
from tasks.engine.objectives import MLMObjective
from tasks.engine.optim import build_optimizer, build_scheduler, lr_multiplier, param_groups, time_multiplier
from tasks.engine.settings import TrainSettings
from tasks.sink import MemorySink, NullSink

VOCAB = 40


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: see conftest


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
    cfg = TrainSettings(max_steps=40, lr=1e-2, warmup_ratio=0.05, log_every=10)
    result = fit(tiny_model(dropout=0.0), MLMObjective(), ToySource(same_mask=True), cfg, sink)
    losses = [v for _, v in sink.series("loss")]
    assert result.steps == 40 and len(losses) == 4
    assert losses[-1] < 0.3 * losses[0]
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "mlm_accuracy"} <= set(result.metrics)
    assert result.tokens == 40 * 8 * 12
    assert sink.last_progress == (40, 40)


def test_resume_follows_the_uninterrupted_trajectory_exactly(tmp_path: Path) -> None:
    cfg = TrainSettings(max_steps=8, lr=1e-3, grad_accum=2, checkpoint_every=4, log_every=2)
    straight = tiny_model()
    fit(straight, MLMObjective(), ToySource(), cfg, NullSink(), seed=3, checkpoint_dir=tmp_path / "a")

    killed = tiny_model()  # micro-batch 10 belongs to step 6: dies after the step-4 checkpoint
    with pytest.raises(KeyboardInterrupt, match="simulated kill"):
        fit(killed, MLMObjective(), ToySource(stop_at=10), cfg, NullSink(), seed=3,
            checkpoint_dir=tmp_path / "b")  # fmt: skip
    assert (tmp_path / "b" / WEIGHTS_FILE).is_file() and (tmp_path / "b" / STATE_FILE).is_file()

    resumed = tiny_model()  # fresh objects, as in a new process
    result = fit(resumed, MLMObjective(), ToySource(), cfg, NullSink(), seed=3, checkpoint_dir=tmp_path / "b")
    assert result.resumed_from == 4 and result.steps == 8
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert not torch.equal(straight.mlm_head.bias, tiny_model().mlm_head.bias)  # it did train


def test_finished_checkpoint_is_not_trained_again(tmp_path: Path) -> None:
    cfg = TrainSettings(max_steps=3, lr=1e-3)
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
        fit(tiny_model(), poisoned, ToySource(), TrainSettings(max_steps=10, lr=1e-3), NullSink())
    assert err.value.step == 3


def test_time_budget_stops_early_and_checkpoints(tmp_path: Path) -> None:
    cfg = TrainSettings(max_steps=1000, lr=1e-3, max_minutes=1e-6)
    result = fit(tiny_model(), MLMObjective(), ToySource(), cfg, NullSink(), checkpoint_dir=tmp_path)
    assert result.stopped_early and result.steps == 1
    assert torch.load(tmp_path / STATE_FILE, weights_only=True)["step"] == 1


def test_evaluate_runs_periodically_without_touching_the_training_rng() -> None:
    calls: list[bool] = []

    def evaluate() -> dict[str, float]:
        calls.append(torch.is_grad_enabled())
        torch.rand(100)  # would shift dropout masks if evaluation shared the training RNG
        return {"val_loss": 1.0}

    cfg = TrainSettings(max_steps=7, lr=1e-3, eval_every=3)
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
    losses = {}
    for precision in ("fp32", "bf16"):
        sink = MemorySink()
        model = tiny_model()
        fit(model, MLMObjective(), ToySource(), TrainSettings(max_steps=4, lr=1e-3, precision=precision,
            log_every=1), sink)  # fmt: skip
        losses[precision] = [v for _, v in sink.series("loss")]
        assert all(p.dtype == torch.float32 for p in model.parameters())  # fp32 master weights
    # the same trajectory to bf16 rounding (~1e-4 here), yet not bit-identical: autocast did run in bf16
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=1e-2)
    assert losses["bf16"] != losses["fp32"]


def test_loop_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="grad_accum"):
        TrainSettings(max_steps=1, lr=1e-3, grad_accum=0)
    with pytest.raises(ValueError, match="precision"):
        TrainSettings(max_steps=1, lr=1e-3, precision="fp16")  # type: ignore[arg-type]


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


def test_param_groups_scale_the_scheduled_lr_and_frozen_params_stay_put() -> None:
    model = tiny_model()
    model.encoder.embeddings.position.weight.requires_grad_(False)
    frozen_before = model.encoder.embeddings.position.weight.clone()
    head = list(model.mlm_head.parameters())
    head_ids = {id(p) for p in head}
    rest = [p for p in model.parameters() if id(p) not in head_ids]
    head_before = [p.clone() for p in head]
    groups = [{"params": rest, "lr_scale": 0.5}, {"params": head, "lr_scale": 0.0, "weight_decay": 0.0}]
    sink = MemorySink()
    cfg = TrainSettings(max_steps=3, lr=1e-2, warmup_ratio=0.0, log_every=1)
    fit(model, MLMObjective(), ToySource(), cfg, sink, param_groups=groups)
    assert [v for _, v in sink.series("lr")] == pytest.approx([1e-2, 1e-2 * 2 / 3, 1e-2 / 3])
    assert torch.equal(model.encoder.embeddings.position.weight, frozen_before)  # no update, no decay
    assert all(torch.equal(a, b) for a, b in zip(head, head_before, strict=True))  # lr_scale 0
    assert not torch.equal(
        model.encoder.layers[0].attention.qkv.weight, tiny_model().encoder.layers[0].attention.qkv.weight
    )


def test_param_groups_reject_unknown_keys() -> None:
    model = tiny_model()
    with pytest.raises(ValueError, match=r"param_groups\[0\]"):
        fit(model, MLMObjective(), ToySource(), TrainSettings(max_steps=1, lr=1e-3), NullSink(),
            param_groups=[{"params": model.parameters(), "lr": 1.0}])  # fmt: skip


def test_step_hook_can_unfreeze_a_layer_that_started_frozen() -> None:
    calls: list[int] = []

    def unfreeze_at_2(step: int, model: torch.nn.Module) -> None:
        calls.append(step)
        for p in model.encoder.layers[0].parameters():
            p.requires_grad_(step >= 2)

    initial = tiny_model().encoder.layers[0].attention.qkv.weight
    for steps, changed in ((2, False), (4, True)):
        model = tiny_model()
        calls.clear()
        fit(model, MLMObjective(), ToySource(), TrainSettings(max_steps=steps, lr=1e-2), NullSink(),
            step_hook=unfreeze_at_2)  # fmt: skip
        assert calls == list(range(steps))
        assert torch.equal(model.encoder.layers[0].attention.qkv.weight, initial) != changed


def test_metrics_are_averaged_over_the_steps_that_report_them() -> None:
    def alternating(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        loss, _ = MLMObjective()(model, batch)
        task = "a" if int(batch["input_ids"][0, 0]) == 2 and alternating.n % 2 == 0 else "b"
        alternating.n += 1
        return loss, {f"loss/{task}": torch.tensor(1.0 if task == "a" else 3.0)}

    alternating.n = 0  # type: ignore[attr-defined]
    sink = MemorySink()
    fit(
        tiny_model(),
        alternating,
        ToySource(),
        TrainSettings(max_steps=4, lr=1e-3, log_every=4, grad_accum=2),
        sink,
    )
    ((_, logged),) = sink.history
    assert logged["loss/a"] == 1.0 and logged["loss/b"] == 3.0


# ---- optimizers, budgets, MFU, signals, crash-safe checkpoints, DDP ---------------------------

import os  # noqa: E402
import signal  # noqa: E402
import time  # noqa: E402

from tasks.engine import checkpoint as checkpoint_module  # noqa: E402
from tasks.engine.loop import TrainingInterrupted  # noqa: E402
from tasks.engine.optim import Lamb  # noqa: E402


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(
        torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


def test_lamb_trains_and_scales_updates_by_the_trust_ratio() -> None:
    sink = MemorySink()
    cfg = TrainSettings(max_steps=40, lr=5e-2, warmup_ratio=0.05, log_every=10, optimizer="lamb")
    fit(tiny_model(dropout=0.0), MLMObjective(), ToySource(same_mask=True), cfg, sink)
    losses = [v for _, v in sink.series("loss")]
    assert losses[-1] < 0.5 * losses[0]
    # one step moves each tensor by lr * ||w|| (trust ratio), whatever the gradient's scale
    w = torch.nn.Parameter(torch.full((4, 4), 2.0))
    w.grad = torch.full((4, 4), 1e-3)
    before = w.detach().clone()
    Lamb([w], lr=0.1).step()
    assert float((before - w.detach()).norm()) == pytest.approx(0.1 * float(before.norm()), rel=1e-3)


def test_token_budget_fits_the_schedule_and_stops() -> None:
    sink = MemorySink()  # ToySource: 96 real tokens per step
    cfg = TrainSettings(max_steps=1000, lr=1e-3, max_tokens=960, warmup_ratio=0.0, log_every=1)
    result = fit(tiny_model(), MLMObjective(), ToySource(), cfg, sink)
    assert result.steps == 10 and result.stopped_early and result.stop_reason == "tokens"
    lrs = [v for _, v in sink.series("lr")]
    assert lrs[0] == pytest.approx(1e-3) and lrs[-1] == pytest.approx(1e-4)  # decays to 0 at the budget
    assert sink.last_progress == (10, 10)


class SlowSource(ToySource):
    def batch(self, step: int) -> dict[str, torch.Tensor]:
        time.sleep(0.03)
        return super().batch(step)


def test_minutes_budget_drives_the_lr_by_the_clock_down_to_zero(tmp_path: Path) -> None:
    """The LR is a function of elapsed time: warm-up over the first 20 % of the budget, then linear
    decay that reaches ~0 at the deadline, whatever the step time (no calibration to get wrong).

    Checked on the optimizer itself, not only on the logged value: the loop once logged the right
    LR while every group trained at it times 1/warmup_steps (~1/600 here)."""
    sink = MemorySink()
    cfg = TrainSettings(
        max_steps=10_000, lr=1e-3, max_minutes=1.2 / 60, log_every=1, warmup_ratio=0.2, checkpoint_every=5
    )
    result = fit(tiny_model(), MLMObjective(), SlowSource(), cfg, sink, checkpoint_dir=tmp_path / "ckpt")
    state = torch.load(tmp_path / "ckpt" / "trainer_state.pt", weights_only=False)
    logged = dict(sink.series("lr"))[state["step"]]
    assert [g["lr"] for g in state["optimizer"]["param_groups"]] == pytest.approx([logged, logged], rel=1e-6)
    assert result.stop_reason == "minutes" and result.stopped_early and result.steps < 10_000
    assert result.seconds >= 1.2
    lrs = [v for _, v in sink.series("lr")]
    peak = lrs.index(max(lrs))
    assert max(lrs) > 0.6e-3 and 0 < peak < len(lrs) - 1  # rose through warm-up, then fell
    assert all(b <= a + 1e-12 for a, b in zip(lrs[peak:], lrs[peak + 1 :], strict=False))  # never rises again
    assert lrs[-1] < 0.15e-3  # the last step ran just before the deadline, at a near-zero LR


def test_timeout_stops_a_step_budget_without_touching_its_schedule() -> None:
    sink = MemorySink()
    cfg = TrainSettings(max_steps=10_000, lr=1e-3, timeout_minutes=0.5 / 60, log_every=1, warmup_ratio=0.0)
    result = fit(tiny_model(), MLMObjective(), SlowSource(), cfg, sink)
    assert result.stop_reason == "timeout" and result.stopped_early
    assert [v for _, v in sink.series("lr")][-1] > 0.99e-3  # a 10,000-step schedule barely started


def test_time_multiplier_shape() -> None:
    assert time_multiplier(0.0, 0.1, "linear") == 0.0 and time_multiplier(0.1, 0.1, "linear") == 1.0
    assert time_multiplier(0.55, 0.1, "linear") == pytest.approx(0.5)
    assert time_multiplier(1.0, 0.1, "linear") == 0.0 == time_multiplier(1.5, 0.1, "cosine")
    assert time_multiplier(0.55, 0.1, "cosine") == pytest.approx(0.5)


def test_mfu_and_tokens_per_second_are_logged() -> None:
    sink = MemorySink()
    cfg = TrainSettings(max_steps=2, lr=1e-3, log_every=2, peak_tflops=1.0)
    model = tiny_model()
    started = time.perf_counter()
    fit(model, MLMObjective(), ToySource(), cfg, sink)
    wall = time.perf_counter() - started
    ((_, metrics),) = sink.history
    assert metrics["tokens_per_s"] >= 2 * 96 / wall  # 2 steps x 96 tokens, in at most the fit's wall time
    # the flops module's formula by hand: 6 N tokens + 12 L H T tokens + 6 V H masked, over both steps
    # (8 x 12 tokens each), N = parameters outside the embedding tables; MFU = FLOP/s over the 1e12 peak
    tables = ("embeddings.word.weight", "embeddings.position.weight", "embeddings.token_type.weight")
    dense = sum(p.numel() for n, p in model.named_parameters() if not n.endswith(tables))
    masked = [int((ToySource().batch(step)["labels"] != -100).sum()) for step in (0, 1)]
    flops = sum(6 * dense * 96 + 12 * (2 * 32) * 12 * 96 + 6 * VOCAB * 32 * m for m in masked)
    assert metrics["mfu"] / metrics["tokens_per_s"] == pytest.approx(flops / (2 * 96) / 1e12, rel=1e-3)


def test_cpu_peak_doubles_for_bf16() -> None:
    """bf16 dot products do two multiply-adds per fp32 lane: a fp32 peak would put bf16 MFU above 1."""
    cpu = torch.device("cpu")
    fp32 = default_peak_flops(cpu, "fp32")
    assert fp32 == torch.get_num_threads() * 3.0e9 * 32
    assert default_peak_flops(cpu, "bf16") == 2 * fp32


def test_sigterm_checkpoints_then_raises_and_resume_is_exact(tmp_path: Path) -> None:
    cfg = TrainSettings(max_steps=8, lr=1e-3, checkpoint_every=100)
    straight = tiny_model()
    fit(straight, MLMObjective(), ToySource(), cfg, NullSink(), seed=3)

    def terminate_at_3(step: int, model: torch.nn.Module) -> None:
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(
        TrainingInterrupted, match=r"interrupted by signal at step 4 \(checkpoint saved\)"
    ) as err:
        fit(
            tiny_model(),
            MLMObjective(),
            ToySource(),
            cfg,
            NullSink(),
            checkpoint_dir=tmp_path,
            seed=3,
            step_hook=terminate_at_3,
        )
    assert isinstance(err.value, SystemExit) and err.value.code == 128 + signal.SIGTERM
    assert err.value.step == 4 and torch.load(tmp_path / STATE_FILE, weights_only=True)["step"] == 4
    assert signal.getsignal(signal.SIGTERM) == before  # handler restored
    resumed = tiny_model()
    result = fit(resumed, MLMObjective(), ToySource(), cfg, NullSink(), checkpoint_dir=tmp_path, seed=3)
    assert result.resumed_from == 4
    assert same_weights(straight, resumed)


def test_a_kill_between_state_and_weights_rename_still_resumes(tmp_path: Path, monkeypatch) -> None:
    cfg = TrainSettings(max_steps=6, lr=1e-3, checkpoint_every=2)
    straight = tiny_model()
    fit(straight, MLMObjective(), ToySource(), cfg, NullSink())
    real_replace, calls = os.replace, []

    def dies_on_the_weights_rename(src, dst) -> None:
        if Path(dst).name == WEIGHTS_FILE and len(calls) >= 1:
            raise KeyboardInterrupt("SIGKILL")  # the step-4 save dies after committing its state
        if Path(dst).name == WEIGHTS_FILE:
            calls.append(dst)
        real_replace(src, dst)

    monkeypatch.setattr(checkpoint_module.os, "replace", dies_on_the_weights_rename)
    with pytest.raises(KeyboardInterrupt, match="SIGKILL"):
        fit(tiny_model(), MLMObjective(), ToySource(), cfg, NullSink(), checkpoint_dir=tmp_path)
    monkeypatch.undo()
    assert (tmp_path / checkpoint_module.PENDING_WEIGHTS_FILE).is_file()
    resumed = tiny_model()
    assert (
        fit(resumed, MLMObjective(), ToySource(), cfg, NullSink(), checkpoint_dir=tmp_path).resumed_from == 4
    )
    assert same_weights(straight, resumed)


def test_ddp_world_of_one_on_gloo_matches_the_plain_run(tmp_path: Path) -> None:
    import torch.distributed as dist

    cfg = TrainSettings(max_steps=4, lr=1e-3, grad_accum=2)
    plain = tiny_model()
    fit(plain, MLMObjective(), ToySource(), cfg, NullSink())
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        ddp = tiny_model()
        sink = MemorySink()
        fit(ddp, MLMObjective(), ToySource(), cfg, sink, checkpoint_dir=tmp_path / "ckpt")
    finally:
        dist.destroy_process_group()
    assert same_weights(plain, ddp) and sink.history  # rank 0 logs and checkpoints
    assert (tmp_path / "ckpt" / STATE_FILE).is_file()


@pytest.mark.slow
def test_torch_compile_trains_on_cpu() -> None:
    """~40 s on 2 CPU cores (Inductor compiles C++ kernels); the same loss as eager to fp tolerance."""
    cfg = TrainSettings(max_steps=3, lr=1e-3, log_every=3)
    eager, compiled = MemorySink(), MemorySink()
    fit(tiny_model(dropout=0.0), MLMObjective(), ToySource(), cfg, eager)
    fit(
        tiny_model(dropout=0.0),
        MLMObjective(),
        ToySource(),
        cfg.model_copy(update={"compile": True}),
        compiled,
    )
    assert compiled.series("loss")[0][1] == pytest.approx(eager.series("loss")[0][1], rel=1e-4)


def test_rms_lr_scaling_gives_each_parameter_a_step_relative_to_its_scale() -> None:
    model = tiny_model()
    with torch.no_grad():
        model.mlm_head.bias.zero_()  # RMS 0: the floor keeps it trainable
    optimizer = build_optimizer(model, lr=1e-2, weight_decay=0.01, scale_by_rms=True)
    params = dict(model.named_parameters())
    assert len(optimizer.param_groups) == len(params)
    for group in optimizer.param_groups:
        (param,) = group["params"]
        rms = max(float(param.detach().pow(2).mean().sqrt()), 1e-3)
        assert group["lr"] == pytest.approx(1e-2 * rms)
        assert group["weight_decay"] == (0.01 if param.ndim >= 2 else 0.0)  # BERT's split is kept
    by_param = {id(g["params"][0]): g["lr"] for g in optimizer.param_groups}
    assert by_param[id(model.mlm_head.bias)] == pytest.approx(1e-5)
    word_embedding = next(p for n, p in params.items() if "word" in n and p.ndim == 2)
    assert by_param[id(word_embedding)] != pytest.approx(1e-2)  # scaled, not the plain lr


def test_rms_scaled_runs_resume_on_the_uninterrupted_trajectory(tmp_path: Path) -> None:
    cfg = TrainSettings(max_steps=6, lr=1e-2, lr_scaling="rms", checkpoint_every=3, log_every=1)
    straight = tiny_model()
    fit(straight, MLMObjective(), ToySource(), cfg, NullSink(), seed=1, checkpoint_dir=tmp_path / "a")
    with pytest.raises(KeyboardInterrupt, match="simulated kill"):
        fit(tiny_model(), MLMObjective(), ToySource(stop_at=4), cfg, NullSink(), seed=1,
            checkpoint_dir=tmp_path / "b")  # fmt: skip
    resumed = tiny_model()
    result = fit(resumed, MLMObjective(), ToySource(), cfg, NullSink(), seed=1, checkpoint_dir=tmp_path / "b")
    assert result.resumed_from == 3
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("has_bf16", [False, True])
def test_bf16_on_a_cpu_without_bf16_instructions_is_warned_about(
    has_bf16: bool, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Both probes report the CPU's bf16 instructions; the loop warns (and still trains) only without."""
    from tasks.engine import device as device_module

    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, probe, lambda has=has_bf16: has, raising=False)
    cpu = torch.device("cpu")
    assert device_module.native_bf16(cpu) is has_bf16
    assert device_module.precision_warning(cpu, "fp32") is None
    cfg = TrainSettings(max_steps=2, lr=1e-3, precision="bf16", log_every=1)
    with caplog.at_level("WARNING", logger="tasks.engine.loop"):
        result = fit(tiny_model(), MLMObjective(), ToySource(), cfg, NullSink())
    assert result.steps == 2
    warned = [r.getMessage() for r in caplog.records if "bf16 matrix instructions" in r.getMessage()]
    assert bool(warned) is not has_bf16
    assert not warned or 'train.precision = "fp32"' in warned[0]
