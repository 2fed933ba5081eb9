"""Export a bertflow checkpoint as a Hugging Face ``transformers`` BERT (or T5) directory.

A T5 checkpoint (``t5``) becomes one ``T5ForConditionalGeneration`` directory: the two models
compute the same function, so its weights are renamed (``export_t5``). The rest of this
docstring is about BERT.

What maps, and why: our encoder with ``norm="post"``, ``positions="learned"``,
``ffn="gelu"``, ``bias=True`` and no ``doc_attention`` is exactly the original BERT
layer (LN(x + attn(x)), LN(x + ffn(x)), exact-erf GELU, learned absolute positions,
token types, LayerNorm after the embeddings), so its weights are renamed into
``BertModel``'s names and nothing is approximated:

- pre-training checkpoint (``bert_mlm`` / ``bert_pretraining``) -> ``BertForMaskedLM``
  (MLM transform + tied decoder + output bias; an NSP/SOP pair head is dropped);
- fine-tuned checkpoint (``bert_multitask``) -> one ``BertForSequenceClassification``
  per classification / regression head (``<out>/<TASK>/``; regression as
  ``num_labels=1``, ``problem_type="regression"``), ``BertForQuestionAnswering``
  for a span head and ``BertForTokenClassification`` for a tagging (NER) head, with its
  tag names as ``id2label``; each carries the shared encoder and its own head's pooler.

What does not map (export refuses with the reason, before writing anything): pre-LN (HF
BERT has no pre-LN variant; the final LayerNorm has no slot), rotary or sinusoidal
positions, GEGLU FFNs, bias-free layers, document-block attention, ELECTRA checkpoints,
and mean-pooled sentence heads (``BertForSequenceClassification`` pools [CLS]; its pooler
cannot average tokens, so the logits would differ).

"Exact" is tested per head kind: the exported model's logits equal ours within 1e-5
(span heads on the non-padding positions: ours pins padding logits to a large negative
value, transformers leaves them raw, and neither can answer there).

Output is written to a temporary sibling of ``out`` and renamed into place; an existing
``out`` is replaced only if an earlier export created it.

The tokenizer files of the checkpoint (tokenizer.json, vocab.txt, tokenizer_config.json,
special_tokens_map.json) are copied next to the weights, so ``AutoTokenizer`` loads them.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path

from safetensors.torch import save_file
from torch import Tensor

from models.config import EncoderConfig
from models.io import read_config, read_weights
from models.t5_config import T5Config
from registry.download import download_model, is_mlflow_uri
from tasks.commands.export_t5 import hf_t5_config, t5_weights
from tasks.data.tokenizer import TOKENIZER_FILES
from tasks.downstream.tasks import TASKS
from tasks.store.ownership import check_replaceable, mark_owned, remove_owned

log = logging.getLogger(__name__)

HF_WEIGHTS = "model.safetensors"


class ExportError(ValueError):
    """A checkpoint whose architecture has no exact ``transformers`` equivalent."""


def check_exportable(cfg: EncoderConfig, where: Path) -> None:
    """Raise naming every field that keeps ``cfg`` from being a plain HF BERT."""
    wanted = {"norm": "post", "positions": "learned", "ffn": "gelu", "bias": True, "doc_attention": False}
    bad = [f"{k}={getattr(cfg, k)!r} (needs {v!r})" for k, v in wanted.items() if getattr(cfg, k) != v]
    if bad:
        raise ExportError(
            f"{where}: cannot export to transformers BERT: {', '.join(bad)}. Only post-LN, learned "
            "positions, GELU FFN, biased layers without document attention map exactly."
        )


def hf_bert_config(cfg: EncoderConfig, **extra: object) -> dict[str, object]:
    """transformers BertConfig fields for ``cfg`` (plus architecture/head fields in ``extra``)."""
    return {
        "model_type": "bert",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "intermediate_size": cfg.intermediate_size,
        "hidden_act": "gelu",  # exact erf GELU, as F.gelu
        "hidden_dropout_prob": cfg.dropout,
        "attention_probs_dropout_prob": cfg.attention_dropout,
        "max_position_embeddings": cfg.max_position,
        "type_vocab_size": cfg.type_vocab_size,
        "layer_norm_eps": cfg.layer_norm_eps,
        "pad_token_id": cfg.pad_id,
        "position_embedding_type": "absolute",
        "tie_word_embeddings": True,
        **extra,
    }


def encoder_weights(state: Mapping[str, Tensor], cfg: EncoderConfig, src: str, dst: str) -> dict[str, Tensor]:
    """Our ``<src>`` encoder weights under HF names ``<dst>`` (e.g. ``bert.``); fused qkv is split."""
    H = cfg.hidden_size
    out = {
        f"{dst}embeddings.word_embeddings.weight": state[f"{src}embeddings.word.weight"],
        f"{dst}embeddings.position_embeddings.weight": state[f"{src}embeddings.position.weight"],
        f"{dst}embeddings.token_type_embeddings.weight": state[f"{src}embeddings.token_type.weight"],
        f"{dst}embeddings.LayerNorm.weight": state[f"{src}embeddings.norm.weight"],
        f"{dst}embeddings.LayerNorm.bias": state[f"{src}embeddings.norm.bias"],
    }
    for i in range(cfg.num_layers):
        ours, theirs = f"{src}layers.{i}.", f"{dst}encoder.layer.{i}."
        for part in ("weight", "bias"):
            q, k, v = state[f"{ours}attention.qkv.{part}"].split(H, dim=0)  # (3H, ...) -> 3 x (H, ...)
            out[f"{theirs}attention.self.query.{part}"] = q
            out[f"{theirs}attention.self.key.{part}"] = k
            out[f"{theirs}attention.self.value.{part}"] = v
            out[f"{theirs}attention.output.dense.{part}"] = state[f"{ours}attention.out.{part}"]
            out[f"{theirs}attention.output.LayerNorm.{part}"] = state[f"{ours}attention_norm.{part}"]
            out[f"{theirs}intermediate.dense.{part}"] = state[f"{ours}ffn.up.{part}"]
            out[f"{theirs}output.dense.{part}"] = state[f"{ours}ffn.down.{part}"]
            out[f"{theirs}output.LayerNorm.{part}"] = state[f"{ours}ffn_norm.{part}"]
    return out


def mlm_weights(state: Mapping[str, Tensor], cfg: EncoderConfig) -> dict[str, Tensor]:
    """BertForMaskedLM: encoder + ``cls.predictions`` (transform, tied decoder, output bias)."""
    out = encoder_weights(state, cfg, "encoder.", "bert.")
    for part in ("weight", "bias"):
        out[f"cls.predictions.transform.dense.{part}"] = state[f"mlm_head.dense.{part}"]
        out[f"cls.predictions.transform.LayerNorm.{part}"] = state[f"mlm_head.norm.{part}"]
    out["cls.predictions.bias"] = state["mlm_head.bias"]
    out["cls.predictions.decoder.weight"] = state["encoder.embeddings.word.weight"]  # tied
    out["cls.predictions.decoder.bias"] = state["mlm_head.bias"]
    return out


def head_weights(state: Mapping[str, Tensor], cfg: EncoderConfig, task: str, kind: str) -> dict[str, Tensor]:
    """One task head of a multi-task model as a BertFor... model (sequence / QA / token classification)."""
    out = encoder_weights(state, cfg, "encoder.", "bert.")
    head = f"heads.{task}."
    if kind == "span":
        for part in ("weight", "bias"):
            out[f"qa_outputs.{part}"] = state[f"{head}qa.{part}"]
        return out
    if kind == "token":  # no pooler: BertForTokenClassification reads every position
        for part in ("weight", "bias"):
            out[f"classifier.{part}"] = state[f"{head}classifier.{part}"]
        return out
    layer = "classifier" if kind == "classification" else "regressor"
    for part in ("weight", "bias"):
        out[f"bert.pooler.dense.{part}"] = state[f"{head}pooler.dense.{part}"]
        out[f"classifier.{part}"] = state[f"{head}{layer}.{part}"]
    return out


def write_hf_dir(out: Path, weights: Mapping[str, Tensor], config: Mapping[str, object], src: Path) -> None:
    """config.json + model.safetensors (contiguous copies: safetensors refuses shared storage) + tokenizer."""
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().clone().contiguous() for k, v in weights.items()}
    save_file(tensors, str(out / HF_WEIGHTS), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(dict(config), indent=2, sort_keys=True))
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, out / name)
        else:
            log.warning("export: %s has no %s; the exported directory lacks it", src, name)


def check_heads(heads: Mapping[str, dict], where: Path) -> None:
    """Raise naming every head whose pooling transformers cannot reproduce."""
    sentence_level = ("classification", "regression")  # span and token heads pool nothing
    pooled = [t for t, s in heads.items() if s["kind"] in sentence_level and s.get("pooling") == "mean"]
    if pooled:
        raise ExportError(
            f"{where}: cannot export exactly: head(s) {', '.join(pooled)} pool the mean of the tokens, "
            "but transformers' BertForSequenceClassification pools [CLS]; fine-tune with "
            "finetune.pooling='cls' for an exportable model"
        )


def export_checkpoint(checkpoint: Path, out: Path) -> list[Path]:
    """Write the HF directories for ``checkpoint``; returns them (one, or one per task head)."""
    config = read_config(checkpoint)
    if config["model_type"] == "t5":
        t5 = T5Config.from_dict(config["t5"])
        weights = t5_weights(read_weights(checkpoint), t5)
        return [replace_dir(out, lambda tmp: write_hf_dir(tmp, weights, hf_t5_config(t5), checkpoint))]
    cfg = EncoderConfig.from_dict(config["encoder"])
    check_exportable(cfg, checkpoint)
    kind = config["model_type"]
    if kind not in ("bert_mlm", "bert_pretraining", "bert_multitask"):
        raise ExportError(f"{checkpoint}: model_type {kind!r} has no transformers BERT equivalent")
    heads = config.get("heads", {})
    check_heads(heads, checkpoint)
    state = read_weights(checkpoint)

    def fill(tmp: Path) -> None:
        if kind == "bert_multitask":
            for task, spec in heads.items():
                export_head(checkpoint, tmp / task, state, cfg, task, spec)
        else:
            config = hf_bert_config(cfg, architectures=["BertForMaskedLM"])
            write_hf_dir(tmp, mlm_weights(state, cfg), config, checkpoint)

    replace_dir(out, fill)
    return [out / task for task in heads] if kind == "bert_multitask" else [out]


def replace_dir(out: Path, fill: Callable[[Path], None]) -> Path:
    """Build ``out`` in a temporary sibling with ``fill``, then rename it into place (an earlier
    export's ``out`` is removed first); a failure leaves nothing behind. An ``out`` that
    bertflow did not create is refused before anything is written."""
    check_replaceable(out)
    tmp = out.parent / f".tmp-{out.name}-{uuid.uuid4().hex[:8]}"
    mark_owned(tmp, "export")
    try:
        fill(tmp)
        remove_owned(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def export_head(
    checkpoint: Path, out: Path, state: Mapping[str, Tensor], cfg: EncoderConfig, task: str, spec: dict
) -> Path:
    kind = spec["kind"]
    if kind == "span":
        extra: dict[str, object] = {"architectures": ["BertForQuestionAnswering"]}
    elif kind == "token":
        tags = tag_names(task, spec["num_labels"])
        extra = {
            "architectures": ["BertForTokenClassification"],
            "num_labels": spec["num_labels"],
            "id2label": dict(enumerate(tags)),
            "label2id": {tag: i for i, tag in enumerate(tags)},
        }
    elif kind == "regression":
        extra = {
            "architectures": ["BertForSequenceClassification"],
            "num_labels": 1,
            "problem_type": "regression",
        }
    else:
        extra = {
            "architectures": ["BertForSequenceClassification"],
            "num_labels": spec["num_labels"],
            "problem_type": "single_label_classification",
        }
    write_hf_dir(out, head_weights(state, cfg, task, kind), hf_bert_config(cfg, **extra), checkpoint)
    return out


def tag_names(task: str, num_labels: int) -> list[str]:
    """The registry's tag names of a tagging task, or LABEL_i when the task is not registered."""
    spec = TASKS.get(task)
    if spec is not None and len(spec.labels) == num_labels:
        return list(spec.labels)
    return [f"LABEL_{i}" for i in range(num_labels)]


def export_model(source: str, out: Path, tracking_uri: str | None) -> list[Path]:
    """Export a local checkpoint dir or an MLflow ``models:/`` / ``runs:/`` URI into ``out``."""
    if not is_mlflow_uri(source):
        return export_checkpoint(Path(source), out)
    if tracking_uri is None:
        raise ExportError(f"{source!r} is an MLflow URI: give the tracking URI it lives in")
    with tempfile.TemporaryDirectory(prefix="bertflow-export-") as tmp:
        local = download_model(source, tracking_uri, Path(tmp))
        return export_checkpoint(local, out)
