"""What pre-training trains: the objective's model, its loss, and its deterministic batches.

Each pre-training objective (MLM and its masking variants, sentence-pair MLM, ELECTRA, and
T5's span corruption) is a (model, objective, batch source) triple built from the
``PretrainConfig``; the one loop (``tasks.engine.loop.fit``) trains any of them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import torch
from tokenizers import Tokenizer

from models.pretraining import BertForMaskedLM, BertForPreTraining, ElectraForPreTraining, generator_config
from models.t5 import T5ForConditionalGeneration
from tasks.engine.data import MLMBatchSource, PackedSequences, PairBatchSource
from tasks.engine.masking import continuation_lookup
from tasks.engine.objectives import ElectraObjective, MLMObjective, PairObjective, SpanCorruptionObjective
from tasks.engine.span_corruption import SpanBatchSource
from tasks.store.artifact import Artifact
from tasks.train.pretrain_config import PretrainConfig

log = logging.getLogger(__name__)

PretrainingModel = BertForMaskedLM | ElectraForPreTraining | T5ForConditionalGeneration
Objective = MLMObjective | PairObjective | ElectraObjective | SpanCorruptionObjective
BatchSource = MLMBatchSource | SpanBatchSource


def build_model(cfg: PretrainConfig, train: PackedSequences) -> PretrainingModel:
    """The objective's model, seeded on a forked RNG (the caller's global RNG is left alone)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return new_model(cfg, train)


def new_model(cfg: PretrainConfig, train: PackedSequences) -> PretrainingModel:
    """The family's and objective's model on the packed data's vocabulary and special ids."""
    special = train.special_ids
    if cfg.family == "t5":
        t5 = cfg.t5.t5_config(vocab_size=train.vocab_size, pad_id=special["pad_id"], eos_id=special["eos_id"])
        return T5ForConditionalGeneration(t5)
    encoder = cfg.shape.encoder_config(
        vocab_size=train.vocab_size, seq_len=train.seq_len, pad_id=special["pad_id"], sep_id=special["sep_id"]
    )
    if cfg.objective == "electra":
        return ElectraForPreTraining(encoder, generator_config(encoder, cfg.generator_ratio))
    if cfg.objective in ("mlm+sop", "mlm+nsp"):
        return BertForPreTraining(encoder)
    return BertForMaskedLM(encoder)


def build_objective(cfg: PretrainConfig) -> Objective:
    if cfg.objective == "span_corruption":
        return SpanCorruptionObjective()
    if cfg.objective == "electra":
        return ElectraObjective(cfg.electra_weight)
    if cfg.objective in ("mlm+sop", "mlm+nsp"):
        return PairObjective(cfg.objective.removeprefix("mlm+"))
    return MLMObjective()


def batch_source(
    cfg: PretrainConfig, split: PackedSequences, tokenizer: Artifact, seed: int | None = None
) -> BatchSource:
    """The objective's deterministic batch source over ``split``."""
    seed = cfg.seed if seed is None else seed
    if cfg.objective == "span_corruption":
        return SpanBatchSource(split, cfg.batch_size, seed, cfg.noise_density, cfg.mean_span_length)
    strategy = {"wwm": "word", "span": "span"}.get(cfg.objective, "token")
    common: dict[str, Any] = {
        "mask_rate": cfg.mask_rate,
        "strategy": strategy,
        "is_continuation": word_continuations(tokenizer, split.vocab_size) if strategy != "token" else None,
        "span_p": cfg.span_p,
        "span_max": cfg.span_max,
        "with_doc_ids": cfg.shape.doc_attention,
    }
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


def validation_evaluator(
    cfg: PretrainConfig,
    packed: Artifact,
    tokenizer: Artifact,
    model: PretrainingModel,
    objective: Objective,
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
