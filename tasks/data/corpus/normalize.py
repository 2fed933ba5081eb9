"""Text cleanup and document filters.

Cleanup is deliberately conservative: NFC (so that the same visible text has one byte
form, which matters for exact dedup and for the tokenizer's vocabulary), control characters
removed, whitespace collapsed inside each line and blank lines dropped. Line breaks are kept
because paragraph boundaries are useful signal for sentence-level objectives.
"""

from __future__ import annotations

import re
import string
import unicodedata
from dataclasses import dataclass

# C0/C1 control characters except "\n" (the line separator) and "\t" (collapsed into a space
# below), plus the byte-order mark that editors leave at file starts.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ufeff]")
_NON_ASCII = re.compile(r"[^\x00-\x7f]+")
_ASCII_LETTERS = string.ascii_letters.encode()
_ASCII_SPACE = string.whitespace.encode()


def clean_text(text: str) -> str:
    """NFC-normalize, drop control characters, collapse whitespace per line, drop blank lines.

    Written with C-level string methods (and a regex only where a control character is
    present) because this runs on every character of the corpus.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not unicodedata.is_normalized("NFC", text):
        text = unicodedata.normalize("NFC", text)
    if _CONTROL.search(text):
        text = _CONTROL.sub("", text)
    lines = (" ".join(line.split()) for line in text.split("\n"))  # split(): any Unicode space run
    return "\n".join(line for line in lines if line)


def dedup_key_text(text: str) -> str:
    """The form two documents must share to count as exact duplicates: lowercase, single spaces."""
    return " ".join(text.lower().split())


def alpha_fraction(text: str) -> float:
    """Share of letters among non-whitespace characters (0.0 for an all-space text).

    Low values flag tables, code, markup debris and number lists, which teach a language
    model little and inflate the vocabulary with junk. ASCII is counted with byte-level
    deletes; only the (usually few) non-ASCII characters are inspected one by one.
    """
    ascii_part = text.encode("ascii", "ignore")
    letters = len(ascii_part) - len(ascii_part.translate(None, _ASCII_LETTERS))
    spaces = len(ascii_part) - len(ascii_part.translate(None, _ASCII_SPACE))
    if len(ascii_part) != len(text):
        for run in _NON_ASCII.findall(text):
            letters += sum(map(str.isalpha, run))
            spaces += sum(map(str.isspace, run))
    non_space = len(text) - spaces
    return letters / non_space if non_space else 0.0


def repeated_line_fraction(text: str) -> float:
    """Share of a text's lines that repeat an earlier line of it (0.0 for one line).

    Navigation menus, cookie banners, boilerplate footers and scraper loops show up as the same
    line over and over; real prose almost never repeats a whole line (Gopher's filter drops
    documents above 0.3).
    """
    lines = text.split("\n")
    return 1.0 - len(set(lines)) / len(lines)


@dataclass(frozen=True)
class DocFilter:
    """Keep/drop decision with a reason, so every dropped document is accounted for."""

    min_chars: int
    max_chars: int
    min_alpha_fraction: float
    max_repeated_line_fraction: float = 1.0

    def reason_to_drop(self, text: str) -> str | None:
        """None to keep ``text``; otherwise the name of the first filter it fails."""
        if len(text) < self.min_chars:
            return "too_short"
        if len(text) > self.max_chars:
            return "too_long"
        if self.min_alpha_fraction > 0 and alpha_fraction(text) < self.min_alpha_fraction:
            return "low_alpha"
        if (
            self.max_repeated_line_fraction < 1.0
            and repeated_line_fraction(text) > self.max_repeated_line_fraction
        ):
            return "repeated_lines"
        return None
