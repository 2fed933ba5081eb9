"""Pre-training stage on a tiny packed corpus built in the test (tokenizer trained in-test too)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from configs import pretrain_cfg, updated
from safetensors.torch import load_file
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

from models.io import load_pretraining, read_config
from models.pretraining import BertForMaskedLM
from tasks.engine.data import PackedSequences
from tasks.sink import MemorySink
from tasks.store.artifact import Artifact
from tasks.train.pretrain import pretrain
from tasks.train.pretrain_config import PretrainConfig
from tasks.train.recipe import batch_source

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
SEQ_LEN = 32


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: see conftest


def corpus(n: int, seed: int) -> list[str]:
    """Templated sentences: learnable structure, so MLM loss has somewhere to fall."""
    rng = np.random.default_rng(seed)
    subjects, verbs, objects = (
        ["the cat", "a dog", "my bird", "the fox"],
        ["sees", "eats", "likes"],
        ["fish", "seeds"],
    )
    colours = ["red", "blue"]
    return [
        f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)} . it is {rng.choice(colours)} ."
        for _ in range(n)
    ]


def write_tokenizer(dir: Path, texts: list[str]) -> Tokenizer:
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=80, special_tokens=SPECIALS))
    dir.mkdir(parents=True)
    tok.save(str(dir / "tokenizer.json"))
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    (dir / "vocab.txt").write_text("".join(f"{token}\n" for token, _ in vocab))
    (dir / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True, "model_max_length": 512}))
    (dir / "special_tokens_map.json").write_text(json.dumps({"pad_token": "[PAD]", "mask_token": "[MASK]"}))
    return tok


def pack_rows(tok: Tokenizer, texts: list[str]) -> np.ndarray:
    """Greedy packing: [CLS] doc [SEP] doc [SEP] ... [PAD]*, one row per SEQ_LEN tokens."""
    rows, row = [], [2]
    for enc in tok.encode_batch(texts, add_special_tokens=False):
        doc = [*enc.ids, 3]
        if len(row) + len(doc) > SEQ_LEN:
            rows.append(row + [0] * (SEQ_LEN - len(row)))
            row = [2]
        row += doc
    rows.append(row + [0] * (SEQ_LEN - len(row)))
    return np.array(rows, dtype=np.uint16)


def write_pack(dir: Path, tok: Tokenizer, vocab_size: int | None = None) -> None:
    dir.mkdir(parents=True)
    splits = {"train": pack_rows(tok, corpus(400, seed=0)), "validation": pack_rows(tok, corpus(60, seed=1))}
    for name, rows in splits.items():
        rows.tofile(dir / f"{name}.bin")
    meta = {"dtype": "uint16", "seq_len": SEQ_LEN, "vocab_size": vocab_size or tok.get_vocab_size()}
    meta |= {"pad_id": 0, "unk_id": 1, "cls_id": 2, "sep_id": 3, "mask_id": 4}
    meta["splits"] = {name: len(rows) for name, rows in splits.items()}
    (dir / "pack.json").write_text(json.dumps(meta))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Artifact, Artifact]:
    return write_inputs(tmp_path_factory.mktemp("pretrain-inputs"))


def write_inputs(root: Path) -> tuple[Artifact, Artifact]:
    """(packed, tokenizer) artifacts of the templated corpus under ``root``."""
    tok = write_tokenizer(root / "tokenizer", corpus(200, seed=2))
    write_pack(root / "packed", tok)
    return (
        Artifact(stage="pack", fingerprint="pack0", path=str(root / "packed")),
        Artifact(stage="tokenizer", fingerprint="tok0", path=str(root / "tokenizer")),
    )


CFG = pretrain_cfg(
    hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, batch_size=16, lr=5e-3,
    max_steps=60, eval_every=20, eval_batches=2, checkpoint_every=20, log_every=10, device="cpu",
)  # fmt: skip


@pytest.fixture(scope="module")
def finished(inputs: tuple[Artifact, Artifact], tmp_path_factory: pytest.TempPathFactory):
    workdir = tmp_path_factory.mktemp("pretrain-run")
    sink = MemorySink()
    return pretrain(CFG, *inputs, workdir=workdir, sink=sink), sink, workdir


def test_pretraining_lowers_the_loss(finished, inputs: tuple[Artifact, Artifact]) -> None:
    artifact, sink, _ = finished
    losses = [v for _, v in sink.series("loss")]
    val = sink.series("val_loss")
    assert len(losses) == 6 and losses[-1] < losses[0] - 1.0
    assert [s for s, _ in val] == [20, 40, 60] and val[-1][1] < val[0][1]
    summary = artifact.summary
    assert summary["steps"] == 60 and summary["final_loss"] == losses[-1]
    assert summary["val_loss"] == val[-1][1]
    assert summary["val_perplexity"] == pytest.approx(math.exp(summary["val_loss"]))
    # tokens: the non-pad tokens of the 60 x 16 rows the batches took, counted on the raw packed rows
    packed, tokenizer = inputs
    rows = np.fromfile(packed.dir / "train.bin", dtype=np.uint16).reshape(-1, SEQ_LEN)
    source = batch_source(CFG, PackedSequences(packed.dir, "train"), tokenizer)
    assert summary["tokens"] == sum(int((rows[source.row_indices(step)] != 0).sum()) for step in range(60))
    # the templated corpus is learnable: far above always guessing the validation targets' commonest token
    validation = batch_source(CFG, PackedSequences(packed.dir, "validation"), tokenizer)
    targets = [t for i in range(2) for t in validation.batch(i)["labels"].flatten().tolist() if t != -100]
    majority = max(targets.count(t) for t in set(targets)) / len(targets)  # 0.21
    assert summary["val_mlm_accuracy"] > majority + 0.3, (summary["val_mlm_accuracy"], majority)


def test_output_is_a_self_contained_checkpoint_dir(finished) -> None:
    artifact, _, workdir = finished
    names = {p.name for p in artifact.dir.iterdir()}
    expected = {"model.safetensors", "config.json", "metrics.json", "tokenizer.json", "vocab.txt"}
    assert expected | {"tokenizer_config.json", "special_tokens_map.json"} <= names
    model = load_pretraining(artifact.dir)
    assert (
        model.cfg.hidden_size == 32
        and model.cfg.vocab_size == Tokenizer.from_file(str(artifact.file("tokenizer.json"))).get_vocab_size()
    )
    assert read_config(artifact.dir)["pretrain"]["train"]["max_steps"] == 60
    assert json.loads(artifact.file("metrics.json").read_text()) == artifact.summary
    assert not list(Path(workdir, ".scratch").glob("pretrain-*"))  # resumable state removed when done


def test_finished_stage_is_reused(finished, inputs: tuple[Artifact, Artifact]) -> None:
    artifact, _, workdir = finished
    again = pretrain(CFG, *inputs, workdir=workdir, sink=MemorySink())
    assert again.cached and again.path == artifact.path


class KillAt(MemorySink):
    """Dies like a killed process when a given step is logged."""

    def __init__(self, step: int) -> None:
        super().__init__()
        self.step = step

    def log_metrics(self, metrics, step: int) -> None:
        if step == self.step:
            raise KeyboardInterrupt("simulated kill")
        super().log_metrics(metrics, step)


def test_killed_stage_resumes_to_the_same_weights(finished, inputs, tmp_path: Path) -> None:
    artifact, _, _ = finished
    with pytest.raises(KeyboardInterrupt, match="simulated kill"):
        pretrain(CFG, *inputs, workdir=tmp_path, sink=KillAt(30))  # after the step-20 checkpoint
    assert len(list((tmp_path / ".scratch").glob("pretrain-*"))) == 1
    sink = MemorySink()
    resumed = pretrain(CFG, *inputs, workdir=tmp_path, sink=sink)
    assert sink.series("loss")[0][0] == 30  # continued from step 20, not from scratch
    a, b = (
        load_file(str(artifact.file("model.safetensors"))),
        load_file(str(resumed.file("model.safetensors"))),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_vocabulary_mismatch_is_rejected(inputs: tuple[Artifact, Artifact], tmp_path: Path) -> None:
    _, tokenizer = inputs
    write_pack(
        tmp_path / "packed", Tokenizer.from_file(str(tokenizer.file("tokenizer.json"))), vocab_size=500
    )
    packed = Artifact(stage="pack", fingerprint="bad", path=str(tmp_path / "packed"))
    with pytest.raises(ValueError, match="vocab_size=500"):
        pretrain(CFG, packed, tokenizer, workdir=tmp_path, sink=MemorySink())


def test_config_is_strict() -> None:
    with pytest.raises(ValueError, match="extra"):
        PretrainConfig(hidden=3)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="size"):
        pretrain_cfg(size="giant")  # type: ignore[arg-type]


# ---- objectives, options, budgets and a real SIGKILL ------------------------------------------

import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from models.pretraining import BertForPreTraining, ElectraForPreTraining  # noqa: E402

QUICK = updated(CFG, **{"max_steps": 6, "eval_every": 0, "checkpoint_every": 0, "log_every": 3})


@pytest.mark.parametrize(
    ("update", "model_type", "val_key"),
    [
        ({"objective": "wwm", "mask_rate": 0.3}, BertForMaskedLM, "val_mlm_accuracy"),
        (
            {"objective": "span", "positions": "rotary", "ffn": "geglu", "bias": False},
            BertForMaskedLM,
            "val_loss",
        ),
        (
            {"objective": "mlm", "doc_attention": True, "optimizer": "lamb", "lr": 1e-2},
            BertForMaskedLM,
            "val_loss",
        ),
        ({"objective": "mlm+sop"}, BertForPreTraining, "val_sop_accuracy"),
        ({"objective": "mlm+nsp", "norm": "pre"}, BertForPreTraining, "val_nsp_accuracy"),
        ({"objective": "electra", "generator_ratio": 0.5}, ElectraForPreTraining, "val_disc_accuracy"),
    ],
)
def test_every_objective_runs_through_the_stage(update, model_type, val_key, inputs, tmp_path: Path) -> None:
    cfg = updated(QUICK, **update)
    artifact = pretrain(cfg, *inputs, workdir=tmp_path, sink=MemorySink())
    model = load_pretraining(artifact.dir)
    assert type(model) is model_type and artifact.summary["steps"] == 6
    # the options reached the saved model
    model_options = {"positions", "ffn", "bias", "doc_attention", "norm"} & set(update)
    assert {k: getattr(model.cfg, k) for k in model_options} == {k: update[k] for k in model_options}
    generator = getattr(model, "generator", None)  # ELECTRA's, at generator_ratio 0.5 of the width 32
    generator_width = generator.cfg.hidden_size if generator is not None else None
    assert generator_width == (16 if "generator_ratio" in update else None)
    # the objective's own validation figures, and exactly those
    val_keys = {k for k, v in artifact.summary.items() if k.startswith("val_") and v is not None}
    assert val_keys == {"val_loss", "val_mlm_accuracy", "val_perplexity"} | {val_key}
    # six steps already beat the uniform guess over the vocabulary (ln V = 4.28; untrained ~4.25-4.31)
    vocab = Tokenizer.from_file(str(inputs[1].file("tokenizer.json"))).get_vocab_size()
    assert artifact.summary["val_loss"] < math.log(vocab) - 0.1
    assert artifact.summary["tokens_per_s"] > 0 and artifact.summary["mfu"] > 0  # carried from fit()


def test_token_budget_ends_the_stage_early(inputs, tmp_path: Path) -> None:
    cfg = updated(QUICK, **{"max_steps": 1000, "max_tokens": 2000, "calibration_steps": 2})
    artifact = pretrain(cfg, *inputs, workdir=tmp_path, sink=MemorySink())
    assert artifact.summary["stop_reason"] == "tokens" and artifact.summary["stopped_early"]
    assert 2000 <= artifact.summary["tokens"] < 2000 + 16 * SEQ_LEN  # stops within the step crossing it


def test_config_rejects_incompatible_options() -> None:
    with pytest.raises(ValueError, match="doc_attention"):
        pretrain_cfg(objective="mlm+sop", doc_attention=True)
    with pytest.raises(ValueError, match="mask_rate"):
        PretrainConfig(mask_rate=0.6)
    assert PretrainConfig(devices=2, device="cpu").devices == 2  # two gloo processes (tests/test_ddp.py)


def test_more_devices_than_gpus_is_a_clear_error(inputs, tmp_path: Path) -> None:
    if torch.cuda.is_available() and torch.cuda.device_count() >= 8:
        pytest.skip("this machine has the GPUs")
    with pytest.raises(RuntimeError, match=r"devices=8.*device='cpu'"):  # auto never means CPU processes
        pretrain(updated(QUICK, devices=8, device="auto"), *inputs, workdir=tmp_path, sink=MemorySink())


def test_torchrun_command_and_metric_relay(tmp_path: Path) -> None:
    from tasks.engine.launch import JsonlSink, relay, torchrun_command

    command = torchrun_command("tasks.train.pretrain", ["--launch-spec", "x.json"], 4)
    assert command[1:4] == ["-m", "torch.distributed.run", "--standalone"] and "--nproc-per-node=4" in command
    assert command[-3:] == ["tasks.train.pretrain", "--launch-spec", "x.json"]
    rendezvous = {"PET_RDZV_ENDPOINT": "node0:29400", "PET_NNODES": "2"}  # torchrun reads them itself
    multi = torchrun_command("tasks.train.pretrain", ["--launch-spec", "x.json"], 4, rendezvous)
    assert "--standalone" not in multi and multi == [c for c in command if c != "--standalone"]
    writer, received = JsonlSink(tmp_path / "m.jsonl"), MemorySink()
    writer.log_metrics({"loss": 2.5}, 10)
    offset = relay(writer.path, 0, received)
    writer.progress(10, 20)
    relay(writer.path, offset, received)
    assert received.history == [(10, {"loss": 2.5})] and received.last_progress == (10, 20)


CHILD = """
import sys, time
import torch
from pathlib import Path
from tasks.store.artifact import Artifact
from tasks.sink import MemorySink
from tasks.train.pretrain import pretrain
from tasks.train.pretrain_config import PretrainConfig
torch.set_num_threads(1)
class Slow(MemorySink):
    def log_metrics(self, metrics, step):
        time.sleep(float(sys.argv[5]))
cfg = PretrainConfig.model_validate_json(sys.argv[1])
packed = Artifact(stage="pack", fingerprint="pack0", path=sys.argv[2])
tok = Artifact(stage="tokenizer", fingerprint="tok0", path=sys.argv[3])
pretrain(cfg, packed, tok, workdir=Path(sys.argv[4]), sink=Slow())
"""


@pytest.mark.slow
def test_sigkill_mid_run_then_relaunch_ends_with_identical_weights(inputs, tmp_path: Path) -> None:
    """A real `kill -9` of a pre-training process after its first checkpoint (~20 s)."""
    cfg = updated(CFG, **{"max_steps": 30, "checkpoint_every": 5, "log_every": 1, "eval_every": 10})
    packed, tok = inputs

    def launch(workdir: Path, delay: float) -> subprocess.Popen:
        args = [
            sys.executable,
            "-c",
            CHILD,
            cfg.model_dump_json(),
            packed.path,
            tok.path,
            str(workdir),
            str(delay),
        ]
        return subprocess.Popen(args, cwd=Path(__file__).parents[1], env={**os.environ, "PYTHONPATH": "."})

    child = launch(tmp_path / "killed", delay=0.2)
    deadline = time.monotonic() + 120
    while not list((tmp_path / "killed" / ".scratch").glob("pretrain-*/trainer_state.pt")):
        assert child.poll() is None and time.monotonic() < deadline, "child ended before its first checkpoint"
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    assert child.wait() == -signal.SIGKILL
    (state,) = (tmp_path / "killed" / ".scratch").glob("pretrain-*/trainer_state.pt")
    assert 0 < torch.load(state, weights_only=True)["step"] < 30  # killed mid-way
    assert launch(tmp_path / "killed", delay=0.0).wait() == 0
    assert launch(tmp_path / "straight", delay=0.0).wait() == 0
    (a,), (b,) = ((tmp_path / d / "pretrain").glob("*/model.safetensors") for d in ("killed", "straight"))
    wa, wb = load_file(str(a)), load_file(str(b))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
