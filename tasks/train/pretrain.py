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
or with ``device = "cpu"`` that many gloo processes; DDP inside fit(), rank 0 writing metrics
and checkpoints); one device runs in-process through the same train_and_save(). On more than
one node the stage's torchrun joins the rendezvous torchrun's ``PET_*`` variables name, and
the other nodes run ``python -m torch.distributed.run ... -m tasks.train.pretrain --join``
(README, "Multi-process and multi-node pre-training").
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
from pathlib import Path

import torch
from tokenizers import Tokenizer

from models.io import save_checkpoint
from tasks.data.tokenizer import TOKENIZER_FILES
from tasks.engine import distributed
from tasks.engine.data import PackedSequences
from tasks.engine.device import pick_device
from tasks.engine.launch import RENDEZVOUS_ENV, JsonlSink, exit_when_orphaned, run_torchrun, torchrun_command
from tasks.engine.loop import FitResult, fit
from tasks.sink import MetricSink, NullSink
from tasks.store.artifact import Artifact
from tasks.store.stage import Job, Stage
from tasks.train.pretrain_config import PretrainConfig
from tasks.train.recipe import (
    PretrainingModel,
    batch_source,
    build_model,
    build_objective,
    validation_evaluator,
)

log = logging.getLogger(__name__)


def build_pretrain(
    cfg: PretrainConfig, packed: Artifact, tokenizer: Artifact, *, out: Path, job: Job
) -> dict:
    """Pre-train an encoder on ``packed`` into ``out``; a killed run resumes from ``job.scratch``."""
    check_devices(cfg)
    if cfg.devices > 1 or os.environ.get(RENDEZVOUS_ENV):  # several processes here, or one node of several
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
    result = fit(
        model, objective, source, cfg.train, sink, evaluate, checkpoint_dir=resume_dir, seed=cfg.seed
    )
    summary = stage_summary(result, count_parameters(model))
    if distributed.world()[0] == 0:
        write_checkpoint(out, model.cpu(), cfg, tokenizer, summary)
    return summary


def check_devices(cfg: PretrainConfig) -> None:
    """devices > 1 means GPUs unless device is 'cpu' (CPU processes); 'auto' never falls back to CPU."""
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if cfg.devices > 1 and cfg.device != "cpu" and available < cfg.devices:
        raise RuntimeError(
            f"PretrainConfig.devices={cfg.devices} but only {available} CUDA GPU(s) are visible "
            f"(device='cpu' runs {cfg.devices} CPU processes instead)"
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
    """Relaunch this module under torchrun (``devices`` ranks); relay rank 0's metrics into ``sink``."""
    resume_dir.mkdir(parents=True, exist_ok=True)
    spec = resume_dir / "launch.json"
    metrics = resume_dir / "metrics.jsonl"
    metrics.unlink(missing_ok=True)
    spec.write_text(json.dumps({
        "config": cfg.model_dump(mode="json"), "packed": packed.model_dump(mode="json"),
        "tokenizer": tokenizer.model_dump(mode="json"), "out": str(out), "resume_dir": str(resume_dir),
        "metrics": str(metrics), "launcher_pid": os.getpid(),
    }))  # fmt: skip
    command = torchrun_command("tasks.train.pretrain", ["--launch-spec", str(spec)], cfg.devices, os.environ)
    run_torchrun(command, metrics, sink)
    return json.loads((out / "metrics.json").read_text())


def worker_main(spec_path: Path | None, device_type: str | None = None) -> None:
    """One torchrun rank: join the group, train (DDP inside fit), rank 0 writes the checkpoint.

    The ranks the stage launched read ``spec_path``; a rank of another node (``spec_path`` None,
    ``--join``) gets the spec from them once the group is up. ``device_type``: the joining rank's.
    """
    local = json.loads(spec_path.read_text()) if spec_path is not None else None
    exit_when_orphaned(local["launcher_pid"] if local is not None else None)
    if local is not None:
        device_type = pick_device(local["config"]["device"]).type
    assert device_type is not None, "a joining rank needs its device type"
    device = distributed.init_from_env(device_type)
    spec: dict = distributed.first_given(local)  # type: ignore[assignment]
    cfg = PretrainConfig.model_validate(spec["config"])
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
    """Entry point of the torchrun ranks (``python -m tasks.train.pretrain --launch-spec FILE | --join``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    role = parser.add_mutually_exclusive_group(required=True)
    role.add_argument("--launch-spec", type=Path, help="launch.json written by the stage (its own node)")
    role.add_argument("--join", action="store_true", help="a rank of another node: spec from the group")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="with --join: this node's")
    logging.basicConfig(level=logging.INFO)
    args = parser.parse_args(argv)
    worker_main(args.launch_spec, None if args.launch_spec else args.device)


if __name__ == "__main__":
    main()
