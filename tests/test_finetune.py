"""Multi-task fine-tuning: mixing, the deterministic batch source, objectives, and a tiny end-to-end run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from configs import finetune_cfg
from tokenizers import Tokenizer
from word_tokenizer import word_tokenizer

from models.config import EncoderConfig
from models.io import load_multitask, read_weights, save_checkpoint
from models.pretraining import BertForMaskedLM
from tasks.downstream.features import SequenceFeatures
from tasks.engine.finetune_objectives import MultiTaskObjective, span_loss
from tasks.judge.evaluation import EvalConfig, evaluate_checkpoint
from tasks.sink import MemorySink
from tasks.store.artifact import Artifact
from tasks.train.finetune import finetune
from tasks.train.finetune_config import FinetuneConfig
from tasks.train.mixing import MultiTaskBatchSource, mixing_rates, padding_waste, single_task_steps

WORDS = ("good", "bad", "movie", "plot", "film", "actor", "fine", "dull", "red", "blue", "green")
WORDS += ("cat", "dog", "sat", "on", "the", "mat")


def tiny_tokenizer() -> Tokenizer:
    return word_tokenizer([*WORDS, ".", "?"])


def tiny_checkpoint(path: Path) -> Artifact:
    """A random-init 'pre-trained' checkpoint dir (weights + config + tokenizer.json) as an artifact."""
    cfg = EncoderConfig(
        vocab_size=len(WORDS) + 7,
        hidden_size=32,
        num_layers=1,
        num_heads=2,
        intermediate_size=64,
        max_position=64,
        dropout=0.0,
        attention_dropout=0.0,
    )
    torch.manual_seed(0)
    save_checkpoint(path, BertForMaskedLM(cfg))
    tiny_tokenizer().save(str(path / "tokenizer.json"))
    return Artifact(stage="pretrain", fingerprint="tiny0000", path=str(path))


def write_synthetic_tasks(data_dir: Path, n: int = 64, seed: int = 0) -> None:
    """SST-2: label = "good" in the text; STS-B: 4.0 if "good" in sentence1 else 1.0; SQuAD: the color;
    WikiANN-en: colors are B-LOC, "cat"/"dog" B-PER and a following "actor" I-PER, the rest O."""
    rng = np.random.default_rng(seed)
    filler = ["movie", "plot", "film", "actor", "fine", "dull"]
    sst, sts, qas = ["sentence\tlabel"], [], []
    for i in range(n):
        words = [*rng.choice(filler, 2), "good" if i % 2 else "bad"]
        rng.shuffle(words)
        sst.append(f"{' '.join(words)} .\t{i % 2}")
        a, b = " ".join(words), " ".join(rng.choice(filler, 3))
        sts.append(f"{i}\tg\tf\ty\t{i}\tn\tn\t{a}\t{b}\t{4.0 if i % 2 else 1.0:.3f}")
        color = str(rng.choice(["red", "blue", "green"]))
        context = f"the cat sat on the {color} mat . {' '.join(rng.choice(filler, 5))}"
        qas.append((f"q{i}", context, color))
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
    for task, lines in (("SST-2", sst), ("STS-B", [header, *sts])):
        (data_dir / "glue" / task).mkdir(parents=True, exist_ok=True)
        for split in ("train.tsv", "dev.tsv"):
            (data_dir / "glue" / task / split).write_text("\n".join(lines) + "\n")
    paragraphs = [
        {
            "context": c,
            "qas": [
                {"id": q, "question": "what color ?", "answers": [{"text": a, "answer_start": c.index(a)}]}
            ],
        }
        for q, c, a in qas
    ]
    ner = []
    for _ in range(n):
        words = [str(w) for w in rng.choice([*filler, "red", "blue", "cat", "dog"], 6)]
        tags = ["B-LOC" if w in ("red", "blue") else "B-PER" if w in ("cat", "dog") else "O" for w in words]
        tags = [
            "I-PER" if w == "actor" and t0 == "B-PER" else t
            for w, t, t0 in zip(words, tags, ["O", *tags[:-1]], strict=True)
        ]
        ner.append("".join(f"{w}\t{t}\n" for w, t in zip(words, tags, strict=True)))
    (data_dir / "ner" / "wikiann-en").mkdir(parents=True, exist_ok=True)
    for split in ("train.conll", "dev.conll"):
        (data_dir / "ner" / "wikiann-en" / split).write_text("\n".join(ner))
    (data_dir / "squad").mkdir(parents=True, exist_ok=True)
    for split in ("train.json", "dev.json"):
        (data_dir / "squad" / split).write_text(
            json.dumps({"version": "1.1", "data": [{"paragraphs": paragraphs}]})
        )


def test_mixing_rates() -> None:
    sizes = {"big": 10_000, "mid": 1_000, "small": 100}
    # proportional with cap K=2000: min(n, K) = 2000, 1000, 100 -> /3100
    rates = mixing_rates(sizes, "proportional", cap_k=2000, temperature=2.0)
    assert rates == pytest.approx({"big": 2000 / 3100, "mid": 1000 / 3100, "small": 100 / 3100})
    # temperature T=2: sqrt(2000), sqrt(1000), sqrt(100)
    temp = mixing_rates(sizes, "temperature", cap_k=2000, temperature=2.0)
    z = 2000**0.5 + 1000**0.5 + 10
    assert temp == pytest.approx({"big": 2000**0.5 / z, "mid": 1000**0.5 / z, "small": 10 / z})
    assert mixing_rates(sizes, "equal", cap_k=1, temperature=1.0) == pytest.approx(
        dict.fromkeys(sizes, 1 / 3)
    )


def _features(n: int, length_of: int) -> list[SequenceFeatures]:
    return [
        SequenceFeatures((2, *[5] * (1 + (i * length_of) % 7), 3), (0,) * (3 + (i * length_of) % 7), i % 2, i)
        for i in range(n)
    ]


def test_batch_source_is_deterministic_single_task_and_dynamically_padded() -> None:
    features = {"A": _features(30, 1), "B": _features(7, 3)}
    rates = {"A": 0.7, "B": 0.3}
    source = MultiTaskBatchSource(features, rates, batch_size=4, num_batches=200, seed=3)
    again = MultiTaskBatchSource(features, rates, batch_size=4, num_batches=200, seed=3)
    other = MultiTaskBatchSource(features, rates, batch_size=4, num_batches=200, seed=4)
    for step in (0, 17, 199):
        a, b = source.batch(step), again.batch(step)
        assert a["task"] == b["task"] and all(torch.equal(a[k], b[k]) for k in a if k != "task")
    assert [t for t, _ in source.schedule] != [t for t, _ in other.schedule]
    share_a = np.mean([t == "A" for t, _ in source.schedule])
    assert 0.6 < share_a < 0.8  # drawn at rate 0.7
    for step in range(20):
        task, indices = source.schedule[step]
        batch = source.batch(step)
        longest = max(len(features[task][i].input_ids) for i in indices)
        assert batch["input_ids"].shape == (4, longest)  # padded to this batch's longest, not a global max
        assert batch["attention_mask"].sum() == sum(len(features[task][i].input_ids) for i in indices)
    # each task walks whole epoch permutations: B's first 7 drawn indices are a permutation of 0..6
    b_stream = np.concatenate([idx for t, idx in source.schedule if t == "B"])
    assert sorted(b_stream[:7].tolist()) == list(range(7))
    with pytest.raises(IndexError, match="outside the precomputed schedule"):
        source.batch(200)


def test_group_by_length_cuts_padding_and_keeps_the_data_and_the_mixture() -> None:
    features = {"A": _features(400, 1), "B": _features(90, 3)}
    rates = {"A": 0.7, "B": 0.3}
    plain = MultiTaskBatchSource(features, rates, batch_size=8, num_batches=300, seed=5)
    grouped = MultiTaskBatchSource(
        features, rates, batch_size=8, num_batches=300, seed=5, group_by_length=True
    )
    assert [t for t, _ in plain.schedule] == [t for t, _ in grouped.schedule]  # same task at every step
    for task in features:  # the same examples, as often: only their grouping into batches differs
        seen = [np.sort(np.concatenate([i for t, i in s.schedule if t == task])) for s in (plain, grouped)]
        assert np.array_equal(*seen)
    assert padding_waste(grouped) < 0.05 < 0.25 < padding_waste(plain)


def test_span_loss_and_objective_dispatch() -> None:
    start = torch.tensor([[0.0, 10.0, 0.0]])  # (B=1, T=3), confident on position 1
    end = torch.tensor([[0.0, 0.0, 0.0]])  # uniform: CE = ln 3
    loss = span_loss(start, end, torch.tensor([1]), torch.tensor([2]))
    expected_start = -torch.log_softmax(start, -1)[0, 1]
    assert loss.item() == pytest.approx((expected_start.item() + np.log(3)) / 2, rel=1e-5)
    objective = MultiTaskObjective({"A": "classification"})
    with pytest.raises(KeyError, match="objective knows"):
        objective(torch.nn.Identity(), {"task": "B"})


def test_config_rejects_unknown_or_repeated_tasks() -> None:
    with pytest.raises(ValueError, match="unknown task"):
        finetune_cfg(data_dir="x", tasks=("SST2",))
    with pytest.raises(ValueError, match="listed twice"):
        finetune_cfg(data_dir="x", tasks=("RTE", "RTE"))


@pytest.mark.slow
def test_finetune_tiny_tasks_loss_falls(tmp_path: Path) -> None:
    write_synthetic_tasks(tmp_path / "data")
    checkpoint = tiny_checkpoint(tmp_path / "pretrained")
    cfg = finetune_cfg(
        data_dir=str(tmp_path / "data"),
        tasks=("SST-2", "STS-B", "SQuAD", "WikiANN-en"),
        batch_size=8,
        lr=1e-2,
        warmup_ratio=0.05,
        max_steps=160,
        max_seq_len=32,
        doc_stride=16,
        mixing="equal",
    )
    sink = MemorySink()
    out = finetune(cfg, checkpoint, workdir=tmp_path / "work", sink=sink)
    assert out.summary["steps"] == 160
    for task in cfg.tasks:
        curve = [v for _, v in sink.series(f"train_loss/{task}")]
        assert curve[-1] < 0.7 * curve[0], (task, curve[0], curve[-1])
    assert {"model.safetensors", "config.json", "tokenizer.json", "tasks.json"} <= {
        p.name for p in out.dir.iterdir()
    }
    model = load_multitask(out.dir)
    assert set(model.heads) == set(cfg.tasks)
    assert json.loads(out.file("tasks.json").read_text())["STS-B"]["kind"] == "regression"
    assert json.loads(out.file("tasks.json").read_text())["WikiANN-en"]["kind"] == "token"
    assert finetune(cfg, checkpoint, workdir=tmp_path / "work", sink=sink).cached  # finished stage is reused


def test_config_rejects_incompatible_transfer_options() -> None:
    with pytest.raises(ValueError, match="exclude each other"):
        finetune_cfg(data_dir="x", freeze_encoder=True, unfreeze_every=10)
    with pytest.raises(ValueError, match="freeze_embeddings and unfreeze_every"):
        finetune_cfg(data_dir="x", freeze_embeddings=True, unfreeze_every=10)
    with pytest.raises(ValueError, match="needs mode='multitask'"):
        finetune_cfg(data_dir="x", mode="single", then_single_steps=5)
    with pytest.raises(ValueError, match="distinct"):
        finetune_cfg(data_dir="x", seeds=(1, 1))
    assert finetune_cfg(data_dir="x").seeds == (0,)


def small_cfg(data: Path, **overrides: object) -> FinetuneConfig:
    """A few steps on two small tasks: structure tests, not learning tests."""
    base = dict(
        data_dir=str(data),
        tasks=("SST-2", "STS-B"),
        batch_size=4,
        lr=1e-2,
        max_steps=12,
        max_seq_len=32,
        max_train_examples_per_task=16,
        mixing_cap_k=8,
    )
    return finetune_cfg(**(base | overrides))


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Artifact]:
    root = tmp_path_factory.mktemp("ft")
    write_synthetic_tasks(root / "data", n=24)
    return root, tiny_checkpoint(root / "pretrained")


def _eval_report(root: Path, out: Artifact, tasks: tuple[str, ...]) -> dict:
    cfg = EvalConfig(data_dir=str(root / "data"), tasks=tasks, max_seq_len=32)
    report = evaluate_checkpoint(cfg, out, workdir=root / "work", sink=MemorySink())
    return json.loads(report.file("report.json").read_text())


def test_single_mode_one_model_per_task_with_its_mixture_share(tiny_setup: tuple[Path, Artifact]) -> None:
    root, checkpoint = tiny_setup
    cfg = small_cfg(root / "data", mode="single", mixing="temperature", temperature=2.0)
    sink = MemorySink()
    out = finetune(cfg, checkpoint, workdir=root / "work", sink=sink)
    members = json.loads(out.file("members.json").read_text())
    assert members == {"SST-2": "per_task/SST-2", "STS-B": "per_task/STS-B"}
    assert not out.file("model.safetensors").exists()  # no shared model in single mode
    for task in cfg.tasks:
        assert set(load_multitask(out.dir / members[task]).heads) == {task}
        rate = out.summary[f"mixing_rate/{task}"]
        assert out.summary[f"single_steps/{task}"] == single_task_steps(cfg.train.max_steps, rate)
        assert sink.series(f"{task}/loss")  # each task's run logs under its own prefix
    assert sum(out.summary[f"single_steps/{t}"] for t in cfg.tasks) == cfg.train.max_steps  # 0.5 / 0.5 here
    report = _eval_report(root, out, cfg.tasks)
    assert set(report["per_task"]) == set(cfg.tasks)


def test_multitask_then_single_continues_from_the_shared_model(tiny_setup: tuple[Path, Artifact]) -> None:
    root, checkpoint = tiny_setup
    cfg = small_cfg(root / "data", then_single_steps=3, layer_lr_decay=0.8)
    out = finetune(cfg, checkpoint, workdir=root / "work", sink=MemorySink())
    shared = read_weights(out.dir)
    assert set(load_multitask(out.dir).heads) == set(cfg.tasks)
    for task in cfg.tasks:
        tuned = read_weights(out.dir / "per_task" / task)
        assert {k for k in tuned if k.startswith("heads.")} == {
            k for k in shared if k.startswith(f"heads.{task}.")
        }
        assert not torch.equal(
            tuned["encoder.layers.0.ffn.up.weight"], shared["encoder.layers.0.ffn.up.weight"]
        )
        assert out.summary[f"single_steps/{task}"] == 3
    report = _eval_report(root, out, ("STS-B",))
    assert set(report["per_task"]) == {"STS-B"}


def test_mean_pooling_is_saved_with_the_heads_and_used_by_evaluation(
    tiny_setup: tuple[Path, Artifact],
) -> None:
    root, checkpoint = tiny_setup
    cfg = small_cfg(root / "data", pooling="mean", max_steps=4)
    out = finetune(cfg, checkpoint, workdir=root / "work", sink=MemorySink())
    model = load_multitask(out.dir).eval()
    assert {spec.pooling for spec in model.head_specs.values()} == {"mean"}
    report = evaluate_checkpoint(
        EvalConfig(data_dir=str(root / "data"), tasks=("STS-B",), max_seq_len=32),
        out,
        workdir=root / "work",
        sink=MemorySink(),
    )
    rows = report.file("predictions/STS-B.jsonl").read_text().splitlines()
    written = [json.loads(row)["prediction"] for row in rows]
    # the STS-B head by hand, one pair at a time, on the mean of all hidden states vs on [CLS]
    lines = (root / "data" / "glue" / "STS-B" / "dev.tsv").read_text().splitlines()[1:]
    head, tok = model.heads["STS-B"], tiny_tokenizer()
    by_mean, by_cls = [], []
    with torch.no_grad():
        for line in lines:
            enc = tok.encode(*line.split("\t")[7:9])
            ids, types = torch.tensor([enc.ids]), torch.tensor([enc.type_ids])
            hidden = model.encoder(ids, types, torch.ones_like(ids))[0]  # (T, H)
            for pooled, out_list in ((hidden.mean(0), by_mean), (hidden[0], by_cls)):
                out_list.append(float(head.regressor(torch.tanh(head.pooler.dense(pooled)))))
    assert len(written) == len(lines) == 24
    assert written == pytest.approx(by_mean, abs=1e-5)
    assert max(abs(m - c) for m, c in zip(by_mean, by_cls, strict=True)) > 1e-3  # the pooling matters here


def test_several_seeds_keep_the_median_seed_and_report_medians(tiny_setup: tuple[Path, Artifact]) -> None:
    root, checkpoint = tiny_setup
    cfg = small_cfg(root / "data", seeds=(0, 1, 2), max_steps=6)
    out = finetune(cfg, checkpoint, workdir=root / "work", sink=MemorySink())
    info = json.loads(out.file("finetune.json").read_text())
    scores = {int(s): v for s, v in info["selection_scores"].items()}
    assert info["median_seed"] == sorted(scores, key=lambda s: (scores[s], s))[1]
    median_dir = out.dir / "seeds" / str(info["median_seed"])
    assert out.file("model.safetensors").read_bytes() == (median_dir / "model.safetensors").read_bytes()
    assert len({(out.dir / "seeds" / str(s) / "model.safetensors").read_bytes() for s in cfg.seeds}) == 3
    report = _eval_report(root, out, cfg.tasks)
    assert report["seeds"] == [0, 1, 2] and report["median_seed"] == info["median_seed"]
    for task, metrics in report["per_task"].items():
        for name, value in metrics.items():
            per_seed = [report["per_seed"][str(s)]["per_task"][task][name] for s in cfg.seeds]
            assert value == pytest.approx(float(np.median(per_seed)))
    assert report["glue_avg"] == pytest.approx(
        np.mean(
            [report["per_task"]["SST-2"]["accuracy"], np.mean(list(report["per_task"]["STS-B"].values()))]
        )
    )
    assert (root / "work" / "evaluate").exists()


def test_ner_trains_in_the_mixture_and_is_scored_at_entity_level(tiny_setup: tuple[Path, Artifact]) -> None:
    root, checkpoint = tiny_setup
    cfg = small_cfg(root / "data", tasks=("SST-2", "WikiANN-en"))
    out = finetune(cfg, checkpoint, workdir=root / "work", sink=MemorySink())
    assert load_multitask(out.dir).head_specs["WikiANN-en"].num_labels == 7
    report = _eval_report(root, out, ("SST-2", "WikiANN-en"))
    scores = report["per_task"]["WikiANN-en"]
    assert {"precision", "recall", "f1", "repaired_tags", "LOC_support"} <= set(scores)
    assert report["dev_examples"]["WikiANN-en"] == {"dev.conll": 24}
    assert report["glue_avg_name"] == "glue_avg[SST-2]"  # NER is reported, not averaged into GLUE


def test_frozen_word_embeddings_keep_their_pretrained_values(tiny_setup: tuple[Path, Artifact]) -> None:
    root, checkpoint = tiny_setup
    before = read_weights(checkpoint.dir)
    out = finetune(small_cfg(root / "data", freeze_embeddings=True, max_steps=4), checkpoint,
                   workdir=root / "work", sink=MemorySink())  # fmt: skip
    after = read_weights(out.dir)
    word = "encoder.embeddings.word.weight"
    assert torch.equal(after[word], before[word])  # no step, no weight decay
    assert not torch.equal(after["encoder.layers.0.ffn.up.weight"], before["encoder.layers.0.ffn.up.weight"])
