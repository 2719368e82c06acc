"""BM25-style sparse vectors for Qdrant's ``Modifier.IDF``.

Qdrant multiplies each query weight by the term's inverse document frequency, computed over
the collection at query time (``ln(1 + (N - df + 0.5) / (df + 0.5))``), and scores a point by
the dot product with the stored vector. So the stored vector carries BM25's term-frequency
part and the query carries one per unique term; their product is BM25.

Terms come from a small analyzer (lowercase, Unicode word split, English stopwords, Snowball
English stemmer) and map to sparse indices by a stable 32-bit hash (blake2b), so the same
term gets the same index in every process, version and collection. With tens of thousands
of distinct terms in a collection, the chance that two share an index is about n^2 / 2^33
(under 1% even at 10^4 terms, each such pair merely adding their counts together).
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass
from functools import cache, lru_cache

# Lucene's classic BM25 constants. On SciFact, k1 0.9-1.5 and b 0.5-0.9 moved nDCG@10 by at
# most 0.003 either way (noise), so the well-known values stay.
DEFAULT_K1 = 1.2
DEFAULT_B = 0.75
# Typical chunk length in analyzed terms, fixed per collection and kept in its metadata. The
# chunker caps chunks at 254 wordpieces, so the typical length depends on that cap far more
# than on the corpus: SciFact's chunks average 87 terms (about 0.45 per wordpiece: stopwords,
# punctuation and ##subwords fall away). A fixed value means a stored vector never goes stale
# as documents come and go; a running average would need every vector rewritten to stay
# exact. (Qdrant's own BM25 in fastembed makes the same choice.) 87 vs 120 vs 200 changed
# SciFact's nDCG@10 by under 0.004.
DEFAULT_AVG_LEN = 90.0

_WORD = re.compile(r"\w+", re.UNICODE)

# English function words (close to the NLTK/Snowball lists, without the contractions the
# \w+ split cannot produce whole). Negations stay out: "not" carries no topic either.
_STOPWORDS = """
    a about above after again against all am an and any are as at be because been before
    being below between both but by can could did do does doing down during each few for
    from further had has have having he her here hers herself him himself his how i if in
    into is it its itself just me more most my myself no nor not now of off on once only or
    other our ours ourselves out over own same she should so some such than that the their
    theirs them themselves then there these they this those through to too under until up
    very was we were what when where which while who whom why will with would you your
    yours yourself yourselves s t d ll m o re ve y
"""
STOPWORDS = frozenset(_STOPWORDS.split())


@dataclass(frozen=True)
class SparseVector:
    """Parallel tuples of term indices (unique, ascending) and their weights."""

    indices: tuple[int, ...]
    values: tuple[float, ...]


@dataclass(frozen=True)
class Bm25Params:
    """BM25 document-side parameters: ``k1`` (term-frequency saturation, > 0), ``b``
    (length normalization, 0..1) and ``avg_len`` (typical chunk length in terms, > 0)."""

    k1: float = DEFAULT_K1
    b: float = DEFAULT_B
    avg_len: float = DEFAULT_AVG_LEN

    def __post_init__(self) -> None:
        if self.k1 <= 0 or not 0 <= self.b <= 1 or self.avg_len <= 0:
            raise ValueError(f"BM25 parameters out of range: {self}")


def analyze(text: str) -> list[str]:
    """The terms of ``text`` in order: lowercased words, stopwords dropped, stemmed."""
    return [_stem(word) for word in _WORD.findall(text.lower()) if word not in STOPWORDS]


def term_index(term: str) -> int:
    """The sparse index of ``term``: the first 4 bytes of its blake2b digest, unsigned."""
    return int.from_bytes(hashlib.blake2b(term.encode(), digest_size=4).digest(), "little")


def document_vector(text: str, params: Bm25Params | None = None) -> SparseVector:
    """The stored vector of a chunk: ``tf*(k1+1) / (tf + k1*(1 - b + b*len/avg_len))``."""
    params = params or Bm25Params()
    terms = analyze(text)
    counts = Counter(_index(term) for term in terms)
    norm = params.k1 * (1 - params.b + params.b * len(terms) / params.avg_len)
    indices = sorted(counts)
    return SparseVector(
        indices=tuple(indices),
        values=tuple(counts[i] * (params.k1 + 1) / (counts[i] + norm) for i in indices),
    )


def query_vector(text: str) -> SparseVector:
    """The query vector: weight 1 per unique term (Qdrant applies the IDF)."""
    indices = sorted({_index(term) for term in analyze(text)})
    return SparseVector(indices=tuple(indices), values=(1.0,) * len(indices))


@cache
def _stemmer() -> object:
    import snowballstemmer

    return snowballstemmer.stemmer("english")


@lru_cache(maxsize=200_000)
def _stem(word: str) -> str:
    # The Snowball stemmer is pure Python; a corpus repeats its words, so cache them.
    return _stemmer().stemWord(word)  # type: ignore[attr-defined, no-any-return]


@lru_cache(maxsize=200_000)
def _index(term: str) -> int:
    return term_index(term)
