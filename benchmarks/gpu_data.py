"""Data and wheels for benchmarks/gpu_check.py: what travels to the lent GPU machine, and the dry run's data.

    python benchmarks/gpu_data.py --shared ../shared/data --out .gpu      # what `make gpu-data` runs

The device machine receives only the repository's working tree plus the ignored paths named in
``carry`` (64 MiB in all); ``../shared`` stays behind and nothing can be downloaded there. This
helper fills the ignored folder ``.gpu/`` (name it in ``carry``):

* ``.gpu/data/corpus/enwiki-2014-slice/<AA>/wiki_NN.gz``: the first ``--files`` (250) of the 827
  Wikipedia slice files, in sorted path order, fewer if the size budget would be exceeded;
* ``.gpu/data/glue/<TASK>/{train,dev}.tsv.gz``: CoLA, SST-2, MRPC, STS-B, RTE, gzipped
  (gpu_check.py unpacks them into its workdir);
* ``.gpu/wheels/*.whl``: the Python packages the pipeline imports that the device machine's
  Python 3.12 lacks (``MISSING_THERE``, checked against the package list in the device docs),
  at the versions installed here, downloaded with ``pip download --only-binary=:all:
  --python-version 3.12 --platform manylinux...``. gpu_check.py installs them into
  ``.gpu/site`` at its start (``pip install --no-index --no-deps --target``) and appends that
  folder to ``sys.path`` so the machine's own packages always win.

It prints every part's size and the total that will travel (the tracked working tree too) and
fails if the carried folder exceeds ``--max-mib`` (default 60).

``write_tiny_data(dir)`` makes the dry run's data instead (a fresh clone has no ``../shared``):
two WikiExtractor-style gzip files and small GLUE tsv files for the five tasks, in the
original formats, so the real readers parse them.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.metadata
import random
import shutil
import subprocess
import sys
from pathlib import Path

GLUE_TASKS = ("CoLA", "SST-2", "MRPC", "STS-B", "RTE")
GLUE_FILES = ("train.tsv", "dev.tsv")
# Imported by the pipeline's pure stage functions (pydantic configs, evaluate.Metric scoring, the
# corpus reader's zstandard) and absent from the device machine's Python (KINDS.md's package list:
# it has numpy, pandas, pyarrow, requests, fsspec, huggingface-hub, xxhash, pyyaml, filelock, tqdm,
# packaging, typing-extensions, scikit-learn, scipy, transformers, tokenizers, safetensors, torch).
MISSING_THERE = (
    "pydantic",
    "pydantic-core",
    "annotated-types",
    "typing-inspection",
    "evaluate",
    "datasets",
    "dill",
    "multiprocess",
    "zstandard",
)
PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)
MIB = 1024 * 1024


def size_of(path: Path) -> int:
    """Bytes under ``path`` (a file or a folder)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def working_tree_bytes(repo: Path) -> int | None:
    """Bytes of the files that travel anyway: tracked and untracked-but-not-ignored (None without git)."""
    try:
        listed = (
            subprocess.run(
                ["git", "ls-files", "-co", "--exclude-standard", "-z"],
                cwd=repo,
                capture_output=True,
                check=True,
                timeout=60,
            )
            .stdout.decode()
            .split("\0")
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return sum((repo / p).stat().st_size for p in listed if p and (repo / p).is_file())


def pinned_versions(names: tuple[str, ...] = MISSING_THERE) -> list[str]:
    """``name==version`` of each package as installed in this Python (the versions tested here)."""
    return [f"{name}=={importlib.metadata.version(name)}" for name in names]


def download_wheels(dest: Path, requirements: list[str]) -> None:
    """cp312 manylinux x86_64 wheels of ``requirements`` (no dependencies: each is named)."""
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("*.whl"):  # one version of each: two would stop the install there
        old.unlink()
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--no-deps",
        "--only-binary=:all:",
        "--python-version",
        "3.12",
        "--implementation",
        "cp",
        *platforms,
        "-d",
        str(dest),
        *requirements,
    ]
    subprocess.run(command, check=True)


def copy_glue(shared: Path, dest: Path) -> None:
    """The five tasks' train/dev tsv files, gzipped (gpu_check.py unpacks them)."""
    for task in GLUE_TASKS:
        for name in GLUE_FILES:
            src = shared / "glue" / task / name
            if not src.is_file():
                raise SystemExit(f"{src}: missing (GLUE {task})")
            out = dest / "glue" / task / f"{name}.gz"
            out.parent.mkdir(parents=True, exist_ok=True)
            with src.open("rb") as fin, gzip.GzipFile(out, "wb", compresslevel=9, mtime=0) as fout:
                shutil.copyfileobj(fin, fout)


def copy_corpus(shared: Path, dest: Path, files: int, budget_bytes: int) -> tuple[int, int]:
    """The first ``files`` Wikipedia files (sorted), fewer if ``budget_bytes`` runs out: (count, bytes)."""
    corpus = shared / "corpus"
    paths = sorted(corpus.rglob("wiki_*"))
    if not paths:
        raise SystemExit(f"no WikiExtractor files (wiki_*) under {corpus}")
    out_root = dest / "corpus"
    if out_root.exists():
        shutil.rmtree(out_root)
    count = used = 0
    for path in paths[:files]:
        size = path.stat().st_size
        if used + size > budget_bytes:
            break
        target = out_root / path.relative_to(corpus)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        count, used = count + 1, used + size
    return count, used


def prepare(shared: Path, out: Path, files: int, max_mib: float, wheels: bool) -> dict[str, float]:
    """Fill ``out`` (data/ and wheels/) within ``max_mib``; returns the sizes in MiB."""
    data = out / "data"
    if wheels:
        download_wheels(out / "wheels", pinned_versions())
    if (data / "glue").exists():
        shutil.rmtree(data / "glue")
    copy_glue(shared, data)
    fixed = size_of(out / "wheels") if (out / "wheels").exists() else 0
    fixed += size_of(data / "glue")
    count, _ = copy_corpus(shared, data, files, int(max_mib * MIB) - fixed)
    sizes = {
        "corpus_files": count,
        "corpus_mib": size_of(data / "corpus") / MIB,
        "glue_mib": size_of(data / "glue") / MIB,
        "wheels_mib": size_of(out / "wheels") / MIB if (out / "wheels").exists() else 0.0,
    }
    sizes["carried_mib"] = size_of(out) / MIB
    tree = working_tree_bytes(Path(__file__).resolve().parents[1])
    sizes["working_tree_mib"] = tree / MIB if tree is not None else float("nan")
    sizes["travels_mib"] = sizes["carried_mib"] + (sizes["working_tree_mib"] if tree is not None else 0.0)
    return sizes


# --------------------------------------------------------------------------------------------
# The dry run's data: tiny, seeded, in the original formats.

WORDS = """river mountain village city music painter novel science history language school county
station album season player election church island bridge forest garden castle empire ancient modern
famous small large northern southern early later public local national built wrote played founded
released moved became served studied opened named described"""


VOCAB = WORDS.split()


def sentence(rng: random.Random, lo: int = 6, hi: int = 14) -> str:
    words = [rng.choice(VOCAB) for _ in range(rng.randint(lo, hi))]
    return " ".join(words).capitalize() + "."


def write_tiny_data(root: Path, *, files: int = 2, docs_per_file: int = 60, seed: int = 0) -> Path:
    """corpus/AA/wiki_NN.gz (WikiExtractor) + glue/<TASK>/{train,dev}.tsv under ``root``; returns it."""
    rng = random.Random(seed)
    for f in range(files):
        path = root / "corpus" / "AA" / f"wiki_{f:02d}.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        blocks = []
        for d in range(docs_per_file):
            title = f"Article {f} {d}"
            body = " ".join(sentence(rng) for _ in range(rng.randint(4, 12)))
            blocks.append(f'<doc id="{f * 1000 + d}" url="x" title="{title}">\n{title}\n\n{body}\n</doc>\n')
        with gzip.open(path, "wt", encoding="utf-8") as out:
            out.write("".join(blocks))
    sizes = {"train.tsv": 48, "dev.tsv": 24}
    for name, n in sizes.items():
        write_tsv(
            root / "glue" / "CoLA" / name,
            None,
            [("src", i % 2, "*" if i % 2 == 0 else "", sentence(rng)) for i in range(n)],
        )
        write_tsv(
            root / "glue" / "SST-2" / name, ("sentence", "label"), [(sentence(rng), i % 2) for i in range(n)]
        )
        write_tsv(
            root / "glue" / "MRPC" / name,
            ("Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"),
            [(i % 2, i, i + 1, sentence(rng), sentence(rng)) for i in range(n)],
        )
        stsb_header = (
            "index",
            "genre",
            "filename",
            "year",
            "old_index",
            "source1",
            "source2",
            "sentence1",
            "sentence2",
            "score",
        )
        write_tsv(
            root / "glue" / "STS-B" / name,
            stsb_header,
            [
                (i, "g", "f", "y", i, "s", "s", sentence(rng), sentence(rng), f"{rng.uniform(0, 5):.2f}")
                for i in range(n)
            ],
        )
        write_tsv(
            root / "glue" / "RTE" / name,
            ("index", "sentence1", "sentence2", "label"),
            [(i, sentence(rng), sentence(rng), ("entailment", "not_entailment")[i % 2]) for i in range(n)],
        )
    return root


def write_tsv(path: Path, header: tuple[str, ...] | None, rows: list[tuple]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = (["\t".join(header)] if header else []) + ["\t".join(str(v) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--shared", type=Path, default=Path("../shared/data"), help="dir with corpus/ and glue/"
    )
    parser.add_argument("--out", type=Path, default=Path(".gpu"), help="the ignored folder named in carry")
    parser.add_argument("--files", type=int, default=250, help="Wikipedia files to copy (of 827)")
    parser.add_argument("--max-mib", type=float, default=60.0, help="size budget of the carried folder")
    parser.add_argument("--no-wheels", action="store_true", help="data only (no pip download)")
    args = parser.parse_args(argv)
    sizes = prepare(args.shared, args.out, args.files, args.max_mib, wheels=not args.no_wheels)
    print(f"corpus: {sizes['corpus_files']} files, {sizes['corpus_mib']:.1f} MiB")
    print(f"glue (5 tasks, gzipped): {sizes['glue_mib']:.1f} MiB")
    print(f"wheels: {sizes['wheels_mib']:.1f} MiB  ({', '.join(pinned_versions())})")
    print(f"carried folder {args.out}: {sizes['carried_mib']:.1f} MiB (budget {args.max_mib:.0f} MiB)")
    print(
        f"working tree (travels anyway): {sizes['working_tree_mib']:.1f} MiB; "
        f"total that travels: {sizes['travels_mib']:.1f} MiB of 64"
    )
    if sizes["carried_mib"] > args.max_mib or sizes["travels_mib"] > 64:
        raise SystemExit("over the size budget: lower --files")


if __name__ == "__main__":
    main()
