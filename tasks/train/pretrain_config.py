"""PretrainConfig: what pre-training trains (family, objective, shape) and how (the shared TrainSettings).

``family`` picks the model: ``bert`` (an encoder, ``shape``, one of the MLM-family objectives)
or ``t5`` (an encoder-decoder, ``t5``, span corruption). The objective defaults to the family's
own; a combination the family cannot train is an error at load time.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tasks.engine.device import DeviceChoice
from tasks.engine.settings import TrainSettings, with_defaults
from tasks.train.shape import EncoderShape, T5Shape

ObjectiveName = Literal["mlm", "wwm", "span", "mlm+sop", "mlm+nsp", "electra", "span_corruption"]
FAMILY_OBJECTIVE = {"bert": "mlm", "t5": "span_corruption"}  # the default objective of each family
# pre-training's own recipe on top of TrainSettings' generic defaults
TRAIN_DEFAULTS = {"lr": 5e-4, "warmup_ratio": 0.06, "eval_every": 200, "checkpoint_every": 200}


class PretrainConfig(BaseModel):
    """Pre-training settings: objective and data, ``shape`` (the encoder), ``train`` (the loop)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    family: Literal["bert", "t5"] = Field("bert", description="bert (encoder) or t5 (encoder-decoder).")
    shape: EncoderShape = Field(default_factory=EncoderShape, description="bert: the encoder's architecture.")
    t5: T5Shape = Field(default_factory=T5Shape, description="t5: the encoder-decoder's architecture.")
    train: TrainSettings = Field(
        default_factory=lambda: TrainSettings(**TRAIN_DEFAULTS), description="Optimiser, schedule, budget."
    )
    objective: ObjectiveName = Field(
        "mlm",
        description="bert: mlm | wwm (whole words) | span (SpanBERT) | mlm+sop (ALBERT) | mlm+nsp (BERT) | "
        "electra; t5: span_corruption (the default of family t5)",
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
    noise_density: float = Field(
        0.15, gt=0.0, lt=1.0, description="span_corruption: fraction of tokens dropped into spans (T5: 0.15)."
    )
    mean_span_length: float = Field(
        3.0, ge=1.0, le=64.0, description="span_corruption: mean length of a dropped span (T5: 3)."
    )
    batch_size: int = Field(32, ge=1, le=65536, description="Packed rows per micro-batch (per device).")
    eval_batches: int = Field(
        20, ge=1, le=100000, description="Validation batches per evaluation (at most 1 pass)."
    )
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Seeds init, data order, masks and dropout.")
    device: DeviceChoice = Field("auto", description="auto: CUDA when available, else CPU.")
    devices: int = Field(
        1,
        ge=1,
        le=64,
        description="Processes on this node; > 1 relaunches under torchrun with DDP: one per GPU (device "
        "auto/cuda, NCCL), or with device='cpu' that many CPU processes (gloo).",
    )

    @model_validator(mode="before")
    @classmethod
    def _train_defaults(cls, data: Any) -> Any:
        data = with_defaults(data, TRAIN_DEFAULTS)
        if isinstance(data, dict) and "objective" not in data and data.get("family") in FAMILY_OBJECTIVE:
            data = {**data, "objective": FAMILY_OBJECTIVE[data["family"]]}
        return data

    @model_validator(mode="after")
    def _compatible(self) -> PretrainConfig:
        if (self.family == "t5") != (self.objective == "span_corruption"):
            raise ValueError(
                f"PretrainConfig: family {self.family!r} cannot train objective {self.objective!r} "
                "(span_corruption is T5's objective and T5 trains only it)"
            )
        if self.shape.doc_attention and self.objective in ("mlm+sop", "mlm+nsp"):
            raise ValueError(
                "PretrainConfig: doc_attention cuts attention at every [SEP], but sentence-pair objectives "
                f"({self.objective}) need A and B to see each other; turn one of them off"
            )
        return self
