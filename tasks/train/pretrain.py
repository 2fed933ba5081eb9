"""Pre-training stage: MLM-family objectives on the packed corpus -> a checkpoint dir.

Objectives: ``mlm`` (BERT, dynamic token masking), ``wwm`` (whole-word masking), ``span``
(SpanBERT span masking), ``mlm+sop`` (ALBERT sentence order), ``mlm+nsp`` (BERT next sentence)
and ``electra`` (replaced-token detection; the discriminator is the saved encoder).

The output dir is self-contained: ``model.safetensors`` + ``config.json`` (encoder config and
this stage's settings) + the tokenizer files + ``metrics.json``. Training state lives in a
persistent scratch dir of the stage contract (``<workdir>/.scratch/pretrain-<fingerprint>/``,
outside the atomic temp dir) so a killed run resumes where it stopped; it is deleted once the
stage has finished.

With ``devices > 1`` the stage relaunches this module under ``torchrun`` (one process per GPU,
DDP inside fit(), rank 0 writing metrics and checkpoints); one device runs in-process through
the same train_and_save().
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from tokenizers import Tokenizer

from models.config import SIZES, EncoderConfig
from models.io import save_checkpoint
from models.pretraining import BertForMaskedLM, BertForPreTraining, ElectraForPreTraining, generator_config
from tasks.data.tokenizer import TOKENIZER_FILES
from tasks.engine import distributed
from tasks.engine.data import MLMBatchSource, PackedSequences, PairBatchSource
from tasks.engine.launch import JsonlSink, run_torchrun, torchrun_command
from tasks.engine.loop import FitResult, LoopConfig, fit
from tasks.engine.masking import continuation_lookup
from tasks.engine.objectives import ElectraObjective, MLMObjective, PairObjective
from tasks.sink import MetricSink, NullSink
from tasks.store.artifact import Artifact
from tasks.store.stage import Job, Stage

log = logging.getLogger(__name__)

MIN_MAX_POSITION = 512  # room for fine-tuning inputs longer than the pre-training rows (e.g. SQuAD)

SizeName = Literal["tiny", "mini", "small", "medium", "base", "large"]
ObjectiveName = Literal["mlm", "wwm", "span", "mlm+sop", "mlm+nsp", "electra"]
assert set(get_args(SizeName)) == set(SIZES), "SizeName must list exactly the presets in models.config.SIZES"
PretrainingModel = BertForMaskedLM | ElectraForPreTraining


class PretrainConfig(BaseModel):
    """Pre-training settings (flat and typed so Prefect renders a form)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    size: SizeName = Field(
        "tiny", description="Named encoder shape (layers/hidden/heads/FFN), see models.config."
    )
    hidden_size: int | None = Field(None, ge=8, le=8192, description="Override the preset's hidden size.")
    num_layers: int | None = Field(None, ge=1, le=96, description="Override the preset's number of layers.")
    num_heads: int | None = Field(None, ge=1, le=128, description="Override the preset's attention heads.")
    intermediate_size: int | None = Field(
        None, ge=8, le=32768, description="Override the preset's FFN width."
    )
    norm: Literal["post", "pre"] = Field("post", description="LayerNorm placement: post (BERT) or pre.")
    positions: Literal["learned", "sinusoidal", "rotary"] = Field(
        "learned", description="Position encoding: learned absolute (BERT), fixed sinusoidal or rotary."
    )
    ffn: Literal["gelu", "geglu"] = Field("gelu", description="Feed-forward: GELU MLP or gated GEGLU.")
    bias: bool = Field(True, description="Biases in the encoder's linear and LayerNorm layers.")
    doc_attention: bool = Field(
        False, description="Packed documents attend only within themselves (block-diagonal mask)."
    )
    dropout: float = Field(0.1, ge=0.0, le=0.9, description="Dropout on embeddings, attention and FFN.")
    objective: ObjectiveName = Field(
        "mlm",
        description="mlm | wwm (whole words) | span (SpanBERT) | mlm+sop (ALBERT) | mlm+nsp (BERT) | electra",
    )
    mask_rate: float = Field(
        0.15, gt=0.0, le=0.5, description="Fraction of non-special tokens predicted (15% BERT; 30-40% ok)."
    )
    span_p: float = Field(0.2, gt=0.0, le=1.0, description="span: geometric parameter of span lengths.")
    span_max: int = Field(10, ge=1, le=64, description="span: longest span, in words.")
    electra_weight: float = Field(50.0, gt=0.0, le=1000.0, description="electra: discriminator loss weight.")
    generator_ratio: float = Field(
        0.25, ge=0.05, le=1.0, description="electra: generator width / heads / FFN as a fraction."
    )
    batch_size: int = Field(32, ge=1, le=65536, description="Packed rows per micro-batch (per device).")
    grad_accum: int = Field(1, ge=1, le=1024, description="Micro-batches per optimizer step.")
    optimizer: Literal["adamw", "lamb"] = Field("adamw", description="AdamW, or LAMB for huge batches.")
    lr: float = Field(5e-4, gt=0.0, le=1.0, description="Peak learning rate.")
    weight_decay: float = Field(0.01, ge=0.0, le=1.0, description="Weight decay (not on biases/LayerNorm).")
    warmup_ratio: float = Field(0.06, ge=0.0, le=1.0, description="Fraction of steps of linear warmup.")
    schedule: Literal["linear", "cosine"] = Field("linear", description="Decay to zero after warmup.")
    clip_norm: float = Field(1.0, ge=0.0, le=1000.0, description="Gradient-norm clip (0: no clipping).")
    max_steps: int = Field(1000, ge=1, le=10**8, description="Optimizer steps (a cap when a budget is set).")
    max_tokens: int | None = Field(
        None,
        ge=1,
        le=10**15,
        description="Stop after this many real tokens; the LR schedule is fitted to it.",
    )
    max_minutes: float | None = Field(
        None,
        gt=0.0,
        le=60.0 * 24 * 365,
        description="Stop after this much training time; the LR schedule is fitted to it.",
    )
    calibration_steps: int = Field(
        10, ge=1, le=10000, description="Steps measured to fit the schedule to a tokens/minutes budget."
    )
    eval_every: int = Field(200, ge=0, le=10**8, description="Validation every N steps (0: only at the end).")
    eval_batches: int = Field(
        20, ge=1, le=100000, description="Validation batches per evaluation (at most 1 pass)."
    )
    checkpoint_every: int = Field(
        200, ge=0, le=10**8, description="Save resumable state every N steps (0: end)."
    )
    log_every: int = Field(10, ge=1, le=10**6, description="Log training metrics every N steps.")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Seeds init, data order, masks and dropout.")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="bf16 autocast (CPU or GPU) or full fp32.")
    compile: bool = Field(False, description="torch.compile the model (slow start, faster steps on GPU).")
    peak_tflops: float | None = Field(
        None, gt=0.0, le=1e6, description="Hardware peak TFLOP/s for MFU (None: estimate for the device)."
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when available, else CPU.")
    devices: int = Field(1, ge=1, le=64, description="GPUs; > 1 relaunches under torchrun with DDP.")

    @model_validator(mode="after")
    def _compatible(self) -> PretrainConfig:
        if self.doc_attention and self.objective in ("mlm+sop", "mlm+nsp"):
            raise ValueError(
                "PretrainConfig: doc_attention cuts attention at every [SEP], but sentence-pair objectives "
                f"({self.objective}) need A and B to see each other; turn one of them off"
            )
        if self.devices > 1 and self.device == "cpu":
            raise ValueError("PretrainConfig: devices > 1 needs CUDA GPUs (device='auto' or 'cuda')")
        return self


def build_pretrain(
    cfg: PretrainConfig, packed: Artifact, tokenizer: Artifact, *, out: Path, job: Job
) -> dict:
    """Pre-train an encoder on ``packed`` into ``out``; a killed run resumes from ``job.scratch``."""
    check_devices(cfg)
    if cfg.devices > 1:
        return train_with_torchrun(cfg, packed, tokenizer, out=out, resume_dir=job.scratch, sink=job.sink)
    return train_and_save(cfg, packed, tokenizer, out=out, resume_dir=job.scratch, sink=job.sink)


def train_and_save(
    cfg: PretrainConfig,
    packed: Artifact,
    tokenizer: Artifact,
    *,
    out: Path,
    resume_dir: Path,
    sink: MetricSink,
    device: torch.device | None = None,
) -> dict:
    """Build the model, train it with fit(), write the checkpoint dir (rank 0); returns the summary."""
    train = PackedSequences(packed.dir, "train")
    check_tokenizer(tokenizer, train.vocab_size)
    device = device or pick_device(cfg.device)
    model = build_model(cfg, train).to(device)
    log.info("pretrain: %s params on %s, %d train rows", f"{count_parameters(model):,}", device, len(train))
    source = batch_source(cfg, train, tokenizer)
    objective = build_objective(cfg)
    evaluate = validation_evaluator(cfg, packed, tokenizer, model, objective, device)
    result = fit(model, objective, source, loop_config(cfg), sink, evaluate, checkpoint_dir=resume_dir)
    summary = stage_summary(result, count_parameters(model))
    if distributed.world()[0] == 0:
        write_checkpoint(out, model.cpu(), cfg, tokenizer, summary)
    return summary


def encoder_config(cfg: PretrainConfig, train: PackedSequences) -> EncoderConfig:
    """Preset shape + overrides; vocabulary and special ids from pack.json."""
    return EncoderConfig.from_size(
        cfg.size,
        vocab_size=train.vocab_size,
        hidden_size=cfg.hidden_size,
        num_layers=cfg.num_layers,
        num_heads=cfg.num_heads,
        intermediate_size=cfg.intermediate_size,
        max_position=max(MIN_MAX_POSITION, train.seq_len),
        dropout=cfg.dropout,
        attention_dropout=cfg.dropout,
        norm=cfg.norm,
        pad_id=train.special_ids["pad_id"],
        sep_id=train.special_ids["sep_id"],
        positions=cfg.positions,
        ffn=cfg.ffn,
        bias=cfg.bias,
        doc_attention=cfg.doc_attention,
    )


def build_model(cfg: PretrainConfig, train: PackedSequences) -> PretrainingModel:
    """The objective's model, seeded on a forked RNG (the caller's global RNG is left alone)."""
    encoder = encoder_config(cfg, train)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        if cfg.objective == "electra":
            return ElectraForPreTraining(encoder, generator_config(encoder, cfg.generator_ratio))
        if cfg.objective in ("mlm+sop", "mlm+nsp"):
            return BertForPreTraining(encoder)
        return BertForMaskedLM(encoder)


def build_objective(cfg: PretrainConfig) -> MLMObjective | PairObjective | ElectraObjective:
    if cfg.objective == "electra":
        return ElectraObjective(cfg.electra_weight)
    if cfg.objective in ("mlm+sop", "mlm+nsp"):
        return PairObjective(cfg.objective.removeprefix("mlm+"))
    return MLMObjective()


def batch_source(
    cfg: PretrainConfig, split: PackedSequences, tokenizer: Artifact, seed: int | None = None
) -> MLMBatchSource:
    """The objective's deterministic batch source over ``split``."""
    strategy = {"wwm": "word", "span": "span"}.get(cfg.objective, "token")
    common: dict[str, Any] = {
        "mask_rate": cfg.mask_rate,
        "strategy": strategy,
        "is_continuation": word_continuations(tokenizer, split.vocab_size) if strategy != "token" else None,
        "span_p": cfg.span_p,
        "span_max": cfg.span_max,
        "with_doc_ids": cfg.doc_attention,
    }
    seed = cfg.seed if seed is None else seed
    if cfg.objective in ("mlm+sop", "mlm+nsp"):
        return PairBatchSource(split, cfg.batch_size, seed, task=cfg.objective.removeprefix("mlm+"), **common)
    return MLMBatchSource(split, cfg.batch_size, seed, **common)


def word_continuations(tokenizer: Artifact, vocab_size: int) -> torch.Tensor:
    """(V,) bool lookup of WordPiece continuation pieces, from the tokenizer's own prefix."""
    tok = Tokenizer.from_file(str(tokenizer.file("tokenizer.json")))
    prefix = getattr(tok.model, "continuing_subword_prefix", None) or "##"
    lookup = continuation_lookup(tok.get_vocab(), vocab_size, prefix)
    if not lookup.any():
        log.warning(
            "pretrain: %s has no %r pieces; word/span masking falls back to tokens", tokenizer.path, prefix
        )
    return lookup


def loop_config(cfg: PretrainConfig) -> LoopConfig:
    return LoopConfig(
        max_steps=cfg.max_steps,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        warmup_ratio=cfg.warmup_ratio,
        schedule=cfg.schedule,
        grad_accum=cfg.grad_accum,
        clip_norm=cfg.clip_norm,
        eval_every=cfg.eval_every,
        checkpoint_every=cfg.checkpoint_every,
        seed=cfg.seed,
        precision=cfg.precision,
        max_minutes=cfg.max_minutes,
        log_every=cfg.log_every,
        optimizer=cfg.optimizer,
        compile=cfg.compile,
        max_tokens=cfg.max_tokens,
        calibration_steps=cfg.calibration_steps,
        peak_flops=cfg.peak_tflops * 1e12 if cfg.peak_tflops else None,
    )


def validation_evaluator(
    cfg: PretrainConfig,
    packed: Artifact,
    tokenizer: Artifact,
    model: PretrainingModel,
    objective: MLMObjective | PairObjective | ElectraObjective,
    device: torch.device,
) -> Callable[[], dict[str, float]] | None:
    """evaluate() for fit: the objective's validation figures on fixed masks (None if no rows).

    The validation source is seeded like training but its batches are always steps 0..n-1, so
    every evaluation scores the same rows under the same masks and the curve is comparable.
    """
    validation = PackedSequences(packed.dir, "validation")
    if len(validation) == 0:
        log.warning("pretrain: %s has no validation rows; skipping validation", packed.dir)
        return None
    source = batch_source(cfg, validation, tokenizer)
    num_batches = min(cfg.eval_batches, math.ceil(len(validation) / cfg.batch_size))

    def evaluate() -> dict[str, float]:
        return objective.evaluate(model, (source.batch(i) for i in range(num_batches)), device)

    return evaluate


def pick_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            "PretrainConfig.device='cuda' but no CUDA device is available (use 'auto' or 'cpu')"
        )
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def check_devices(cfg: PretrainConfig) -> None:
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if cfg.devices > 1 and available < cfg.devices:
        raise RuntimeError(
            f"PretrainConfig.devices={cfg.devices} but only {available} CUDA GPU(s) are visible"
        )


def train_with_torchrun(
    cfg: PretrainConfig,
    packed: Artifact,
    tokenizer: Artifact,
    *,
    out: Path,
    resume_dir: Path,
    sink: MetricSink,
) -> dict:
    """Relaunch this module under torchrun (one rank per GPU); relay rank 0's metrics into ``sink``."""
    resume_dir.mkdir(parents=True, exist_ok=True)
    spec = resume_dir / "launch.json"
    metrics = resume_dir / "metrics.jsonl"
    metrics.unlink(missing_ok=True)
    spec.write_text(json.dumps({
        "config": cfg.model_dump(mode="json"), "packed": packed.model_dump(mode="json"),
        "tokenizer": tokenizer.model_dump(mode="json"), "out": str(out), "resume_dir": str(resume_dir),
        "metrics": str(metrics),
    }))  # fmt: skip
    command = torchrun_command("tasks.train.pretrain", ["--launch-spec", str(spec)], cfg.devices)
    run_torchrun(command, metrics, sink)
    return json.loads((out / "metrics.json").read_text())


def worker_main(spec_path: Path) -> None:
    """One torchrun rank: join the group, train (DDP inside fit), rank 0 writes the checkpoint."""
    spec = json.loads(spec_path.read_text())
    cfg = PretrainConfig.model_validate(spec["config"])
    device = distributed.init_from_env("cuda" if pick_device(cfg.device).type == "cuda" else "cpu")
    rank = distributed.world()[0]
    sink: MetricSink = JsonlSink(Path(spec["metrics"])) if rank == 0 else NullSink()
    try:
        train_and_save(
            cfg, Artifact.model_validate(spec["packed"]), Artifact.model_validate(spec["tokenizer"]),
            out=Path(spec["out"]), resume_dir=Path(spec["resume_dir"]), sink=sink, device=device,
        )  # fmt: skip
        distributed.barrier()
    finally:
        torch.distributed.destroy_process_group()


def check_tokenizer(tokenizer: Artifact, vocab_size: int) -> None:
    """The packed ids must come from this tokenizer: a vocabulary mismatch would silently misalign."""
    path = tokenizer.file("tokenizer.json")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; the tokenizer artifact must hold tokenizer.json")
    actual = Tokenizer.from_file(str(path)).get_vocab_size()
    if actual != vocab_size:
        raise ValueError(f"{path}: vocabulary of {actual} tokens, but pack.json says vocab_size={vocab_size}")


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def stage_summary(result: FitResult, num_parameters: int) -> dict:
    summary = {
        "final_loss": result.metrics.get("loss"),
        "steps": result.steps,
        "tokens": result.tokens,
        "seconds": round(result.seconds, 3),
        "stopped_early": result.stopped_early,
        "stop_reason": result.stop_reason,
        "num_parameters": num_parameters,
        "tokens_per_s": result.metrics.get("tokens_per_s"),
        "mfu": result.metrics.get("mfu"),
    }
    empty = dict.fromkeys(("val_loss", "val_mlm_accuracy", "val_perplexity"))
    return summary | empty | result.eval  # val_* figures of the objective's evaluate()


def write_checkpoint(
    out: Path, model: PretrainingModel, cfg: PretrainConfig, tokenizer: Artifact, summary: dict
) -> None:
    """model.safetensors + config.json + tokenizer files + metrics.json: a self-contained checkpoint dir."""
    save_checkpoint(out, model, extra_config={"pretrain": cfg.model_dump(mode="json")})
    for name in TOKENIZER_FILES:
        if tokenizer.file(name).is_file():
            shutil.copy2(tokenizer.file(name), out / name)
        else:
            log.warning("pretrain: tokenizer artifact has no %s; the checkpoint will lack it", name)
    (out / "metrics.json").write_text(json.dumps(summary, indent=2, sort_keys=True))


pretrain = Stage(
    "pretrain",
    build_pretrain,
    log_files=("config.json", "metrics.json", "model.safetensors", "tokenizer.json"),
)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the torchrun workers (``python -m tasks.train.pretrain --launch-spec FILE``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--launch-spec", type=Path, required=True, help="launch.json written by the stage")
    logging.basicConfig(level=logging.INFO)
    worker_main(parser.parse_args(argv).launch_spec)


if __name__ == "__main__":
    main()
