import hashlib
import json
import re
import unicodedata

import pytest

from assets.tables import chunks_to_table, table_to_chunks
from retrieval import Chunker, Document, point_id
from tests.conftest import BACKENDS


def make_chunker(dense_encoder, max_tokens=64, overlap=8):
    return Chunker(dense_encoder.tokenizer, max_tokens, overlap)


def n_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text)["input_ids"])  # with special tokens, as the model sees it


def test_chunks_never_exceed_the_token_budget(dense_encoder):
    chunker = make_chunker(dense_encoder, max_tokens=64, overlap=8)
    text = " ".join(f"sentence number {i} talks about retrieval and ranking." for i in range(200))
    chunks = chunker.chunk(Document("d", text, title="A title that also costs tokens"))
    assert len(chunks) > 5
    for c in chunks:
        assert n_tokens(dense_encoder.tokenizer, c.embed_text) <= 64
        assert c.text in text  # an exact slice of the source


def test_model_max_length_caps_the_budget(dense_encoder):
    chunker = Chunker(dense_encoder.tokenizer, dense_encoder.max_tokens, 32)
    text = "word " * 5000
    for c in chunker.chunk(Document("d", text)):
        assert n_tokens(dense_encoder.tokenizer, c.embed_text) <= dense_encoder.max_tokens


def test_chunks_overlap_and_cover_the_whole_text(dense_encoder):
    chunker = make_chunker(dense_encoder, max_tokens=32, overlap=8)
    words = [f"w{i}" for i in range(300)]
    chunks = chunker.chunk(Document("d", " ".join(words)))
    assert chunks[0].text.startswith("w0 ") and chunks[-1].text.endswith("w299")
    for a, b in zip(chunks, chunks[1:], strict=False):
        assert a.text.split()[-1] in b.text  # consecutive chunks share the overlap


def test_extremely_long_single_token_is_split_within_budget(dense_encoder):
    chunker = make_chunker(dense_encoder, max_tokens=48, overlap=4)
    text = " ".join(["x" * 5000, "normal words follow"] * 40)  # each 5000-char word is one [UNK] token
    chunks = chunker.chunk(Document("d", text))
    assert len(chunks) > 1
    assert all(n_tokens(dense_encoder.tokenizer, c.embed_text) <= 48 for c in chunks)
    assert chunks[-1].text.endswith("normal words follow")


def test_ids_are_deterministic_and_hash_tracks_content(dense_encoder):
    chunker = make_chunker(dense_encoder)
    a = chunker.chunk(Document("doc-1", "alpha beta gamma", "t", {"k": 1}))[0]
    b = chunker.chunk(Document("doc-1", "alpha beta gamma", "t", {"k": 1}))[0]
    assert a.id == b.id == point_id("doc-1", 0)
    assert a.content_hash == b.content_hash
    changed = chunker.chunk(Document("doc-1", "alpha beta delta", "t", {"k": 1}))[0]
    assert changed.id == a.id and changed.content_hash != a.content_hash
    meta_changed = chunker.chunk(Document("doc-1", "alpha beta gamma", "t", {"k": 2}))[0]
    assert meta_changed.content_hash != a.content_hash
    assert point_id("doc-1", 1) != point_id("doc-1", 0) != point_id("doc-2", 0)


def test_chunks_start_and_end_between_words(dense_encoder):
    chunker = make_chunker(dense_encoder, max_tokens=32, overlap=8)
    # long words split into several word pieces each: a token window would cut them in half
    words = [f"electroencephalography{i} antidisestablishmentarianism" for i in range(60)]
    text = " ".join(words)
    vocabulary = set(text.split())
    chunks = chunker.chunk(Document("d", text))
    assert len(chunks) > 5
    for c in chunks:
        assert set(c.text.split()) <= vocabulary, c.text  # every word whole
        assert n_tokens(dense_encoder.tokenizer, c.embed_text) <= 32
    assert chunks[0].text.startswith(words[0]) and chunks[-1].text.endswith(words[-1])


def test_chunks_start_and_end_between_identifiers_in_code(dense_encoder):
    # "_" (connector punctuation) joins a snake_case name into one word: no chunk starts with "_collection_info"
    chunker = make_chunker(dense_encoder, max_tokens=64, overlap=8)
    text = "\n".join(f"    value_{k} = client.get_collection_info('snapshot_{k}')" for k in range(60))
    chunks = chunker.chunk(Document("code.md", text))
    assert len(chunks) > 5
    position = 0
    for c in chunks:
        start = text.index(c.text, position)
        end, position = start + len(c.text), start + 1
        for before, after in ((text[start - 1 : start], c.text[0]), (c.text[-1], text[end : end + 1])):
            assert not (re.fullmatch(r"\w", before) and re.fullmatch(r"\w", after)), (c.chunk_index, c.text[:20])


IDENTIFIERS = [
    "https://status.example.com/incidents/2024-outage/postmortem.html",
    "security-team@example.org",
    "os.path.join",
    "v2.3.1",
    "IL-6",
    "JIRA-1234",
]


@pytest.mark.parametrize("overlap", [0, 8])
def test_chunks_never_cut_a_url_address_version_or_ticket_id(dense_encoder, overlap):
    # a user reads each of these as one word: sliding it across the chunk boundaries, a chunk ended "See v2.3."
    # or "See JIRA-", or started "://status.example.com/..." (and with no overlap, no chunk held it whole)
    chunker = Chunker(dense_encoder.tokenizer, 64, overlap, at_whitespace=True)  # HYBRID_RAG_CHUNK_AT_WHITESPACE
    filler = "The service restarted cleanly and the queue drained overnight. "
    for ident in IDENTIFIERS:
        for pad in range(0, 40, 3):
            text = filler * 4 + "word " * pad + f"See {ident} for details. " + filler * 4
            chunks = chunker.chunk(Document("d", text))
            assert len(chunks) > 1
            for c in chunks:
                assert text[c.start : c.end] == c.text
                assert c.start == 0 or text[c.start - 1].isspace(), (ident, pad, c.text[:20])
                assert c.end == len(text) or text[c.end].isspace(), (ident, pad, c.text[-20:])
            assert any(ident in c.text for c in chunks), (ident, pad)


def test_a_url_longer_than_a_chunk_is_cut_between_its_words(dense_encoder):
    chunker = Chunker(dense_encoder.tokenizer, 32, 4, at_whitespace=True)
    url = "https://example.com/" + "/".join(f"part{i}" for i in range(40))
    text = f"Before the link. {url} After the link."
    chunks = chunker.chunk(Document("d", text))
    assert chunks[0].text.startswith("Before the link. ") and chunks[-1].text.endswith(" After the link.")
    for c in chunks:
        assert text[c.start : c.end] == c.text
        assert n_tokens(dense_encoder.tokenizer, c.embed_text) <= 32
        inside = [c.start, c.end] if c.start > 0 and c.end < len(text) else []
        for cut in inside:  # never inside "part12": between a letter/digit and a "/" or ":" or "."
            assert not (text[cut - 1].isalnum() and text[cut].isalnum()), c.text
    assert len(chunks) > 3  # the URL alone fills more than one chunk


def test_chunks_keep_whole_characters_combining_marks_and_emoji_selectors(dense_encoder):
    # the tokenizer drops combining marks (NFD accents, Vietnamese horn and hook) and U+FE0F: a window ending at
    # the last token's offset would store "pho", "cafe" and a bare heart
    chunker = make_chunker(dense_encoder)
    for text in [
        unicodedata.normalize("NFD", "Tôi yêu phở"),
        unicodedata.normalize("NFD", "Rendez-vous au café"),
        "We love it \u2764\ufe0f",
        "A family \U0001f468\u200d\U0001f469\u200d\U0001f467",
    ]:
        assert [c.text for c in chunker.chunk(Document("d", text))] == [text]
    # several windows over NFD text: each is a slice that starts and ends between whole characters
    text = unicodedata.normalize("NFD", " ".join(f"{i} crème brûlée à Hà Nội phở ❤️ déjà vu" for i in range(80)))
    chunks = chunker.chunk(Document("d", text))
    assert len(chunks) > 3
    for c in chunks:
        assert c.text in text
        assert unicodedata.category(c.text[0])[0] != "M" and not c.text.endswith("\u2764")
        assert set(c.text.split()) <= set(text.split()), (c.text[:12], c.text[-12:])  # words whole, marks too


def test_chunks_start_and_end_between_words_in_hindi(dense_encoder):
    # Devanagari vowel signs and the virama are marks, not alphanumeric: they belong to their word
    chunker = Chunker(dense_encoder.tokenizer, dense_encoder.max_tokens, 32)
    text = " ".join(f"नई दिल्ली भारत की राजधानी है और यहाँ संसद भवन है {i}।" for i in range(60))
    vocabulary = set(text.split())
    chunks = chunker.chunk(Document("hi", text))
    assert len(chunks) > 3
    for c in chunks:
        assert set(c.text.split()) <= vocabulary, (c.text[:12], c.text[-12:])


def test_korean_chunks_fit_the_model_with_special_tokens(dense_encoder):
    # each Hangul syllable is 2-3 jamo tokens sharing its offsets: a window may not end between them
    chunker = Chunker(dense_encoder.tokenizer, dense_encoder.max_tokens, 32)
    text = " ".join(f"서울은 대한민국의 수도이며 한강이 도시를 가로지릅니다 {i}." for i in range(200))
    chunks = chunker.chunk(Document("ko", text))
    assert len(chunks) > 10
    vocabulary = set(text.split())
    for c in chunks:
        assert n_tokens(dense_encoder.tokenizer, c.embed_text) <= dense_encoder.max_tokens
        assert set(c.text.split()) <= vocabulary
    # one word of Hangul longer than the budget is split, still within it
    for c in chunker.chunk(Document("ko", "가나다라마바사" * 200)):
        assert n_tokens(dense_encoder.tokenizer, c.embed_text) <= dense_encoder.max_tokens


def test_chunks_mostly_unknown_to_the_dense_tokenizer_are_flagged(dense_encoder):
    chunker = make_chunker(dense_encoder)
    thai = chunker.chunk(Document("th", "มวยไทยเป็นศิลปะการต่อสู้ที่ใช้หมัดเท้าเข่าและศอก"))
    english = chunker.chunk(Document("en", "Espresso is brewed by forcing hot water through ground coffee."))
    assert [c.unknown for c in thai] == [True] and [c.unknown for c in english] == [False]


def test_long_documents_are_chunked_without_a_false_tokenizer_warning(dense_encoder):
    import logging

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("transformers.tokenization_utils_base")
    logger.addHandler(handler)
    dense_encoder.tokenizer.deprecation_warnings.pop("sequence-length-is-longer-than-the-specified-maximum", None)
    try:
        chunks = make_chunker(dense_encoder).chunk(Document("d", "a long text with many words " * 300))
    finally:
        logger.removeHandler(handler)
    assert len(chunks) > 10
    assert not [r for r in records if "sequence length is longer" in r.getMessage()]


def test_a_title_taking_half_the_budget_still_moves_the_window_forward(dense_encoder):
    """Budget 32 (34 minus [CLS]/[SEP]), a 16-token title and a 16-token overlap leave a text window equal to
    the overlap: the window must still advance (the first version computed a step of 0 here)."""
    chunker = Chunker(dense_encoder.tokenizer, max_tokens=34, overlap=16)
    title = " ".join(["alpha"] * 16)
    assert chunker.budget == 32 and chunker.overlap == 16 and chunker._count(title + "\n") == 16
    words = [f"w{i}" for i in range(100)]
    text = " ".join(words)
    chunks = chunker.chunk(Document("d", text, title=title))
    assert chunks[0].title == title  # not truncated: exactly half the budget is allowed
    assert chunks[0].text.startswith("w0 ") and chunks[-1].text.endswith("w99")
    assert [c.chunk_index for c in chunks] == list(range(len(chunks)))
    assert len(chunks) < len(words)  # every window holds several words
    for c in chunks:
        assert n_tokens(dense_encoder.tokenizer, c.embed_text) <= 34
    covered = " ".join(c.text for c in chunks).split()
    assert set(covered) == set(words)


LONG_TITLE = "Proceedings of the workshop on " + " ".join(f"topic{i}" for i in range(120))
WOMBATS = " ".join(f"wombat{i} burrows" for i in range(60))


def test_a_long_title_is_kept_whole_and_only_its_head_is_embedded(dense_encoder):
    chunks = make_chunker(dense_encoder).chunk(Document("t1", WOMBATS, f" {LONG_TITLE} "))
    assert len(chunks) == 7 and all(c.title == LONG_TITLE for c in chunks)  # stored whole (payload, hits)
    head = "Proceedings of the workshop on topic0 topic1 topic2 topic3 topic4"  # budget // 4 = 15 tokens
    assert all(c.embed_title == head and c.embed_text == f"{head}\n{c.text}" for c in chunks)
    assert all(n_tokens(dense_encoder.tokenizer, c.embed_text) <= 64 for c in chunks)
    # what is embedded is what the first version embedded (same embedding cache keys: no re-embedding)
    joined = "\n".join(c.embed_text for c in chunks).encode()
    assert hashlib.sha256(joined).hexdigest() == "56358d9d27cae589f359ae7fdb7073ed90f839c92c03049f52c5547ffaade66d"
    # a change past the embedded head is still a change of the stored chunk
    other = make_chunker(dense_encoder).chunk(Document("t1", WOMBATS, LONG_TITLE + " and more"))
    assert [c.embed_text for c in other] == [c.embed_text for c in chunks]
    assert all(a.content_hash != b.content_hash for a, b in zip(chunks, other, strict=True))
    # the Dagster chunks table keeps both titles
    back = table_to_chunks(chunks_to_table(chunks))
    assert [(c.title, c.embed_text, c.content_hash) for c in back] == [
        (c.title, c.embed_text, c.content_hash) for c in chunks
    ]


def test_a_short_title_chunks_as_before(dense_encoder):
    """Content hash and embedded text as the first version made them: upgrading re-embeds nothing."""
    [chunk] = make_chunker(dense_encoder).chunk(Document("doc-1", "alpha beta gamma", "  Boiler manual ", {"k": 1}))
    assert (chunk.title, chunk.embed_title, chunk.embed_text) == (
        "Boiler manual",
        None,
        "Boiler manual\nalpha beta gamma",
    )
    assert chunk.content_hash == "3f2349879e7b909d65b23ceb7b543016503243bcbe53152b489c8a2b558dd5dc"


@pytest.mark.parametrize("backend", BACKENDS)
def test_hits_carry_the_whole_long_title(indexed_stack, backend):
    stack = indexed_stack(backend, [Document("t1", "Body text about wombats.", LONG_TITLE)], collection=f"t-{backend}")
    try:
        [hit] = stack.retriever().search("wombats", k=1)
        assert hit.title == LONG_TITLE
        [node] = stack.retriever().as_langchain().invoke("wombats", k=1)
        assert node.metadata["title"] == LONG_TITLE
    finally:
        stack.close()


def test_chunk_at_whitespace_off_keeps_the_earlier_fingerprints(tmp_path, dense_encoder, sparse_encoder):
    # off by default (it cost SciFact test nDCG@10 0.001): documents chunked as before keep their fingerprints,
    # so --sync rewrites nothing; on, every document's fingerprint changes (the collection's schema records it too)
    from retrieval import RetrievalSettings, RetrievalStack

    doc = Document("d", "See JIRA-1234 for details.")
    prints = []
    for on in (False, True):
        settings = RetrievalSettings(qdrant_path=tmp_path / str(on), chunk_at_whitespace=on)
        with RetrievalStack(settings, dense=dense_encoder, sparse=sparse_encoder) as stack:
            indexer = stack.indexer()
            assert indexer.chunker.at_whitespace is on
            prints.append(indexer.fingerprint(doc))
    raw = [doc.id, doc.title, doc.text, doc.metadata, 254, 32]  # earlier releases' fingerprint (budget, overlap)
    assert prints[0] == hashlib.sha256(json.dumps(raw, sort_keys=True).encode()).hexdigest() != prints[1]


def test_a_document_without_a_title_is_chunked_as_one_with_an_empty_title(dense_encoder):
    """``Document.title`` None means no title (the type says so): the public Chunker cut it, not an AttributeError."""
    chunker = make_chunker(dense_encoder)
    text = "Replace the valve gasket every two years to prevent leaks. " * 6
    assert chunker.chunk(Document("d", text, None)) == chunker.chunk(Document("d", text, ""))
