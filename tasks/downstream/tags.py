"""IOB tag sequences: validation, IOB1 -> IOB2, and entity chunks the conlleval way.

A tag is ``O`` or ``B-TYPE`` / ``I-TYPE``. IOB2 starts every entity with ``B-``; IOB1 (the
original CoNLL-2003 files) uses ``I-`` throughout and ``B-`` only between two adjacent entities
of one type. Both read the same once every ``I-X`` that cannot continue an entity (after ``O``,
after another type, or first in the sentence) is taken to begin one: that is IOB1 -> IOB2, and
it is also how conlleval (and seqeval's default mode) repairs an invalid predicted sequence. One
rule, so the files we read and the predictions we score mean the same thing.
"""

from __future__ import annotations

from collections.abc import Sequence

Chunk = tuple[str, int, int]  # (type, first word, last word), inclusive


def check_tag(tag: str) -> str | None:
    """None if ``tag`` is a well-formed IOB tag, else what is wrong with it."""
    if tag == "O":
        return None
    if len(tag) > 2 and tag[:2] in ("B-", "I-"):
        return None
    return f"tag {tag!r} is not O, B-TYPE or I-TYPE"


def starts_entity(previous: str, tag: str) -> bool:
    """Whether ``tag`` begins a new entity after ``previous`` (conlleval's rule, IOB1 and IOB2)."""
    if tag == "O":
        return False
    return tag.startswith("B-") or previous == "O" or previous[2:] != tag[2:]


def to_iob2(tags: Sequence[str]) -> tuple[tuple[str, ...], int]:
    """IOB2 tags, and how many ``I-X`` had to become ``B-X`` (0 for a sequence already IOB2)."""
    out, repaired, previous = [], 0, "O"
    for tag in tags:
        if tag.startswith("I-") and starts_entity(previous, tag):
            tag, repaired = "B-" + tag[2:], repaired + 1
        out.append(tag)
        previous = tag
    return tuple(out), repaired


def chunks(tags: Sequence[str]) -> list[Chunk]:
    """Entities of one sentence as (type, first, last) word indices, after the IOB2 repair."""
    found: list[Chunk] = []
    previous = "O"
    for i, tag in enumerate(tags):
        if tag != "O" and not starts_entity(previous, tag):
            kind, first, _ = found[-1]
            found[-1] = (kind, first, i)
        elif tag != "O":
            found.append((tag[2:], i, i))
        previous = tag
    return found
