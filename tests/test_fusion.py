"""First-stage fusion per document, per-channel scores on hits, and the reranker's agreement gate."""

import itertools
import json
import random

import numpy as np
import pytest

from retrieval import Document, HybridRetriever, RetrievalSettings
from retrieval.encoders.sparse import SparseVec
from retrieval.errors import InvalidArgumentError
from retrieval.fusion import fuse, top_z
from retrieval.parts import Parts
from retrieval.rerank import EmbeddingReranker, RerankConfig
from retrieval.search import Hit, agreement_ranks
from retrieval.settings import FusionMethod
from retrieval.store import QueryPlan, StoredHit
from tests.conftest import LEXICAL_QUERY, SCIFACT


def hits(*names: str) -> list[StoredHit]:
    """Chunks named '<doc><n>' (e.g. 'a1', 'a2'), best first, scores decreasing."""
    return [StoredHit(n, 1.0 - i / 10, {"doc_id": n[0]}) for i, n in enumerate(names)]


def test_rrf_sums_weighted_reciprocal_ranks():
    fused = fuse({"dense": hits("a1", "b1", "a2"), "sparse": hits("c1", "b2", "a2")}, rrf_k=60)
    by_id = {f.id: f for f in fused}
    assert by_id["a2"].score == pytest.approx(1 / 63 + 1 / 63) and by_id["a2"].ranks == {"dense": 3, "sparse": 3}
    assert by_id["a2"].scores == {"dense": pytest.approx(0.8), "sparse": pytest.approx(0.8)}
    assert [f.id for f in fused][:3] == ["a2", "a1", "c1"]
    weighted = fuse({"dense": hits("a1"), "sparse": hits("c1")}, weights={"dense": 1.0, "sparse": 2.0})
    assert weighted[0].id == "c1"


def test_single_channel_keeps_its_order_and_raw_scores():
    fused = fuse({"dense": hits("a1", "b1", "a2")})
    assert [f.id for f in fused] == ["a1", "b1", "a2"] and [f.score for f in fused] == [1.0, 0.9, 0.8]


def scored(*pairs: tuple[str, float]) -> list[StoredHit]:
    return [StoredHit(n, s, {"doc_id": n[0]}) for n, s in pairs]


def test_zscore_fusion_keeps_the_confident_channel_ahead():
    """Dense is sure of a1 (far above the rest of its list); sparse's scores fall evenly. RRF puts a chunk both
    rank second first; z-scores put a1 first. A chunk missing from a list gets 0 (its mean) from it."""
    d = np.array([0.9, 0.5, 0.49, 0.48, 0.47, 0.46, 0.45, 0.44])
    s = np.linspace(10.0, 9.3, 8)
    dense = scored(*zip(["a1", "b1", "c1", "d1", "e1", "g1", "h1", "i1"], d, strict=True))
    sparse = scored(*zip(["f1", "b1", "c1", "d1", "e1", "g1", "h1", "i1"], s, strict=True))
    assert fuse({"dense": dense, "sparse": sparse}, rrf_k=10)[0].id == "b1"
    z = fuse({"dense": dense, "sparse": sparse}, method="zscore")
    assert z[0].id == "a1"
    by_id = {f.id: f for f in z}
    zd, zs = (d - d.mean()) / d.std(), (s - s.mean()) / s.std()
    assert by_id["a1"].score == pytest.approx(zd[0]) and by_id["b1"].score == pytest.approx(zd[1] + zs[1])
    assert by_id["f1"].score == pytest.approx(zs[0])


@pytest.fixture(scope="module")
def retriever(indexed_stack):
    stack = indexed_stack("edge", collection="fusion")
    yield stack.retriever()
    stack.close()


def test_client_side_fusion_ranks_like_qdrants_own(retriever):
    """The channel lists fused here give the order Qdrant's in-engine RRF gives (one fused request)."""
    s = retriever.settings
    for query in ["blood pressure and the heart", LEXICAL_QUERY[0], "roman empire interest rates"]:
        ours = [h.chunk_id for h in retriever.search(query, k=8, rerank=False)]
        dense, sparse = retriever.dense.encode_query(query), retriever.sparse.encode_query(query)
        weights = (s.dense_weight, s.sparse_weight)
        plan = QueryPlan(dense=dense, sparse=sparse, limit=8, prefetch_k=s.prefetch_k, rrf_k=s.rrf_k, weights=weights)
        engine = retriever.store.query(plan)
        assert ours == [h.id for h in sorted(engine, key=lambda h: (-h.score, h.id))][: len(ours)]


def test_qdrant_side_fusion_is_rank_or_dbsf_only():
    """Qdrant has no z-score fusion: a plan asking for it is refused (searches fuse client-side), and a fusion
    named by a string is the method it names (a plain "rrf" used to reach the engine as DBSF)."""
    both = {"dense": np.ones(4, dtype=np.float32), "sparse": SparseVec([1], [1.0])}
    with pytest.raises(InvalidArgumentError, match="rrf or dbsf only; z-score fusion is done client-side"):
        QueryPlan(**both, fusion="zscore")
    with pytest.raises(InvalidArgumentError, match="unknown fusion 'borda'"):
        QueryPlan(**both, fusion="borda")
    assert QueryPlan(**both, fusion="rrf").fusion is FusionMethod.RRF
    assert QueryPlan(**both, fusion="dbsf").fusion is FusionMethod.DBSF


def test_hits_carry_each_channels_raw_score(retriever):
    query, expected = LEXICAL_QUERY
    top = retriever.search(query, k=8, rerank=False)
    assert top[0].doc_id == expected and top[0].sparse_score > 0
    vectors = retriever.store.dense_vectors([h.chunk_id for h in top])
    q = retriever.dense.encode_query(query)
    for hit in top:
        assert hit.dense_score == pytest.approx(float(vectors[hit.chunk_id] @ q), abs=1e-4)
    # a chunk without any query term is not in the sparse channel's list: no sparse score, no sparse rank
    missing = [h for h in top if h.sparse_rank is None]
    assert missing and all(h.sparse_score is None for h in missing)


def test_reranking_keeps_the_first_stage_unless_the_channels_agree_on_its_best_hit(dense_encoder):
    ranks = [(1, None), (None, 1), (3, 4), (2, 9)]  # (dense, sparse) rank of each candidate, first-stage order
    vectors = np.eye(4, dtype=np.float32)
    q = np.array([0.0, 0.0, 0.0, 1.0], dtype=np.float32)  # alone, the query would put the last candidate first
    gated = EmbeddingReranker(dense_encoder, RerankConfig(weight=1.0, agreement=3, feedback_k=2))
    assert gated.feedback_rows(ranks) == []
    assert gated.scores("q", q, [""] * 4, vectors, ranks) is None
    assert list(np.argsort(-gated.fuse(None, 4))) == [0, 1, 2, 3]
    wider = EmbeddingReranker(dense_encoder, RerankConfig(weight=1.0, agreement=10, feedback_k=2, beta=4.0))
    assert wider.feedback_rows(ranks) == []  # they agree on two, but not on the first stage's best hit
    agreed_first = [(2, 9), (1, None), (None, 1), (3, 4)]
    assert wider.feedback_rows(agreed_first) == [0, 3]
    scores = wider.scores("q", q, [""] * 4, vectors, agreed_first)
    assert scores is not None and set(np.argsort(-scores)[:2]) == {0, 3}
    no_gate = EmbeddingReranker(dense_encoder, RerankConfig(agreement=0, feedback_k=2))
    assert no_gate.feedback_rows(ranks) == [0, 1]


def test_the_agreement_gate_counts_a_tie_at_its_last_rank(dense_encoder):
    """80 tickets share only the term `jira` (score 0.01 each): their sparse order is arbitrary, so none of them
    is within the sparse top 5, whatever rank the engine's tie order gave it; the note alone feeds the query."""
    note = Hit("note", "n", "", 0.0, dense_rank=1, sparse_rank=1, dense_score=0.9, sparse_score=6.26)
    tied = [
        Hit(
            f"t{i}", f"t{i}", "", 0.0, dense_rank=i + 2, sparse_rank=i + 2, dense_score=0.8 - i / 100, sparse_score=0.01
        )
        for i in range(80)
    ]
    ranks = agreement_ranks([note, *tied])
    assert ranks[:4] == [(1, 1), (2, 81), (3, 81), (4, 81)]
    assert EmbeddingReranker(dense_encoder).feedback_rows(ranks) == [0]
    assert EmbeddingReranker(dense_encoder).feedback_rows([(1, 1), (2, 2), (3, 3)]) == [0, 1]


def test_zscore_fusion_when_the_sparse_list_has_a_clear_best_hit(retriever):
    """A sparse list whose best hit stands out (z above ``zscore_fusion_above``, as for long queries) is fused by
    z-scores; a flat one (few or common query terms) keeps rank fusion."""
    threshold = retriever.settings.zscore_fusion_above
    dense = scored(*zip("abcdefghij", np.linspace(0.8, 0.5, 10), strict=True))
    clear = scored(*zip("kbcdefghij", [30.0, *np.linspace(10.0, 9.0, 9)], strict=True))
    flat = scored(*zip("kbcdefghij", np.linspace(10.0, 9.0, 10), strict=True))
    assert top_z(clear) > threshold > top_z(flat)
    assert retriever.fuse({"dense": dense, "sparse": clear}) == fuse({"dense": dense, "sparse": clear}, method="zscore")
    assert retriever.fuse({"dense": dense, "sparse": flat}) == fuse(
        {"dense": dense, "sparse": flat}, rrf_k=retriever.settings.rrf_k
    )
    settings = retriever.settings.model_copy(update={"zscore_fusion_above": None})
    off = HybridRetriever(Parts(settings, retriever.store, retriever.dense, retriever.sparse))
    assert off.fuse({"dense": dense, "sparse": clear})[0].id == "b"  # rank fusion: second in both lists
    assert retriever.fuse({"dense": dense, "sparse": clear})[0].id == "k"


def test_zscore_fusion_can_be_turned_off_from_the_environment(monkeypatch):
    monkeypatch.setenv("HYBRID_RAG_ZSCORE_FUSION_ABOVE", "none")
    assert RetrievalSettings().zscore_fusion_above is None
    monkeypatch.setenv("HYBRID_RAG_ZSCORE_FUSION_ABOVE", "3.5")
    assert RetrievalSettings().zscore_fusion_above == 3.5


@pytest.mark.parametrize("group", ["chunk", "doc"])
def test_hits_of_equal_channel_score_fuse_in_one_order_whatever_order_the_engine_gave(retriever, group):
    # three Thai texts are all [UNK] to the default model: equal dense scores, returned in any order
    dense = [StoredHit(f"{d}1", 1.0, {"doc_id": d}) for d in "abc"]
    sparse = [StoredHit("d1", 3.0, {"doc_id": "d"}), StoredHit("c1", 2.0, {"doc_id": "c"})]
    fuse_ = retriever.fuse if group == "chunk" else retriever.fuse_documents
    orders = {
        tuple(f.id for f in fuse_({"dense": d, "sparse": sparse})) for d in (dense, dense[::-1], dense[1:] + dense[:1])
    }
    assert orders == {("c1", "a1", "d1", "b1")}
    assert [f.id for f in retriever.fuse({"dense": dense[::-1]})] == ["a1", "b1", "c1"]  # one channel too


def test_a_sparse_list_that_ran_out_counts_the_zeros_of_every_other_chunk(retriever):
    """BM25 lists only the chunks holding a query term: a rare identifier's 7 hits, the one holding it far ahead
    (14.8 vs 6.9). Over those 7 alone no best hit can lie more than sqrt(6) = 2.45 sd above the mean, so the
    standout test could never fire; over the 100 chunks the channel was asked for (the rest score 0) it does,
    and z-score fusion ranks that chunk first although dense ranks it 6th (rank fusion: 3rd)."""
    threshold = retriever.settings.zscore_fusion_above
    dense = scored(*((f"p{i}" if i < 5 else f"d{i}", s) for i, s in enumerate(np.linspace(0.7, 0.3, 100))))
    dense.insert(5, StoredHit("x1", 0.682, {"doc_id": "x"}))
    dense.pop()
    sparse = scored(("x1", 14.8), ("p0", 6.9), *((f"p{i}", 6.8) for i in range(1, 5)), ("q1", 6.8))
    assert top_z(sparse) <= 6**0.5 < threshold < top_z(sparse, 100)
    fused = retriever.fuse({"dense": dense, "sparse": sparse})
    assert fused == fuse({"dense": dense, "sparse": sparse}, method="zscore", depth=100) and fused[0].id == "x1"
    assert [f.id for f in fuse({"dense": dense, "sparse": sparse}, rrf_k=retriever.settings.rrf_k)][2] == "x1"
    # a chunk missing from the padded list gets the z-score of 0 there, not the list's mean
    d, s = np.array([h.score for h in dense]), np.array([14.8, 6.9, *[6.8] * 5, *[0.0] * 93])
    missing = next(f for f in fused if f.id == "d50")
    assert missing.score == pytest.approx((missing.scores["dense"] - d.mean()) / d.std() - s.mean() / s.std())
    # the depth asked is capped by what the collection holds: the dense list's length when it ran out too
    assert retriever.fuse({"dense": dense, "sparse": sparse}, depth=1000) == fused
    rrf = fuse({"dense": dense[:7], "sparse": sparse}, rrf_k=retriever.settings.rrf_k)
    assert retriever.fuse({"dense": dense[:7], "sparse": sparse}, depth=100) == rrf


def identifier_docs() -> list[Document]:
    """A ticket tracker export (80 tickets JIRA-1000..1079 about logins), a sprint review, the only text naming
    JIRA-1234, release notes, the only text naming ERR_CONN_RESET, and 8 support articles on connection resets,
    sprint review notes naming TASK-4711 and 5 tickets TASK-1000..5000 on the same theme, among the first 150
    SciFact abstracts (explore14_A's corpora, one collection)."""
    rng = random.Random(7)
    subjects = [
        "login page",
        "session store",
        "login form",
        "password reset",
        "single sign-on",
        "session cookie",
        "remember-me option",
        "login API",
        "mobile login",
        "session timeout",
    ]
    problems = [
        "times out under load",
        "returns an error after the upgrade",
        "logs users out early",
        "shows a spinner forever",
        "fails for users with many sessions",
        "is slow on the first request",
        "loses the redirect target",
        "rejects valid credentials",
        "leaks memory",
        "breaks on Safari",
    ]
    docs = [
        Document(
            f"JIRA-{1000 + i}",
            f"JIRA-{1000 + i}: the {rng.choice(subjects)} {rng.choice(problems)}.",
            title=f"JIRA-{1000 + i}",
        )
        for i in range(80)
    ]
    docs.append(
        Document(
            "sprint-42",
            "Sprint 42 review. Login timeouts were traced to the session store "
            "(JIRA-1234, fixed by pooling connections). The design system migration is half done. Two "
            "engineers joined the platform team and the on-call rotation moves to weekly shifts.",
            title="Sprint 42 review",
        )
    )
    docs.append(
        Document(
            "notes-4.2",
            "Release 4.2 notes. The dashboard loads 30% faster thanks to lazy widgets. "
            "Exports to CSV keep the column order. The Chrome extension no longer shows ERR_CONN_RESET "
            "after the proxy closes an idle socket: it reconnects. Dark mode follows the operating "
            "system. Audit logs are kept 400 days.",
            title="Release 4.2",
        )
    )
    docs += [Document(f"kb-{i}", text, title=f"Support article {i}") for i, text in enumerate(RESET_ARTICLES)]
    docs.append(
        Document(
            "review",
            "Sprint review notes: login timeouts were traced to the session store (TASK-4711); the design system "
            "migration is half done; two engineers joined the platform team.",
        )
    )
    docs += [Document(f"task-{i}", text) for i, text in enumerate(TASKS)]
    with (SCIFACT / "corpus.jsonl").open() as f:
        records = [json.loads(line) for line in itertools.islice(f, 150)]
    return docs + [Document("sf" + r["_id"], r["text"], title=r["title"]) for r in records]


TASKS = [
    "TASK-1000: login page times out when the session store is slow.",
    "TASK-2000: users report login timeouts after the session store upgrade.",
    "TASK-3000: the session store evicts entries too early, causing login failures.",
    "TASK-4000: the login form shows a spinner forever when the backend times out.",
    "TASK-5000: session timeouts are too short on mobile login.",
]
RESET_ARTICLES = [
    "A connection reset happens when the remote peer closes the TCP connection abruptly; the client must reconnect.",
    "If your browser reports that the connection was reset, check the proxy settings and the firewall rules.",
    "Connection reset errors behind a load balancer often come from idle timeouts shorter than the keepalive.",
    "Why does my connection get reset? Usually the server or a middlebox sent a TCP RST packet.",
    "To debug reset connections, capture traffic with tcpdump and look for RST flags from the server side.",
    "The error 'connection reset by peer' means the other side dropped the socket while you were sending.",
    "Resetting the network adapter fixes some connection errors on Windows laptops after sleep.",
    "Browsers show a connection error page when the TLS handshake is reset by antivirus software.",
]


@pytest.fixture(scope="module")
def identifiers(indexed_stack):
    if not (SCIFACT / "corpus.jsonl").exists():
        pytest.skip(f"{SCIFACT} is not present")
    stack = indexed_stack("edge", identifier_docs(), collection="identifiers")
    yield stack.retriever()
    stack.close()


@pytest.mark.slow
@pytest.mark.parametrize(("query", "expected"), [("JIRA-1234", "sprint-42"), ("ERR_CONN_RESET", "notes-4.2")])
@pytest.mark.parametrize("group_by", ["chunk", "doc"])
def test_reranking_keeps_the_document_whose_identifier_stands_out_first(identifiers, query, expected, group_by):
    """The only document holding an identifier leads the sparse list by far (6.26 against tickets tied at 0.01
    for the common term `jira`; 24.4 against 6.7 for `reset`), so the first stage fuses by z-scores and ranks it
    first; the default search (reranked) keeps that order: the channels do not agree on that hit (dense ranks it
    8th and 81st). Before, the agreement gate opened on prose both channels rank near the top (or on tickets whose
    tied near-zero sparse scores happened to order them there), the pseudo-query built from their vectors cannot
    see the identifier, and the rank fusion with its order demoted the document."""
    first = identifiers.search(query, k=5, rerank=False, group_by=group_by)
    default = identifiers.search(query, k=5, group_by=group_by)
    assert first[0].doc_id == expected and first[0].sparse_rank == 1
    assert [h.doc_id for h in default] == [h.doc_id for h in first]
    assert default[0].rerank_score is None  # the gate stayed closed


@pytest.mark.slow
@pytest.mark.parametrize("group_by", ["chunk", "doc"])
def test_a_rare_identifier_with_few_sparse_hits_is_fused_by_z_scores(identifiers, group_by):
    """TASK-4711 is in one document; `task` in 6: the sparse list has 6 hits, the note far ahead. Its best hit
    stands out against the 100 chunks asked for (the rest score 0), so z-score fusion ranks the note first,
    although dense puts the 5 tickets on the same theme above it (rank fusion, before: 3rd)."""
    sparse = identifiers.search("TASK-4711", k=10, variant="sparse", group_by=group_by)
    assert sparse[0].doc_id == "review" and len(sparse) < 10
    for rerank in (False, True):
        assert identifiers.search("TASK-4711", k=5, rerank=rerank, group_by=group_by)[0].doc_id == "review"
