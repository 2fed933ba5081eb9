"""MinHash signatures and LSH banding, vectorized with NumPy.

A document is a set of word n-gram shingles. Each shingle is hashed once to 32 bits (a
polynomial hash over the UTF-8 bytes of each word, then over the n words, computed with
array operations rather than a Python call per word). ``num_perm`` random universal hashes
``h_k(x) = (a_k * x + b_k) mod p`` with ``p = 2**32 - 5`` stand in for permutations: with
``x < 2**32`` and ``a_k, b_k < p`` the product fits in uint64, so one ``(num_perm, n_shingles)``
array operation and a min over shingles give a signature. The fraction of equal signature
entries of two documents estimates the Jaccard similarity of their shingle sets.

LSH splits a signature into ``bands`` of ``rows`` entries; documents that agree on all rows of
some band become candidate pairs. Buckets are found by sorting each band's hash, which is the
same as a dict of buckets but runs as array code and needs no per-document Python objects.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

PRIME = np.uint64(4_294_967_291)  # largest prime below 2**32
_WORD_MULT = np.uint64(0x100000001B3)  # FNV-1 64-bit prime: odd, spreads bytes over the word
_SHINGLE_MULT = np.uint64(0x9E3779B97F4A7C15)  # golden-ratio constant, odd
_CHUNK = 16_384  # shingles per (num_perm, chunk) block: 16 MiB of uint64 at num_perm=128


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer: every input bit affects every output bit (avalanche)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def word_hashes(text: str) -> np.ndarray:
    """64-bit hash of each word of a text whose words are separated by single spaces -> (n_words,) uint64."""
    data = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    is_space = data == 0x20
    word_of_byte = np.cumsum(is_space)[~is_space]  # (n_bytes_in_words,) word index of each byte
    if word_of_byte.size == 0:
        return np.zeros(0, dtype=np.uint64)
    values = data[~is_space].astype(np.uint64) + np.uint64(1)
    starts = np.flatnonzero(np.r_[True, word_of_byte[1:] != word_of_byte[:-1]])
    lengths = np.diff(np.r_[starts, values.size])
    pos = np.arange(values.size) - np.repeat(starts, lengths)  # position of each byte inside its word
    powers = np.cumprod(np.full(int(lengths.max()), _WORD_MULT, dtype=np.uint64))  # wraps mod 2**64
    return _mix64(np.add.reduceat(values * powers[pos], starts))


def shingle_hashes(text: str, ngram: int) -> np.ndarray:
    """Distinct 32-bit hashes of the word n-grams of ``text`` -> (n_shingles,) uint64 values < 2**32.

    Texts shorter than ``ngram`` words become a single shingle of all their words, so short
    documents still get a meaningful signature.
    """
    words = word_hashes(text)
    if words.size == 0:
        return words
    k = min(ngram, words.size)
    m = words.size - k + 1
    acc = words[:m].copy()
    for j in range(1, k):
        acc = acc * _SHINGLE_MULT + words[j : j + m]  # (m,) polynomial over the n-gram, wraps mod 2**64
    acc = _mix64(acc)
    return np.unique((acc >> np.uint64(32)) ^ (acc & np.uint64(0xFFFFFFFF)))


class MinHasher:
    """``num_perm`` seeded universal hash functions, shared by every document of one dedup run."""

    def __init__(self, num_perm: int, ngram: int, rng: np.random.Generator) -> None:
        self.num_perm = num_perm
        self.ngram = ngram
        self.a = rng.integers(1, int(PRIME), size=(num_perm, 1), dtype=np.uint64)  # (P, 1)
        self.b = rng.integers(0, int(PRIME), size=(num_perm, 1), dtype=np.uint64)  # (P, 1)

    def signatures(self, texts: Sequence[str]) -> np.ndarray:
        """MinHash signatures of normalized texts -> (len(texts), num_perm) uint32.

        Shingles of all texts are concatenated and processed in fixed-size column blocks, so
        many short documents share one array operation and a huge one never needs more than
        one block of memory. An empty text gets the all-``PRIME`` signature.
        """
        shingles = [shingle_hashes(t, self.ngram) for t in texts]
        sizes = np.array([s.size for s in shingles], dtype=np.int64)
        x = np.concatenate(shingles) if shingles else np.zeros(0, dtype=np.uint64)  # (S,)
        doc_of = np.repeat(np.arange(len(texts)), sizes)  # (S,) document of each shingle
        sig = np.full((len(texts), self.num_perm), PRIME, dtype=np.uint64)  # (N, P)
        buf = np.empty((self.num_perm, min(_CHUNK, x.size)), dtype=np.uint64)  # reused: no temporaries
        for lo in range(0, x.size, _CHUNK):
            xc, dc = x[lo : lo + _CHUNK], doc_of[lo : lo + _CHUNK]
            hashed = buf[:, : xc.size]  # (P, c)
            np.multiply(self.a, xc[None, :], out=hashed)
            np.add(hashed, self.b, out=hashed)
            np.remainder(hashed, PRIME, out=hashed)  # (a*x + b) mod p, exact in uint64
            starts = np.flatnonzero(np.r_[True, dc[1:] != dc[:-1]])  # first column of each doc piece
            piece_min = np.minimum.reduceat(hashed, starts, axis=1).T  # (pieces, P)
            docs = dc[starts]  # distinct: a document's shingles are contiguous
            sig[docs] = np.minimum(sig[docs], piece_min)
        return sig.astype(np.uint32)


def jaccard_estimate(sig_a: np.ndarray, sig_b: np.ndarray) -> np.ndarray:
    """Estimated Jaccard similarity: share of equal entries along the last axis."""
    return np.mean(sig_a == sig_b, axis=-1)


def optimal_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) minimizing the area of false positives below and false negatives above ``threshold``.

    The candidate probability of two documents with similarity s is ``1 - (1 - s**rows)**bands``;
    its S-curve should switch from 0 to 1 at the threshold.
    """
    best, best_cost = (1, num_perm), np.inf
    grid = np.linspace(0.0, 1.0, 1001)
    below, above = grid[grid < threshold], grid[grid >= threshold]
    for rows in range(1, num_perm + 1):
        bands = num_perm // rows
        false_pos = np.trapezoid(1 - (1 - below**rows) ** bands, below) if below.size > 1 else 0.0
        false_neg = np.trapezoid((1 - above**rows) ** bands, above) if above.size > 1 else 0.0
        if false_pos + false_neg < best_cost:
            best, best_cost = (bands, rows), false_pos + false_neg
    return best


def _band_keys(block: np.ndarray) -> np.ndarray:
    """One 64-bit key per row of a (N, rows) band block -> (N,) uint64."""
    key = np.zeros(block.shape[0], dtype=np.uint64)
    for col in range(block.shape[1]):
        key = _mix64(key * _SHINGLE_MULT + block[:, col].astype(np.uint64))
    return key


def candidate_pairs(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """Pairs (i, j), i < j, that share a bucket in at least one band -> (M, 2) int64, unique rows.

    Inside a bucket every member is paired with the bucket's first (lowest-index) member and
    with its predecessor: O(bucket size) pairs instead of all O(size**2), which is enough
    for union-find to join the bucket while verification still checks real neighbours.
    """
    n = signatures.shape[0]
    found: list[np.ndarray] = [np.zeros((0, 2), dtype=np.int64)]
    for band in range(bands):
        keys = _band_keys(signatures[:, band * rows : (band + 1) * rows])
        order = np.argsort(keys, kind="stable")  # stable: indices ascend inside a bucket
        same = keys[order][1:] == keys[order][:-1]  # (n-1,) position i+1 continues i's bucket
        if not same.any():
            continue
        group_start = np.maximum.accumulate(np.where(np.r_[False, same], 0, np.arange(n)))
        first = order[group_start]  # (n,) lowest index of each position's bucket
        chain = np.stack([order[:-1][same], order[1:][same]], axis=1)
        star = np.stack([first[1:][same], order[1:][same]], axis=1)
        found += [chain, star]
    return np.unique(np.concatenate(found), axis=0)


def cluster_roots(n: int, pairs: np.ndarray) -> np.ndarray:
    """Union-find over ``pairs``: for each of n items, the lowest index in its cluster -> (n,) int64."""
    graph = coo_matrix((np.ones(len(pairs), dtype=np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    roots = np.full(labels.max() + 1 if n else 0, n, dtype=np.int64)
    np.minimum.at(roots, labels, np.arange(n))
    return roots[labels]
