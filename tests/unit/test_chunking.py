"""Chunking: offsets that map back to the text, overlap, sentence-aware cuts, no slivers."""

from __future__ import annotations

import itertools

import pytest

from llmhost.rag.chunking import Chunk, chunk_document
from llmhost.rag.embeddings.onnx import OnnxEmbedder


def chunks_of(embedder: OnnxEmbedder, text: str, max_tokens: int, overlap: int) -> list[Chunk]:
    return chunk_document("doc", text, embedder.token_spans(text), max_tokens, overlap)


def token_ranges(embedder: OnnxEmbedder, text: str, chunks: list[Chunk]) -> list[range]:
    """Which of the text's tokens each chunk holds (by character offsets)."""
    spans = embedder.token_spans(text)
    ranges = []
    for chunk in chunks:
        inside = [i for i, (s, e) in enumerate(spans) if s >= chunk.start and e <= chunk.end]
        ranges.append(range(inside[0], inside[-1] + 1))
    return ranges


SENTENCES = " ".join(
    f"Sentence {i} reports that protein kinase {i % 9} regulates cell growth in tissue {i}."
    for i in range(60)
)

MIXED = (
    "Café Über naïve résumé 😀 — 数据库很快。IL-6 and TNF-\u03b1 rise (p < 0.05).\n\n"
    + "Second paragraph, with e.g. abbreviations and a URL https://example.org/a?b=c. " * 12
    + "\n\nThird paragraph: the end."
)


def test_every_chunk_maps_back_to_its_text_and_fits_the_model(embedder: OnnxEmbedder) -> None:
    # Given a long text with accents, an emoji, CJK and paragraphs
    text = MIXED * 3
    # When it is chunked at 64 tokens with 16 of overlap
    chunks = chunks_of(embedder, text, 64, 16)
    # Then each chunk is exactly text[start:end], in order, within the limit,
    # and tokenizing it again gives the same token count
    assert len(chunks) > 3
    for index, chunk in enumerate(chunks):
        assert chunk.doc_id == "doc" and chunk.index == index
        assert text[chunk.start : chunk.end] == chunk.text
        assert 0 < chunk.token_count <= 64
        assert embedder.count_tokens(chunk.text) == chunk.token_count
    assert chunks[0].start == 0 and chunks[-1].end == len(text)


def test_chunks_cover_every_token_and_overlap_by_at_most_the_setting(
    embedder: OnnxEmbedder,
) -> None:
    # Given a text of many sentences, chunked with a 24-token overlap
    chunks = chunks_of(embedder, SENTENCES, 96, 24)
    ranges = token_ranges(embedder, SENTENCES, chunks)
    # Then together the chunks hold every token
    covered = set().union(*map(set, ranges))
    assert covered == set(range(len(embedder.token_spans(SENTENCES))))
    # And neighbours share between half the overlap and the whole of it
    for before, after in itertools.pairwise(ranges):
        shared = len(set(before) & set(after))
        assert 12 <= shared <= 24, (before, after)


def test_no_overlap_when_asked_for_none(embedder: OnnxEmbedder) -> None:
    chunks = chunks_of(embedder, SENTENCES, 96, 0)
    for before, after in itertools.pairwise(chunks):
        assert after.start >= before.end


def test_cuts_fall_at_sentence_ends_and_overlaps_start_sentences(embedder: OnnxEmbedder) -> None:
    # Given sentences of about 15 tokens each
    chunks = chunks_of(embedder, SENTENCES, 96, 24)
    # Then every chunk ends a sentence and every chunk starts one
    assert all(chunk.text.endswith(".") for chunk in chunks)
    assert all(chunk.text.startswith("Sentence ") for chunk in chunks)


def test_a_paragraph_end_wins_over_a_sentence_end_nearby(embedder: OnnxEmbedder) -> None:
    # Given two paragraphs, the break a few tokens before where a plain cut would go
    first = "Alpha beta gamma delta. " * 9  # about 45 tokens
    second = "Epsilon zeta eta theta. " * 12
    text = first.strip() + "\n\n" + second.strip()
    # When chunked at 50 tokens
    chunks = chunks_of(embedder, text, 50, 0)
    # Then the first chunk is exactly the first paragraph
    assert chunks[0].text == first.strip()


def test_no_tiny_trailing_chunk(embedder: OnnxEmbedder) -> None:
    # Given a text just over the limit (a plain cut would leave a 3-token tail)
    words = " ".join(f"word{i}" for i in range(200))
    text = words[: embedder.token_spans(words)[66][1]]
    assert embedder.count_tokens(text) == 67
    # When chunked at 64 with overlap 8
    chunks = chunks_of(embedder, text, 64, 8)
    # Then the two chunks are balanced, neither is a sliver
    assert len(chunks) == 2
    assert min(chunk.token_count for chunk in chunks) >= 30


def test_a_short_text_is_one_chunk_and_an_empty_one_none(embedder: OnnxEmbedder) -> None:
    text = "  A short note about Qdrant.  \n"
    (chunk,) = chunks_of(embedder, text, 64, 8)
    assert chunk.text == "A short note about Qdrant."
    assert (chunk.start, chunk.end) == (2, 28)
    assert chunks_of(embedder, "   \n\t ", 64, 8) == []


def test_text_without_word_gaps_is_still_cut_within_the_limit(embedder: OnnxEmbedder) -> None:
    # Given a long run of tokens with no spaces between them (BERT splits at punctuation)
    text = "x1;y2,z3/" * 100
    chunks = chunks_of(embedder, text, 40, 8)
    # Then every chunk fits and the offsets still map back
    assert len(chunks) > 5
    assert all(c.token_count <= 40 and text[c.start : c.end] == c.text for c in chunks)


def test_same_input_gives_same_chunks(embedder: OnnxEmbedder) -> None:
    assert chunks_of(embedder, MIXED, 48, 12) == chunks_of(embedder, MIXED, 48, 12)


@pytest.mark.parametrize(("max_tokens", "overlap"), [(4, 0), (64, 32), (64, -1)])
def test_bad_settings_are_refused(max_tokens: int, overlap: int) -> None:
    with pytest.raises(ValueError, match="must be"):
        chunk_document("doc", "text", [(0, 4)], max_tokens, overlap)
