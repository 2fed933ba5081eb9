"""Evaluating a model by URI: a local checkpoint dir, and a real sqlite-backed MLflow registry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from tokenizers import Tokenizer
from word_tokenizer import word_tokenizer

from models.config import EncoderConfig
from models.heads import HeadSpec
from models.io import load_multitask, save_checkpoint
from models.multitask import MultiTaskModel
from registry.download import ModelUriError
from tasks.judge.by_uri import ModelDirError, content_fingerprint, evaluate_model_uri
from tasks.judge.evaluation import EvalConfig

WORDS = ("a", "man", "dog", "runs", "sleeps", "cat", "sat", "good", "bad")
SENTENCES = ["a man runs .", "a dog sleeps .", "good cat .", "bad dog .", "a cat sat ."]


def tiny_tokenizer() -> Tokenizer:
    return word_tokenizer([*WORDS, "."])


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, EvalConfig]:
    """A tiny SST-2 checkpoint dir and dev set."""
    root = tmp_path_factory.mktemp("uri")
    dev = root / "data" / "glue" / "SST-2" / "dev.tsv"
    dev.parent.mkdir(parents=True)
    dev.write_text("sentence\tlabel\n" + "".join(f"{s}\t{i % 2}\n" for i, s in enumerate(SENTENCES)))
    cfg = EncoderConfig(
        vocab_size=len(WORDS) + 6, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32
    )
    torch.manual_seed(0)
    save_checkpoint(root / "ckpt", MultiTaskModel(cfg, {"SST-2": HeadSpec("classification", 2)}))
    tiny_tokenizer().save(str(root / "ckpt" / "tokenizer.json"))
    return root, root / "ckpt", EvalConfig(data_dir=str(root / "data"), tasks=("SST-2",), max_seq_len=16)


def test_local_dir(setup: tuple[Path, Path, EvalConfig]) -> None:
    root, ckpt, cfg = setup
    report = evaluate_model_uri(str(ckpt), cfg, root / "work")
    assert report["model_dir"] == str(ckpt) and report["dev_examples"] == {"SST-2": {"dev.tsv": 5}}
    # the saved model run by hand on each dev sentence, scored against the labels the dev file holds
    model, tok = load_multitask(ckpt).eval(), tiny_tokenizer()
    with torch.no_grad():
        predicted = [int(model("SST-2", torch.tensor([tok.encode(s).ids])).argmax()) for s in SENTENCES]
    rows = (Path(report["report_dir"]) / "predictions" / "SST-2.jsonl").read_text().splitlines()
    assert [json.loads(r)["prediction"] for r in rows] == [str(p) for p in predicted]
    correct = sum(p == i % 2 for i, p in enumerate(predicted))
    assert report["per_task"]["SST-2"]["accuracy"] == pytest.approx(100 * correct / 5)
    assert (
        Path(report["report_dir"]).name
        == evaluate_model_uri(str(ckpt), cfg, root / "work")["report_dir"][-16:]
    )
    with pytest.raises(ModelDirError, match="not a fine-tuned model"):
        evaluate_model_uri(str(root / "data"), cfg, root / "work")
    with pytest.raises(ModelDirError, match="is not a directory"):
        evaluate_model_uri(str(root / "missing"), cfg, root / "work")


def test_content_fingerprint_ignores_manifest_but_not_weights(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    before = content_fingerprint(tmp_path)
    (tmp_path / "manifest.json").write_text('{"created": 1}')
    assert content_fingerprint(tmp_path) == before
    (tmp_path / "model.safetensors").write_bytes(b"x")
    assert content_fingerprint(tmp_path) != before


def test_mlflow_registry_alias_version_and_run(setup: tuple[Path, Path, EvalConfig]) -> None:
    root, ckpt, cfg = setup
    tracking = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=tracking, registry_uri=tracking)
    experiment = client.create_experiment("uri-test", artifact_location=(root / "artifacts").as_uri())
    run = client.create_run(experiment)
    client.log_artifacts(run.info.run_id, str(ckpt), artifact_path="model")
    client.set_terminated(run.info.run_id)
    client.create_registered_model("tiny")
    version = client.create_model_version(
        "tiny", source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id
    )
    client.set_registered_model_alias("tiny", "champion", version.version)
    local = evaluate_model_uri(str(ckpt), cfg, root / "work")
    for uri in ("models:/tiny@champion", f"models:/tiny/{version.version}", f"runs:/{run.info.run_id}/model"):
        report = evaluate_model_uri(uri, cfg, root / "work", tracking_uri=tracking)
        assert report["per_task"] == local["per_task"], uri
        assert report["report_dir"] == local["report_dir"]  # same content -> the finished report is reused
        assert Path(report["model_dir"]).parent == root / "work" / "models"
    with pytest.raises(ModelUriError, match="no version of 'tiny' holds alias 'nobody'"):
        evaluate_model_uri("models:/tiny@nobody", cfg, root / "work", tracking_uri=tracking)
    with pytest.raises(ModelUriError, match="expected models:/"):
        evaluate_model_uri("models:/tiny", cfg, root / "work", tracking_uri=tracking)
