"""Pre-training models: encoder + tied MLM head, optionally + a sentence-pair head, and ELECTRA."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor, nn

from models.config import EncoderConfig
from models.encoder import BertEncoder, init_bert_weights
from models.heads import ClassificationHead, MLMHead


class BertForMaskedLM(nn.Module):
    """Predicts the original token at masked positions only.

    ``masked_positions`` are flat indices into the (B*T) token grid; gathering those hidden
    states before the head means the H x V decoder runs on ~15% of tokens instead of all.
    """

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = BertEncoder(cfg)
        self.mlm_head = MLMHead(cfg)

    def forward(
        self,
        input_ids: Tensor,
        token_type_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        masked_positions: Tensor | None = None,
        doc_ids: Tensor | None = None,
    ) -> Tensor:
        hidden = self.encoder(input_ids, token_type_ids, attention_mask, doc_ids)  # (B, T, H)
        return self.mlm_logits(hidden, masked_positions)

    def mlm_logits(self, hidden: Tensor, masked_positions: Tensor | None) -> Tensor:
        flat = hidden.reshape(-1, hidden.size(-1))  # (B*T, H)
        if masked_positions is not None:
            flat = flat.index_select(0, masked_positions)  # (N, H)
        return self.mlm_head(flat, self.encoder.embeddings.word.weight)  # (N, V)


class BertForPreTraining(BertForMaskedLM):
    """MLM + a 2-way sentence-pair head on [CLS] (NSP: is B the real continuation; SOP: are A, B swapped).

    A subclass so everything that takes a BertForMaskedLM (MLM evaluation, checkpoint loading,
    fine-tuning's encoder transfer) takes this too: ``forward`` returns the MLM logits unless
    ``return_pair`` asks for (MLM logits (N, V), pair logits (B, 2)). One forward (rather than a
    second method) keeps DDP's gradient hooks on the whole step.
    """

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__(cfg)
        self.pair_head = ClassificationHead(cfg, 2)

    def forward(  # type: ignore[override]
        self,
        input_ids: Tensor,
        token_type_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        masked_positions: Tensor | None = None,
        doc_ids: Tensor | None = None,
        return_pair: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        hidden = self.encoder(input_ids, token_type_ids, attention_mask, doc_ids)  # (B, T, H)
        logits = self.mlm_logits(hidden, masked_positions)
        return (logits, self.pair_head(hidden)) if return_pair else logits


def generator_config(cfg: EncoderConfig, ratio: float) -> EncoderConfig:
    """ELECTRA's small generator: the discriminator's depth with ``ratio`` of its width and heads.

    The paper finds a generator 1/4-1/2 the discriminator's size works best: a stronger one
    makes replaced tokens too hard to spot early on.
    """
    heads = max(1, round(cfg.num_heads * ratio))
    head_dim = cfg.hidden_size // cfg.num_heads
    return replace(
        cfg,
        hidden_size=heads * head_dim,
        num_heads=heads,
        intermediate_size=max(1, round(cfg.intermediate_size * ratio)),
    )


class DiscriminatorHead(nn.Module):
    """(B, T, H) -> one "was this token replaced?" logit per token (B, T)."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.out = nn.Linear(cfg.hidden_size, 1)
        self.apply(init_bert_weights)

    def forward(self, hidden: Tensor) -> Tensor:
        return self.out(torch.nn.functional.gelu(self.dense(hidden))).squeeze(-1)


class ElectraForPreTraining(nn.Module):
    """ELECTRA (Clark et al., 2020): a small MLM generator fills the masks, the encoder spots fakes.

    ``encoder`` is the discriminator: the network fine-tuning starts from (its state-dict keys
    are ``encoder.*`` as in every other model here). The generator is a separate, smaller
    BertForMaskedLM; sampling from it happens inside ``forward`` so one call (and one DDP /
    compile boundary) covers the whole step.
    """

    def __init__(self, cfg: EncoderConfig, generator_cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.generator_cfg = generator_cfg
        self.encoder = BertEncoder(cfg)
        self.discriminator_head = DiscriminatorHead(cfg)
        self.generator = BertForMaskedLM(generator_cfg)

    def forward(
        self,
        input_ids: Tensor,
        token_type_ids: Tensor | None,
        attention_mask: Tensor | None,
        masked_positions: Tensor,
        targets: Tensor,
        doc_ids: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(generator logits (N, V), discriminator logits (B, T), replaced (B, T) bool).

        ``masked_positions`` (N,) flat indices of the masked tokens, ``targets`` (N,) their original
        ids. Those positions are refilled with tokens sampled from the generator (no gradient flows
        through sampling); ``replaced`` is True where the sample differs from the original, so a
        sample that happens to be right counts as original, as in the paper.
        """
        gen_logits = self.generator(input_ids, token_type_ids, attention_mask, masked_positions, doc_ids)
        with torch.no_grad():
            probs = torch.softmax(gen_logits.float(), dim=-1)  # (N, V)
            sampled = torch.multinomial(probs, 1).squeeze(1) if probs.size(0) else targets  # (N,)
            flat = input_ids.reshape(-1)  # (B*T,)
            corrupted = flat.index_copy(0, masked_positions, sampled).view_as(input_ids)
            replaced = torch.zeros_like(flat, dtype=torch.bool)
            replaced = replaced.index_copy(0, masked_positions, sampled != targets).view_as(input_ids)
        hidden = self.encoder(corrupted, token_type_ids, attention_mask, doc_ids)  # (B, T, H)
        return gen_logits, self.discriminator_head(hidden), replaced
