"""BM25 sparse vectors: the analyzer, stable term indices, saturation and length norm."""

from __future__ import annotations

import math

import pytest

from llmhost.rag.sparse import (
    Bm25Params,
    SparseVector,
    analyze,
    document_vector,
    query_vector,
    term_index,
)


def weight(vector: SparseVector, term: str) -> float:
    return dict(zip(vector.indices, vector.values, strict=True)).get(term_index(term), 0.0)


def test_analyzer_lowercases_splits_unicode_words_drops_stopwords_and_stems() -> None:
    # Given mixed case, punctuation, accents and stopwords
    terms = analyze("The Running studies of CELLS, über Café-culture; and naïve T-cells!")
    # Then words are lowercased, split at punctuation, stemmed, and function words are gone
    assert terms == ["run", "studi", "cell", "über", "café", "cultur", "naïv", "cell"]


def test_term_indices_are_stable_32_bit_values() -> None:
    # The index is part of every stored vector: it must never change between versions.
    assert term_index("cell") == 1465478393
    assert all(0 <= term_index(t) < 2**32 for t in ("a", "cell", "数据", "x" * 1000))
    assert term_index("cell") != term_index("cells")


def test_document_vector_is_bm25_term_frequency_part() -> None:
    # Given a chunk of exactly the average length
    params = Bm25Params(k1=1.2, b=0.75, avg_len=4)
    vector = document_vector("kinase kinase kinase growth", params)
    # Then each weight is tf*(k1+1)/(tf+k1), indices sorted and unique
    assert weight(vector, "kinas") == pytest.approx(3 * 2.2 / (3 + 1.2))
    assert weight(vector, "growth") == pytest.approx(1 * 2.2 / (1 + 1.2))
    assert list(vector.indices) == sorted(set(vector.indices))


def test_term_frequency_saturates_below_k1_plus_one() -> None:
    params = Bm25Params(k1=1.2, b=0.0, avg_len=10)
    weights = [weight(document_vector("gene " * tf, params), "gene") for tf in (1, 2, 5, 50)]
    assert weights == sorted(weights)
    assert weights[-1] < 2.2 and weights[-1] - weights[-2] < weights[1] - weights[0]


def test_longer_chunks_weigh_a_term_less_unless_b_is_zero() -> None:
    short, long = "gene expression", "gene expression " + "tissue sample " * 20
    normalized = Bm25Params(b=0.75, avg_len=10)
    flat = Bm25Params(b=0.0, avg_len=10)
    assert weight(document_vector(long, normalized), "gene") < weight(
        document_vector(short, normalized), "gene"
    )
    assert weight(document_vector(long, flat), "gene") == pytest.approx(
        weight(document_vector(short, flat), "gene")
    )


def test_query_vector_has_weight_one_per_unique_term() -> None:
    vector = query_vector("Cells and cell growth, the growth of cells")
    assert sorted(vector.indices) == sorted({term_index("cell"), term_index("growth")})
    assert vector.values == (1.0, 1.0)


def test_a_text_of_only_stopwords_has_no_terms() -> None:
    assert query_vector("what is it and how is that") == SparseVector((), ())
    assert document_vector("   ") == SparseVector((), ())


def test_query_times_idf_dot_document_is_bm25() -> None:
    # Given the IDF Qdrant applies, ln(1 + (N - df + 0.5) / (df + 0.5))
    params = Bm25Params(k1=1.2, b=0.75, avg_len=3)
    docs = ["rare kinase assay", "common assay result", "common result again"]
    vectors = [document_vector(d, params) for d in docs]
    n = len(docs)

    def idf(term: str) -> float:
        df = sum(term in analyze(d) for d in docs)
        return math.log(1 + (n - df + 0.5) / (df + 0.5))

    query = query_vector("kinase assay")
    assert set(query.indices) == {term_index("kinas"), term_index("assay")}
    # When each document is scored as Qdrant does: sum over query terms of 1 * idf * weight
    scores = [sum(idf(t) * weight(v, t) for t in ("kinas", "assay")) for v in vectors]
    # Then the document with the rare term ranks first, the one with neither scores zero
    assert scores[0] > scores[1] > scores[2] == 0


@pytest.mark.parametrize("bad", [{"k1": 0}, {"b": 1.5}, {"avg_len": 0}])
def test_bm25_parameters_are_checked(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="out of range"):
        Bm25Params(**bad)
