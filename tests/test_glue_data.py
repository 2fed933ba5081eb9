"""GLUE tsv reader: every task's original format on tiny fixtures, and its format errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.downstream.glue import GlueExample, GlueFormatError, glue_path, read_glue_file
from tasks.downstream.tasks import TASKS, UnknownTaskError, get_task

# Tiny fixtures written exactly as the official GLUE files are laid out (tabs, headers, quirks).
FIXTURES: dict[str, str] = {
    "CoLA": "gj04\t1\t\tThe sailors rode the breeze.\nbc01\t0\t*\tThe more does Bill smoke.",  # no final \n
    "SST-2": "sentence\tlabel\nit 's a \"charming journey . \t1\nbleak \t0\n",
    "MRPC": '\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t11\t12\tHe said "yes.\tHe agreed.\n',
    "STS-B": (
        "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
        "0\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\tA plane takes off.\tA jet takes off.\t4.750\n"
    ),
    "QQP": (
        "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
        "402555\t536040\t536041\tHow do I play Pokémon GO?\tHow is Pokémon GO played?\t1\n"
        '7\t15\t16\tWhat is a "fib"?\tWhy is the sky blue?\t0\n'
    ),
    "MNLI": (
        "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
        "sentence2_parse\tsentence1\tsentence2\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label\n"
        "0\t63735\t63735n\tslate\t( ( The man ) )\t( ( ... ) )\t(ROOT (S ...))\t(ROOT (S ...))\t"
        "The new rights are nice enough\tEveryone really likes the newest benefits\tneutral\tentailment\t"
        "neutral\tneutral\tneutral\tneutral\n"
    ),
    "QNLI": (
        "index\tquestion\tsentence\tlabel\n"
        "0\tWhat came into force after the new constitution was herald?\tAs of that day, the new "
        "constitution heralding the Second Republic came into force.\tentailment\n"
    ),
    "RTE": "index\tsentence1\tsentence2\tlabel\n0\tNo weapons found.\tWeapons found.\tnot_entailment\n",
    "WNLI": "index\tsentence1\tsentence2\tlabel\n0\tThe drain is clogged.\tThe hair is clogged.\t0\n",
}

EXPECTED: dict[str, GlueExample] = {
    "CoLA": GlueExample("1", "The sailors rode the breeze.", None, 1),
    "SST-2": GlueExample("2", "it 's a \"charming journey . ", None, 1),
    "MRPC": GlueExample("2", 'He said "yes.', "He agreed.", 1),
    "STS-B": GlueExample("0", "A plane takes off.", "A jet takes off.", 4.75),
    "QQP": GlueExample("402555", "How do I play Pokémon GO?", "How is Pokémon GO played?", 1),
    "MNLI": GlueExample(
        "0", "The new rights are nice enough", "Everyone really likes the newest benefits", 1
    ),  # neutral is class 1 of (entailment, neutral, contradiction)
    "QNLI": GlueExample(
        "0",
        "What came into force after the new constitution was herald?",
        "As of that day, the new constitution heralding the Second Republic came into force.",
        0,
    ),
    "RTE": GlueExample("0", "No weapons found.", "Weapons found.", 1),
    "WNLI": GlueExample("0", "The drain is clogged.", "The hair is clogged.", 0),
}


def _write(tmp_path: Path, task: str, text: str, file: str = "dev.tsv") -> Path:
    path = glue_path(tmp_path, get_task(task), file)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("task", sorted(FIXTURES))
def test_reads_each_original_format(tmp_path: Path, task: str) -> None:
    examples = read_glue_file(_write(tmp_path, task, FIXTURES[task]), get_task(task))
    assert examples[0] == EXPECTED[task]


def test_cola_second_row_and_quotes_survive(tmp_path: Path) -> None:
    examples = read_glue_file(_write(tmp_path, "CoLA", FIXTURES["CoLA"]), get_task("CoLA"))
    assert [e.label for e in examples] == [1, 0]
    assert examples[1].text_a == "The more does Bill smoke."
    qqp = read_glue_file(_write(tmp_path, "QQP", FIXTURES["QQP"]), get_task("QQP"))
    assert qqp[1].text_a == 'What is a "fib"?' and qqp[1].label == 0


def test_mnli_train_layout_has_fewer_columns(tmp_path: Path) -> None:
    # Official MNLI train.tsv: label1 then gold_label (12 columns), dev has label1..label5 (16).
    text = (
        "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
        "sentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label\n"
        "0\t1\t1e\tgov\t(a)\t(b)\t(A)\t(B)\tPremise here.\tHypothesis here.\tcontradiction\tcontradiction\n"
    )
    (example,) = read_glue_file(_write(tmp_path, "MNLI", text, "train.tsv"), get_task("MNLI"))
    assert example == GlueExample("0", "Premise here.", "Hypothesis here.", 2)


def test_missing_header_column_is_named(tmp_path: Path) -> None:
    path = _write(tmp_path, "RTE", "index\tsentence1\tlabel\n0\ta\tentailment\n")
    with pytest.raises(GlueFormatError, match=r"dev\.tsv: line 1: .*'sentence2'"):
        read_glue_file(path, get_task("RTE"))


def test_wrong_column_count_names_line(tmp_path: Path) -> None:
    text = "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\ta\tb\tc\tentailment\n"
    with pytest.raises(GlueFormatError, match=r"line 3: expected 4 tab-separated columns .* found 5"):
        read_glue_file(_write(tmp_path, "RTE", text), get_task("RTE"))


def test_headerless_cola_wrong_width(tmp_path: Path) -> None:
    with pytest.raises(GlueFormatError, match=r"line 2: expected 4"):
        read_glue_file(_write(tmp_path, "CoLA", "gj04\t1\t\tFine.\ngj04\t1\tShort.\n"), get_task("CoLA"))


def test_label_outside_label_set(tmp_path: Path) -> None:
    text = "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\ta\tb\tneutral\n"
    with pytest.raises(GlueFormatError, match=r"line 3: column 'label': label 'neutral' is not one of"):
        read_glue_file(_write(tmp_path, "RTE", text), get_task("RTE"))


def test_regression_score_out_of_range_and_not_a_number(tmp_path: Path) -> None:
    header = FIXTURES["STS-B"].splitlines()[0]
    row = "0\tg\tf\ty\t1\tn\tn\ta\tb\t"
    with pytest.raises(GlueFormatError, match=r"line 2: column 'score': score 5.5 outside"):
        read_glue_file(_write(tmp_path, "STS-B", f"{header}\n{row}5.5\n"), get_task("STS-B"))
    with pytest.raises(GlueFormatError, match=r"'high' is not a number"):
        read_glue_file(_write(tmp_path, "STS-B", f"{header}\n{row}high\n"), get_task("STS-B"))


def test_empty_file_and_header_only(tmp_path: Path) -> None:
    with pytest.raises(GlueFormatError, match="empty file"):
        read_glue_file(_write(tmp_path, "SST-2", ""), get_task("SST-2"))
    with pytest.raises(GlueFormatError, match="no data rows"):
        read_glue_file(_write(tmp_path, "SST-2", "sentence\tlabel\n"), get_task("SST-2"))


def test_registry_shape() -> None:
    assert set(TASKS) == {
        "CoLA",
        "SST-2",
        "MRPC",
        "STS-B",
        "QQP",
        "MNLI",
        "QNLI",
        "RTE",
        "WNLI",
        "SQuAD",
        "SQuAD-v2",
        "WikiANN-en",
        "CoNLL-2003",
    }
    assert get_task("MNLI").metric_keys() == ("accuracy_matched", "accuracy_mismatched")
    assert get_task("STS-B").num_labels == 1 and get_task("SQuAD").num_labels == 2
    assert get_task("MNLI").num_labels == 3
    assert get_task("WikiANN-en").num_labels == 7 and get_task("CoNLL-2003").num_labels == 9
    with pytest.raises(UnknownTaskError, match="unknown task 'sst2'"):
        get_task("sst2")
