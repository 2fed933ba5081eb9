"""The special tokens of each model family, at fixed ids, and where they go in a packed row.

BERT's five (``[PAD] [UNK] [CLS] [SEP] [MASK]``) and T5's three (``<pad> </s> <unk>``) plus its
100 sentinels ``<extra_id_0>`` .. ``<extra_id_99>`` (one per corrupted span, used in order).
The tokenizer stage puts them at ids 0, 1, 2, ... in this order; the pack stage writes their
ids into ``pack.json`` under ``keys``, which is how the engine learns them (it never imports
this module). One departure from Google's T5 vocabulary, which puts the sentinels at the top of
the id range: here they follow the three specials, so a vocabulary of any size keeps them at
the same ids and the id check is the same for every size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

Family = Literal["bert", "t5"]
NUM_SENTINELS = 100


@dataclass(frozen=True)
class SpecialTokens:
    """One family's special tokens; ``keys`` maps each pack.json key to its token."""

    family: Family
    keys: dict[str, str]  # pack.json key -> token, in id order
    sentinels: int = 0

    @property
    def tokens(self) -> tuple[str, ...]:
        """Every special token, index == id."""
        return (*self.keys.values(), *(f"<extra_id_{i}>" for i in range(self.sentinels)))

    @property
    def ids(self) -> dict[str, int]:
        """pack.json key -> id, e.g. {"pad_id": 0, ...}."""
        return {key: index for index, key in enumerate(self.keys)}

    @property
    def sentinel_ids(self) -> list[int]:
        return list(range(len(self.keys), len(self.keys) + self.sentinels))

    @property
    def unk(self) -> str:
        return self.keys["unk_id"]

    @property
    def row_prefix(self) -> int | None:
        """Id every packed row starts with: BERT's [CLS]; T5 rows start with text."""
        return self.ids.get("cls_id")

    @property
    def separator(self) -> int:
        """Id that closes each document in a packed row: [SEP], or T5's </s>."""
        return self.ids["sep_id"] if "sep_id" in self.ids else self.ids["eos_id"]


BERT = SpecialTokens(
    "bert", {"pad_id": "[PAD]", "unk_id": "[UNK]", "cls_id": "[CLS]", "sep_id": "[SEP]", "mask_id": "[MASK]"}
)
T5 = SpecialTokens("t5", {"pad_id": "<pad>", "eos_id": "</s>", "unk_id": "<unk>"}, sentinels=NUM_SENTINELS)
FAMILIES: dict[str, SpecialTokens] = {"bert": BERT, "t5": T5}


def family_of(has_token: Callable[[str], bool], where: str) -> SpecialTokens:
    """The one family whose padding token the vocabulary holds (how a saved tokenizer says which it is)."""
    found = [specials for specials in FAMILIES.values() if has_token(specials.tokens[0])]
    if len(found) != 1:
        pads = ", ".join(f"{s.tokens[0]} ({s.family})" for s in FAMILIES.values())
        holds = "both" if found else "neither"
        raise ValueError(f"{where}: the vocabulary holds {holds} of the families' padding tokens {pads}")
    return found[0]
