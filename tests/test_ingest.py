"""Ingest: readers per format, cleanup, filters, error messages, caching."""

from __future__ import annotations

import bz2
import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from tasks.data.corpus.normalize import alpha_fraction, clean_text, repeated_line_fraction
from tasks.data.corpus.readers import CorpusFormatError
from tasks.data.corpus.shards import ShardWriter, iter_doc_batches, shard_paths
from tasks.data.ingest import IngestConfig, ingest
from tasks.sink import MemorySink

DOC_A = "The quick brown fox jumps over the lazy dog."
DOC_B = "A second document that is long enough to pass."


def run(tmp_path: Path, **kwargs: object) -> tuple[dict[str, str], dict]:
    """Ingest with a small min_chars; return {id: text} and the summary."""
    kwargs.setdefault("min_chars", 5)
    art = ingest(IngestConfig(**kwargs), workdir=tmp_path / "work", sink=MemorySink())
    docs = {i: t for ids, texts in iter_doc_batches(art.dir) for i, t in zip(ids, texts, strict=True)}
    return docs, art.summary


def test_txt_blocks_and_lines(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_text(f"{DOC_A}\nstill doc a\n\n\n{DOC_B}\n")
    docs, summary = run(tmp_path, paths=(str(path),))
    assert docs == {"c.txt:0": f"{DOC_A}\nstill doc a", "c.txt:1": DOC_B}
    assert summary["docs"] == 2
    docs, _ = run(tmp_path, paths=(str(path),), txt_mode="lines")
    assert list(docs.values()) == [DOC_A, "still doc a", DOC_B]


@pytest.mark.parametrize("suffix", ["", ".gz", ".bz2", ".zst"])
def test_jsonl_plain_and_compressed(tmp_path: Path, suffix: str) -> None:
    raw = "".join(json.dumps({"body": t, "other": 1}) + "\n" for t in (DOC_A, DOC_B)).encode()
    compress = {"": bytes, ".gz": gzip.compress, ".bz2": bz2.compress, ".zst": zstandard.compress}[suffix]
    path = tmp_path / f"c.jsonl{suffix}"
    path.write_bytes(compress(raw))
    docs, _ = run(tmp_path, paths=(str(path),), text_field="body")
    assert docs == {f"c.jsonl{suffix}:1": DOC_A, f"c.jsonl{suffix}:2": DOC_B}


def test_parquet_and_csv(tmp_path: Path) -> None:
    pq.write_table(pa.table({"text": [DOC_A, DOC_B], "n": [1, 2]}), tmp_path / "c.parquet")
    (tmp_path / "d.csv").write_text(f'id,text\n1,"{DOC_A}"\n2,"multi, line\nfield here"\n')
    docs, summary = run(tmp_path, paths=(str(tmp_path / "c.parquet"), str(tmp_path / "d.csv")))
    assert docs == {
        "c.parquet:0": DOC_A,
        "c.parquet:1": DOC_B,
        "d.csv:0": DOC_A,
        "d.csv:1": "multi, line\nfield here",
    }
    assert summary["files"] == 2


def test_wikiextractor_gz_strips_tags_and_title(tmp_path: Path) -> None:
    wiki = (
        '<doc id="12" url="http://x?curid=12" title="Fox &amp; Dog">\nFox &amp; Dog\n\n'
        f"{DOC_A}\nSecond paragraph here.\n</doc>\n"
        f'<doc id="13" url="http://x?curid=13" title="Other">\nOther\n\n{DOC_B}\n</doc>\n'
    )
    (tmp_path / "AA").mkdir()
    (tmp_path / "AA" / "wiki_00.gz").write_bytes(gzip.compress(wiki.encode()))
    docs, _ = run(tmp_path, paths=(str(tmp_path),))  # a directory: read recursively, format sniffed
    assert docs == {"AA/wiki_00.gz:12": f"{DOC_A}\nSecond paragraph here.", "AA/wiki_00.gz:13": DOC_B}
    docs, _ = run(tmp_path, paths=(str(tmp_path / "*" / "wiki_*.gz"),), wiki_keep_title=True)
    assert docs["AA/wiki_00.gz:13"] == f"Other\n{DOC_B}"


def test_clean_text_nfc_controls_whitespace() -> None:
    raw = "\ufeffCafe\u0301  au\tlait\x00\x07\r\n\n\n  second \u00a0 line  \x1b\n"
    assert clean_text(raw) == "Café au lait\nsecond line"
    assert clean_text("e\u0301") == "\u00e9"  # NFC composes


def test_alpha_fraction() -> None:
    assert alpha_fraction("abcd") == 1.0
    assert alpha_fraction("ab 12") == 0.5
    assert alpha_fraction("   ") == 0.0


def test_filters_count_drop_reasons(tmp_path: Path) -> None:
    texts = ["tiny", DOC_A, "x" * 300, "1234567890 || 12345 == 999"]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    docs, summary = run(tmp_path, paths=(str(tmp_path / "c.jsonl"),), min_chars=10, max_chars=200)
    assert list(docs.values()) == [DOC_A]
    assert summary["dropped"] == {"too_short": 1, "too_long": 1, "low_alpha": 1}


def test_non_utf8_error_names_file_line_offset(tmp_path: Path) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes(DOC_A.encode() + b"\n\nok \xff bad\n")
    with pytest.raises(CorpusFormatError, match=r"bad\.txt: line 3 \(byte offset 49\)"):
        run(tmp_path, paths=(str(path),))
    assert not (tmp_path / "work" / "ingest").exists() or not list((tmp_path / "work" / "ingest").iterdir())


def test_non_utf8_replace_and_skip_are_counted(tmp_path: Path) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes(f"{DOC_A}\n\nbroken \xff document here\n\n{DOC_B}\n".encode("latin-1"))
    docs, summary = run(tmp_path, paths=(str(path),), encoding_errors="replace")
    assert docs["bad.txt:1"] == "broken \ufffd document here"
    assert summary["replaced_lines"] == 1
    docs, summary = run(tmp_path, paths=(str(path),), encoding_errors="skip")
    assert list(docs.values()) == [DOC_A, DOC_B]
    assert summary["dropped"] == {"encoding": 1}


def test_bad_jsonl_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"text": DOC_A}) + "\n{not json\n" + json.dumps({"title": "x"}) + "\n")
    with pytest.raises(CorpusFormatError, match=r"c\.jsonl: line 2: not valid JSON"):
        run(tmp_path, paths=(str(path),))
    path.write_text(json.dumps({"text": DOC_A}) + "\n" + json.dumps({"title": "x"}) + "\n")
    with pytest.raises(CorpusFormatError, match=r"c\.jsonl: line 2: no string field 'text'"):
        run(tmp_path, paths=(str(path),))
    docs, summary = run(tmp_path, paths=(str(path),), on_bad_record="skip")
    assert list(docs.values()) == [DOC_A]
    assert summary["dropped"] == {"bad_record": 1}


def test_empty_corpus_and_no_match_raise_and_write_nothing(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_text("tiny\n\nsmall\n")
    with pytest.raises(ValueError, match=r"corpus is empty after filtering: .*c\.txt"):
        run(tmp_path, paths=(str(path),), min_chars=50)
    assert list((tmp_path / "work" / "ingest").iterdir()) == []  # the temp dir was removed
    with pytest.raises(ValueError, match=r"matched no files: 'nothing-\*\.txt'"):
        run(tmp_path, paths=("nothing-*.txt",))


def test_relative_paths_resolve_against_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "c.txt").write_text(DOC_A)
    monkeypatch.chdir(tmp_path)
    docs, _ = run(tmp_path, paths=("c.txt",))
    assert docs == {"c.txt:0": DOC_A}


def test_shards_and_max_docs(tmp_path: Path) -> None:
    (tmp_path / "c.txt").write_text("\n".join(f"document number {i} is here" for i in range(5)))
    art = ingest(
        IngestConfig(paths=(str(tmp_path / "c.txt"),), txt_mode="lines", shard_docs=2, min_chars=5),
        workdir=tmp_path / "work",
        sink=MemorySink(),
    )
    assert [p.name for p in shard_paths(art.dir)] == [
        "docs-00000-00000.parquet",
        "docs-00000-00001.parquet",
        "docs-00000-00002.parquet",
    ]
    docs, summary = run(tmp_path, paths=(str(tmp_path / "c.txt"),), txt_mode="lines", max_docs=3)
    assert summary["docs"] == 3 and len(docs) == 3


def test_file_groups_keep_corpus_order_and_max_docs_cuts_the_last_group_read(tmp_path: Path) -> None:
    for name in "abcd":  # four files of 3 documents, about 80 bytes each: one group per two files
        (tmp_path / f"{name}.txt").write_text(
            "\n".join(f"document {name} number {i} is here" for i in range(3))
        )
    cfg = IngestConfig(paths=(str(tmp_path),), txt_mode="lines", shard_docs=2, min_chars=5, group_bytes=200)
    art = ingest(cfg, workdir=tmp_path / "work", sink=MemorySink())
    assert art.summary["groups"] == 2 and art.summary["files"] == 4 and art.summary["docs"] == 12
    assert [p.name for p in shard_paths(art.dir)] == [
        f"docs-0000{g}-0000{k}.parquet" for g in (0, 1) for k in (0, 1, 2)
    ]
    ids = [i for batch, _ in iter_doc_batches(art.dir) for i in batch]
    assert ids == [f"{name}.txt:{i}" for name in "abcd" for i in (1, 2, 3)]  # the files' order (lines)
    cut = ingest(cfg.model_copy(update={"max_docs": 5}), workdir=tmp_path / "work", sink=MemorySink())
    assert cut.summary["groups"] == 1 and cut.summary["docs"] == 5  # the second group was never read
    assert [i for batch, _ in iter_doc_batches(cut.dir) for i in batch] == ids[:5]


def test_workdir_inside_input_dir_is_not_ingested(tmp_path: Path) -> None:
    (tmp_path / "c.txt").write_text(DOC_A)
    cfg = IngestConfig(paths=(str(tmp_path),), min_chars=5)
    first = ingest(cfg, workdir=tmp_path / "work", sink=MemorySink())
    second = ingest(cfg, workdir=tmp_path / "work", sink=MemorySink())
    assert second.cached and second.fingerprint == first.fingerprint and first.summary["files"] == 1


def test_shard_writer_row_groups_and_shards(tmp_path: Path) -> None:
    with ShardWriter(tmp_path, shard_docs=5, row_group_docs=2) as writer:
        for i in range(11):
            writer.add(f"d:{i}", f"text {i}")
    assert writer.shards == 3 and writer.docs == 11
    assert [pq.ParquetFile(p).metadata.num_rows for p in shard_paths(tmp_path)] == [5, 5, 1]
    assert pq.ParquetFile(shard_paths(tmp_path)[0]).metadata.num_row_groups == 3
    assert [i for ids, _ in iter_doc_batches(tmp_path, batch_size=3) for i in ids] == [
        f"d:{i}" for i in range(11)
    ]


def test_parquet_and_csv_missing_column(tmp_path: Path) -> None:
    pq.write_table(pa.table({"body": [DOC_A]}), tmp_path / "c.parquet")
    with pytest.raises(CorpusFormatError, match=r"c\.parquet: no column 'text'"):
        run(tmp_path, paths=(str(tmp_path / "c.parquet"),))
    (tmp_path / "d.csv").write_text(f"body\n{DOC_A}\n")
    with pytest.raises(CorpusFormatError, match=r"d\.csv: header has no column 'text'"):
        run(tmp_path, paths=(str(tmp_path / "d.csv"),))


def test_rerun_is_cached_and_file_change_rebuilds(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_text(DOC_A)
    cfg = IngestConfig(paths=(str(path),), min_chars=5)
    sink = MemorySink()
    first = ingest(cfg, workdir=tmp_path / "w", sink=sink)
    second = ingest(cfg, workdir=tmp_path / "w", sink=sink)
    assert not first.cached and second.cached and second.path == first.path
    assert len(sink.history) == 1  # the second call did not rebuild
    path.write_text(DOC_B + " changed")
    third = ingest(cfg, workdir=tmp_path / "w", sink=sink)
    assert not third.cached and third.fingerprint != first.fingerprint


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="needs `paths`"):
        IngestConfig()
    with pytest.raises(ValueError, match="max_chars"):
        IngestConfig(paths=("x",), min_chars=10, max_chars=5)


WIKITEXT = "\n".join(  # WikiText lines keep their surrounding spaces
    [
        " ",
        " = Valkyria Chronicles = ",
        " ",
        " Senjō no Valkyria is a tactical role playing game . ",
        " ",
        " = = Gameplay = = ",
        " ",
        " The game plays in turns on a map . ",
        " ",
        " = = = Units = = = ",
        " ",
        " Each unit has a class . ",
        " = Tower Building = ",
        " ",
        " The tower is a building in the town centre . ",
        "",
    ]
)


@pytest.mark.parametrize("name", ["wiki.train.tokens", "wiki.txt.gz"])
def test_wikitext_articles_split_on_titles(tmp_path: Path, name: str) -> None:
    raw = WIKITEXT.encode()
    (tmp_path / name).write_bytes(gzip.compress(raw) if name.endswith(".gz") else raw)
    docs, _ = run(tmp_path, paths=(str(tmp_path / name),))  # .tokens by name, .txt.gz by sniffing
    assert docs == {
        f"{name}:0": "Senjō no Valkyria is a tactical role playing game .\nGameplay\n"
        "The game plays in turns on a map .\nUnits\nEach unit has a class .",
        f"{name}:1": "The tower is a building in the town centre .",
    }
    docs, _ = run(tmp_path, paths=(str(tmp_path / name),), wiki_keep_title=True)
    assert docs[f"{name}:1"] == "Tower Building\nThe tower is a building in the town centre ."


def test_wikitext_text_before_first_title(tmp_path: Path) -> None:
    path = tmp_path / "w.tokens"
    path.write_text("stray line\n = Title = \n The body of the article . \n")
    with pytest.raises(CorpusFormatError, match=r"w\.tokens: line 1: text before the first"):
        run(tmp_path, paths=(str(path),), format="wikitext")
    docs, summary = run(tmp_path, paths=(str(path),), on_bad_record="skip")
    assert list(docs.values()) == ["The body of the article ."] and summary["dropped"] == {"bad_record": 1}


def test_repeated_line_filter(tmp_path: Path) -> None:
    assert repeated_line_fraction("a\nb\na\na") == 0.5 and repeated_line_fraction("one line") == 0.0
    menu = "\n".join(["Home | About | Contact", DOC_A] * 3)  # 4 of 6 lines repeat an earlier one
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in (menu, DOC_A)))
    docs, summary = run(tmp_path, paths=(str(tmp_path / "c.jsonl"),))
    assert list(docs.values()) == [DOC_A] and summary["dropped"] == {"repeated_lines": 1}
    docs, _ = run(tmp_path, paths=(str(tmp_path / "c.jsonl"),), max_repeated_line_fraction=1.0)
    assert len(docs) == 2


def test_empty_file_counted_and_binary_file_error_or_skip(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text(DOC_A)
    (tmp_path / "empty.jsonl").write_bytes(b"")
    (tmp_path / "image.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    with pytest.raises(CorpusFormatError, match=r"image\.txt: binary content .* on_binary_file='skip'"):
        run(tmp_path, paths=(str(tmp_path),))
    docs, summary = run(tmp_path, paths=(str(tmp_path),), on_binary_file="skip")
    assert list(docs.values()) == [DOC_A]
    assert summary["skipped_files"] == {"empty_file": 1, "binary_file": 1} and summary["files"] == 3
    with pytest.raises(ValueError, match=r"corpus is empty .*skipped files: \{'empty_file': 1\}"):
        run(tmp_path, paths=(str(tmp_path / "empty.jsonl"),))
