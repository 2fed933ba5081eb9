"""Pre-training stage: MLM with dynamic masking on the packed corpus -> a checkpoint dir.

The output dir is self-contained: ``model.safetensors`` + ``config.json`` (encoder config and
this stage's settings) + the tokenizer files + ``metrics.json``. Training state lives in a
persistent sibling dir ``<workdir>/pretrain/<fingerprint>.ckpt/`` (outside build_stage's atomic
temp dir) so a killed run resumes where it stopped; it is deleted once the stage has finished.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Literal, get_args

import torch
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, Field
from tokenizers import Tokenizer

from models.config import SIZES, EncoderConfig
from models.io import save_checkpoint
from models.pretraining import BertForMaskedLM
from tasks.artifacts import Artifact, build_stage, fingerprint
from tasks.engine.data import MLMBatchSource, PackedSequences
from tasks.engine.loop import FitResult, LoopConfig, fit
from tasks.engine.objectives import MLMObjective, evaluate_mlm
from tasks.engine.sink import MetricSink
from tasks.stage import StageContext, run_tracked

log = logging.getLogger(__name__)

STAGE = "pretrain"
VERSION = "1"
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")
MIN_MAX_POSITION = 512  # room for fine-tuning inputs longer than the pre-training rows (e.g. SQuAD)

SizeName = Literal["tiny", "mini", "small", "medium", "base", "large"]
assert set(get_args(SizeName)) == set(SIZES), "SizeName must list exactly the presets in models.config.SIZES"


class PretrainConfig(BaseModel):
    """MLM pre-training settings (flat and typed so Prefect renders a form)."""

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
    dropout: float = Field(0.1, ge=0.0, le=0.9, description="Dropout on embeddings, attention and FFN.")
    batch_size: int = Field(32, ge=1, le=65536, description="Packed rows per micro-batch.")
    grad_accum: int = Field(1, ge=1, le=1024, description="Micro-batches per optimizer step.")
    lr: float = Field(5e-4, gt=0.0, le=1.0, description="Peak AdamW learning rate.")
    weight_decay: float = Field(0.01, ge=0.0, le=1.0, description="AdamW decay (not on biases/LayerNorm).")
    warmup_ratio: float = Field(0.06, ge=0.0, le=1.0, description="Fraction of steps of linear warmup.")
    schedule: Literal["linear", "cosine"] = Field("linear", description="Decay to zero after warmup.")
    clip_norm: float = Field(1.0, ge=0.0, le=1000.0, description="Gradient-norm clip (0: no clipping).")
    max_steps: int = Field(1000, ge=1, le=10**8, description="Optimizer steps.")
    max_minutes: float | None = Field(
        None, gt=0.0, le=60.0 * 24 * 365, description="Stop after this much training time (None: no budget)."
    )
    mask_rate: float = Field(0.15, gt=0.0, lt=1.0, description="Fraction of non-special tokens predicted.")
    eval_every: int = Field(
        200, ge=0, le=10**8, description="Validation MLM every N steps (0: only at the end)."
    )
    eval_batches: int = Field(
        20, ge=1, le=100000, description="Validation batches per evaluation (at most 1 pass)."
    )
    checkpoint_every: int = Field(
        200, ge=0, le=10**8, description="Save resumable state every N steps (0: end)."
    )
    log_every: int = Field(10, ge=1, le=10**6, description="Log training metrics every N steps.")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Seeds init, data order, masks and dropout.")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="bf16 autocast (CPU or GPU) or full fp32.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when available, else CPU.")


def pretrain(
    cfg: PretrainConfig,
    packed: Artifact,
    tokenizer: Artifact,
    *,
    workdir: Path,
    sink: MetricSink,
    run_id: str | None = None,
) -> Artifact:
    """Pre-train an encoder on ``packed`` and return the checkpoint-dir artifact (resumes if killed)."""
    inputs = [packed, tokenizer]
    resume_dir = Path(workdir) / STAGE / f"{fingerprint(STAGE, VERSION, cfg, inputs)}.ckpt"

    def build(out: Path) -> dict:
        return train_and_save(cfg, packed, tokenizer, out=out, resume_dir=resume_dir, sink=sink)

    artifact = build_stage(
        workdir=Path(workdir),
        stage=STAGE,
        version=VERSION,
        config=cfg,
        inputs=inputs,
        build=build,
        run_id=run_id,
    )
    shutil.rmtree(resume_dir, ignore_errors=True)  # finished: the resumable state is no longer needed
    return artifact


def train_and_save(
    cfg: PretrainConfig,
    packed: Artifact,
    tokenizer: Artifact,
    *,
    out: Path,
    resume_dir: Path,
    sink: MetricSink,
) -> dict:
    """Build the model, train it with fit(), write the checkpoint dir; returns the stage summary."""
    train = PackedSequences(packed.dir, "train")
    check_tokenizer(tokenizer, train.vocab_size)
    device = pick_device(cfg.device)
    model = build_model(cfg, train).to(device)
    log.info("pretrain: %s params on %s, %d train rows", f"{count_parameters(model):,}", device, len(train))
    source = MLMBatchSource(train, cfg.batch_size, cfg.seed, cfg.mask_rate)
    evaluate = validation_evaluator(cfg, packed, model, device)
    result = fit(model, MLMObjective(), source, loop_config(cfg), sink, evaluate, checkpoint_dir=resume_dir)
    summary = stage_summary(result, count_parameters(model))
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
    )


def build_model(cfg: PretrainConfig, train: PackedSequences) -> BertForMaskedLM:
    """Seeded initialisation on a forked RNG (the caller's global RNG is left alone)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return BertForMaskedLM(encoder_config(cfg, train))


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
    )


def validation_evaluator(
    cfg: PretrainConfig, packed: Artifact, model: BertForMaskedLM, device: torch.device
) -> Callable[[], dict[str, float]] | None:
    """evaluate() for fit: MLM loss/accuracy/perplexity on fixed validation masks (None if no rows).

    The validation source is seeded like training but its batches are always steps 0..n-1, so
    every evaluation scores the same rows under the same masks and the curve is comparable.
    """
    validation = PackedSequences(packed.dir, "validation")
    if len(validation) == 0:
        log.warning("pretrain: %s has no validation rows; skipping validation", packed.dir)
        return None
    source = MLMBatchSource(validation, cfg.batch_size, cfg.seed, cfg.mask_rate)
    num_batches = min(cfg.eval_batches, math.ceil(len(validation) / cfg.batch_size))

    def evaluate() -> dict[str, float]:
        return evaluate_mlm(model, (source.batch(i) for i in range(num_batches)), device)

    return evaluate


def pick_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            "PretrainConfig.device='cuda' but no CUDA device is available (use 'auto' or 'cpu')"
        )
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


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
    return {
        "final_loss": result.metrics.get("loss"),
        "val_loss": result.eval.get("val_loss"),
        "val_mlm_accuracy": result.eval.get("val_mlm_accuracy"),
        "val_perplexity": result.eval.get("val_perplexity"),
        "steps": result.steps,
        "tokens": result.tokens,
        "seconds": round(result.seconds, 3),
        "stopped_early": result.stopped_early,
        "num_parameters": num_parameters,
    }


def write_checkpoint(
    out: Path, model: BertForMaskedLM, cfg: PretrainConfig, tokenizer: Artifact, summary: dict
) -> None:
    """model.safetensors + config.json + tokenizer files + metrics.json: a self-contained checkpoint dir."""
    save_checkpoint(out, model, extra_config={"pretrain": cfg.model_dump(mode="json")})
    for name in TOKENIZER_FILES:
        if tokenizer.file(name).is_file():
            shutil.copy2(tokenizer.file(name), out / name)
        else:
            log.warning("pretrain: tokenizer artifact has no %s; the checkpoint will lack it", name)
    (out / "metrics.json").write_text(json.dumps(summary, indent=2, sort_keys=True))


@task(name="pretrain", cache_policy=NO_CACHE)
def pretrain_task(cfg: PretrainConfig, packed: Artifact, tokenizer: Artifact, ctx: StageContext) -> Artifact:
    return run_tracked(
        ctx,
        STAGE,
        cfg,
        [packed, tokenizer],
        lambda sink, run_id: pretrain(cfg, packed, tokenizer, workdir=ctx.path, sink=sink, run_id=run_id),
        files=["config.json", "metrics.json", "model.safetensors", "tokenizer.json"],
    )
