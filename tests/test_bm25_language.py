"""BM25_LANGUAGE: documents in another language get its stopwords and its Snowball stemmer (German "Häuser" matches
"Haus"); the language is part of the analyzer a collection records, and English collections keep theirs unchanged;
documents that look like another language than the setting's are warned about."""

import json
from pathlib import Path

import pytest

from retrieval import Document, RetrievalSettings, RetrievalStack
from retrieval.encoders.language import StopwordCounts
from retrieval.encoders.sparse import Bm25Encoder, normalize_text
from retrieval.settings import Bm25Language
from retrieval.store import SchemaMismatchError

# A toy German corpus; each query names its document's words in other inflected forms.
GERMAN_DOCS = [
    Document("haeuser", "Die alten Häuser am Marktplatz wurden im Mittelalter gebaut."),
    Document("kinder", "Die Kinder spielten den ganzen Nachmittag im Garten."),
    Document("buecher", "In der Bibliothek stehen tausende Bücher über Geschichte."),
    Document("zuege", "Die Züge nach München fahren heute mit Verspätung."),
    Document("aepfel", "Im Herbst ernten die Bauern reife Äpfel von den Bäumen."),
    Document("staedte", "Viele Städte bauen neue Radwege für den Verkehr."),
    Document("lehrer", "Der Lehrer erklärte den Schülern die Regeln der Grammatik."),
    Document("wetter", "Das Wetter wird morgen sonnig und warm."),
]
GERMAN_QUERIES = {
    "altes Haus": "haeuser",
    "ein Kind spielt": "kinder",
    "Buch": "buecher",
    "Zug Verspätungen": "zuege",
    "Apfel vom Baum": "aepfel",
    "Stadt": "staedte",
    "Schüler": "lehrer",
    "sonniges Wetter": "wetter",
}
# Twenty short German texts (a few sentences each, 628 words: past MIN_WORDS), on everyday topics.
GERMAN_TEXTS = [
    "Beim Reifenwechsel gilt die Faustregel von O bis O: von Oktober bis Ostern fährt man Winterreifen. Die "
    "Profiltiefe sollte mindestens vier Millimeter betragen. Die Radmuttern müssen nach fünfzig Kilometern "
    "nachgezogen werden.",
    "Eine Bewerbung besteht aus Anschreiben, Lebenslauf und Zeugnissen. Das Anschreiben sollte nicht länger als "
    "eine Seite sein. Im Vorstellungsgespräch fragen Arbeitgeber häufig nach Stärken und Schwächen.",
    "Bienen sind für die Bestäubung vieler Pflanzen unverzichtbar. Ein Bienenvolk besteht aus einer Königin, "
    "einigen hundert Drohnen und zehntausenden Arbeiterinnen. Im Winter bilden die Bienen eine Traube und wärmen "
    "sich gegenseitig.",
    "Brot backen zu Hause. Für ein einfaches Brot braucht man Mehl, Wasser, Salz und Hefe. Der Teig muss "
    "mindestens eine Stunde gehen, bevor er in den heißen Ofen kommt. Ein Sauerteigbrot braucht deutlich mehr "
    "Zeit, schmeckt aber kräftiger.",
    "Eine Datenbank speichert Daten in Tabellen mit Zeilen und Spalten. Ein Index beschleunigt die Suche, "
    "verlangsamt aber das Schreiben. Regelmäßige Sicherungen schützen vor Datenverlust, wenn eine Festplatte "
    "ausfällt.",
    "Ein Fahrrad richtig warten. Die Kette sollte alle paar Wochen gereinigt und geölt werden. Wenn die Bremsen "
    "quietschen, sind die Bremsbeläge oft abgenutzt. Der Reifendruck steht auf der Seite des Mantels und sollte "
    "regelmäßig geprüft werden.",
    "Die Fußballmannschaft gewann das Spiel am Samstag mit drei zu eins. Der Trainer lobte nach dem Spiel vor "
    "allem die Abwehr. In der Tabelle steht die Mannschaft nun auf dem dritten Platz.",
    "Tomaten im eigenen Garten brauchen einen sonnigen, geschützten Platz. Die Pflanzen werden erst nach den "
    "Eisheiligen im Mai ins Beet gesetzt. Regelmäßiges Gießen am Boden verhindert, dass die Blätter krank "
    "werden.",
    "Der Kauf eines Hauses ist für viele Familien die größte Investition ihres Lebens. Neben dem Kaufpreis "
    "fallen Grunderwerbsteuer, Notarkosten und oft eine Maklerprovision an. Die Häuser in den Städten sind "
    "deutlich teurer als auf dem Land.",
    "Ein Hund braucht täglich Bewegung und Beschäftigung. Welpen sollten früh an andere Hunde und fremde "
    "Menschen gewöhnt werden. Die Hundesteuer wird von der Gemeinde erhoben und unterscheidet sich von Ort zu "
    "Ort.",
    "Die Grippeimpfung wird vor allem älteren Menschen und chronisch Kranken empfohlen. Der beste Zeitpunkt ist "
    "der Herbst, bevor die Grippewelle beginnt. Der Impfstoff wird jedes Jahr an die neuen Virusvarianten "
    "angepasst.",
    "Kaffee wird aus den gerösteten Bohnen der Kaffeepflanze gewonnen. Arabica schmeckt milder, Robusta enthält "
    "mehr Koffein. Die Bohnen sollten erst kurz vor dem Aufbrühen gemahlen werden, damit das Aroma erhalten "
    "bleibt.",
    "Kinder lernen Sprachen am leichtesten in den ersten Lebensjahren. Ein Kind, das zweisprachig aufwächst, "
    "verwechselt anfangs manchmal die Wörter, holt aber schnell auf. Vorlesen fördert den Wortschatz der Kinder "
    "besonders stark.",
    "Der Klimawandel lässt die Gletscher in den Alpen schrumpfen. Seit dem Jahr 1850 haben sie etwa die Hälfte "
    "ihres Volumens verloren. Forscher erwarten, dass viele kleinere Gletscher bis zum Ende des Jahrhunderts "
    "verschwinden.",
    "Für eine Kartoffelsuppe werden die Kartoffeln geschält, gewürfelt und mit Zwiebeln angebraten. Danach kommt "
    "Brühe dazu, und die Suppe kocht zwanzig Minuten. Zum Schluss wird sie püriert und mit Majoran gewürzt.",
    "Der Mietvertrag kann vom Mieter mit einer Frist von drei Monaten gekündigt werden. Die Kündigung muss "
    "schriftlich erfolgen. Die Kaution darf höchstens drei Monatsmieten betragen und wird nach dem Auszug "
    "zurückgezahlt.",
    "Der Mond umkreist die Erde in etwa siebenundzwanzig Tagen. Weil er sich dabei einmal um sich selbst dreht, "
    "sehen wir immer dieselbe Seite. Die Gezeiten entstehen vor allem durch die Anziehungskraft des Mondes.",
    "Das Museum zeigt Gemälde aus dem neunzehnten Jahrhundert. Besonders bekannt ist die Sammlung romantischer "
    "Landschaften. Am ersten Sonntag im Monat ist der Eintritt frei, Führungen gibt es jeden Samstag.",
    "Ein sicheres Passwort ist lang und enthält keine Wörter aus dem Wörterbuch. Ein Passwortmanager erzeugt "
    "zufällige Passwörter und speichert sie verschlüsselt. Die Zwei-Faktor-Anmeldung schützt das Konto "
    "zusätzlich.",
    "Verpackungen aus Kunststoff und Metall gehören in die gelbe Tonne. Altpapier kommt in die blaue Tonne, Glas "
    "wird nach Farben getrennt in Container geworfen. Batterien dürfen nicht in den Hausmüll.",
]
SAMPLE_CORPUS = Path(__file__).parent.parent / "evals" / "sample" / "corpus.jsonl"
ENGLISH_TEXT = "The houses were running; Häuser und Kinder spielten."


def _stack(tmp_path, dense_encoder, **settings) -> RetrievalStack:
    values = {"qdrant_path": tmp_path / "index", "cache_dir": tmp_path / "cache", "collection": "de", **settings}
    return RetrievalStack(RetrievalSettings(_env_file=None, **values), dense=dense_encoder)


def _sparse(stack: RetrievalStack, query: str) -> list[str]:
    return [h.doc_id for h in stack.retriever().search(query, k=3, variant="sparse", rerank=False)]


def test_the_languages_are_qdrants():
    import qdrant_edge

    assert set(Bm25Language) == {name.lower() for name in dir(qdrant_edge.Language) if not name.startswith("_")}
    assert all(Bm25Encoder(language=language).encode_query("Haus") for language in Bm25Language)


def test_german_documents_are_searched_with_german_stems_and_stopwords(tmp_path, dense_encoder):
    """English stems leave "Häuser" and "Haus" two terms, and "und" and "die" count as words."""
    with _stack(tmp_path, dense_encoder, bm25_language="german") as german:
        german.indexer().index(GERMAN_DOCS, progress=False)
        assert german.check_schema().bm25_analyzer == "nfkc_cf+german+word"
        assert _sparse(german, "Haus") == ["haeuser"]
        assert _sparse(german, "Kind") == ["kinder"]
        assert _sparse(german, "spielt") == ["kinder"]
        assert _sparse(german, "und die") == []  # German stopwords: no term
    with _stack(tmp_path, dense_encoder, collection="en") as english:
        english.indexer().index(GERMAN_DOCS, progress=False)
        assert _sparse(english, "Haus") == [] and _sparse(english, "Kind") == []
        assert _sparse(english, "und die")  # English keeps them as terms


def test_the_language_is_a_checked_setting(monkeypatch):
    monkeypatch.setenv("HYBRID_RAG_BM25_LANGUAGE", " German")
    assert RetrievalSettings(_env_file=None).bm25_language == "german"
    monkeypatch.setenv("HYBRID_RAG_BM25_LANGUAGE", "deutsch")
    with pytest.raises(ValueError, match=r"BM25_LANGUAGE='deutsch' \(environment\): .*did you mean german\?.*turkish"):
        RetrievalSettings(_env_file=None)
    monkeypatch.setenv("HYBRID_RAG_BM25_LANGUAGE", "frnech")
    with pytest.raises(ValueError, match=r"not a language BM25 supports \(did you mean french\?\); supported: arab"):
        RetrievalSettings(_env_file=None)
    monkeypatch.setenv("HYBRID_RAG_BM25_LANGUAGE", "french")
    monkeypatch.setenv("HYBRID_RAG_BM25_STOPWORDS", "lucene")
    conflict = r"BM25_STOPWORDS='lucene' \(environment\) is a list of English words: with HYBRID_RAG_BM25_LANGUAGE="
    with pytest.raises(ValueError, match=conflict):
        RetrievalSettings(_env_file=None)
    with pytest.raises(ValueError, match="BM25 language 'klingon': not a language"):
        Bm25Encoder(language="klingon")
    with pytest.raises(ValueError, match="'lucene' are English words"):
        Bm25Encoder(language="french", stopwords="lucene")


def test_english_analyzers_terms_and_cache_keys_are_unchanged():
    """The values the release before this setting gave: English collections and embedding caches stay valid."""
    for encoder in (Bm25Encoder(), Bm25Encoder(language="english"), Bm25Encoder.of_analyzer("nfkc_cf+word")):
        assert (encoder.analyzer, encoder.cache_key) == ("nfkc_cf+word", "edbd23de273f34c7")
        vector = encoder.encode_documents([ENGLISH_TEXT])[0]
        assert vector.indices == [164058840, 243905464, 729545593, 1790279870, 1888595001, 2146087727]
        assert vector.values == pytest.approx([1.665287] * 6, abs=1e-6)
        assert encoder.encode_query("running houses houses").values == [1.0, 2.0]
    lucene = Bm25Encoder(stopwords="lucene", tokenizer="multilingual")
    assert (lucene.analyzer, lucene.cache_key) == ("nfkc_cf+lucene_stop+multilingual", "579f7e4e80218b02")


def test_each_language_is_its_own_analyzer():
    german = Bm25Encoder(language="german")
    assert Bm25Encoder.of_analyzer("nfkc_cf+german+word").analyzer == german.analyzer == "nfkc_cf+german+word"
    assert Bm25Encoder.of_analyzer("nfkc_cf+chinese+multilingual").language == "chinese"
    assert len({german.cache_key, Bm25Encoder().cache_key, Bm25Encoder(language="french").cache_key}) == 3
    assert german.earlier("nfkc_casefold+word") is None  # English terms: another setting, not an earlier release
    assert german.encode_query("Häuser").indices == german.encode_query("Haus").indices
    assert Bm25Encoder().encode_query("Häuser").indices != Bm25Encoder().encode_query("Haus").indices


def test_an_english_collection_keeps_its_analyzer_under_another_language(tmp_path, dense_encoder, caplog):
    """As for another tokenizer or stopwords: searched with the collection's analyzer, a write refused until a
    rebuild, which moves it to the language's."""
    with _stack(tmp_path, dense_encoder) as english:
        english.indexer().index(GERMAN_DOCS, progress=False)
    with _stack(tmp_path, dense_encoder, bm25_language="german") as german:
        assert german.check_schema().bm25_analyzer == "nfkc_cf+word"
        with caplog.at_level("WARNING", logger="retrieval.search"):
            assert _sparse(german, "Häuser") == ["haeuser"] and _sparse(german, "Haus") == []  # English terms
            _sparse(german, "Haus")  # another retriever: warned once per process
        [warning] = [r.getMessage() for r in caplog.records]  # the setting does nothing yet: said, not only logged
        assert "analyzer 'nfkc_cf+word' (language english), not the settings' 'nfkc_cf+german+word' " in warning
        assert "(HYBRID_RAG_BM25_LANGUAGE=german): searches use the collection's; rebuild it" in warning
        with pytest.raises(SchemaMismatchError, match=r"bm25_analyzer: collection has 'nfkc_cf\+word'.*--rebuild"):
            german.indexer().index([Document("more", "Noch ein Haus.")], progress=False)
        german.indexer().rebuild(GERMAN_DOCS, progress=False)
        assert german.check_schema().bm25_analyzer == "nfkc_cf+german+word"
        assert _sparse(german, "Haus") == ["haeuser"]


def _looks(texts: list[str], configured: str) -> str | None:
    counts = StopwordCounts()
    counts.add([normalize_text(t) for t in texts])
    return counts.looks(configured)


def _english_texts() -> list[str]:
    return [json.loads(line)["text"] for line in SAMPLE_CORPUS.read_text().splitlines()]


def test_the_documents_language_is_guessed_from_their_stopwords():
    assert _looks(GERMAN_TEXTS, "english") == "german"
    assert _looks(GERMAN_TEXTS, "german") is None
    assert _looks(GERMAN_TEXTS[:5], "english") is None  # too few words to judge
    english = _english_texts()
    assert _looks(english, "english") is None  # Hinglish's list holds English's words: never guessed
    assert _looks(english, "german") == "english"
    # English with foreign words and a German quote in it
    foreign = [f"{t} Die Gemütlichkeit, c'est la vie, der Kindergarten und das Leitmotiv." for t in english]
    assert _looks(foreign, "english") is None
    assert _looks(GERMAN_TEXTS + english, "english") is None  # a mixed corpus: no language clearly wins


def test_documents_in_another_language_are_warned_about_once(caplog):
    with caplog.at_level("WARNING", logger="retrieval.encoders.sparse"):
        Bm25Encoder(language="german").encode_documents(GERMAN_TEXTS)
        Bm25Encoder().encode_documents(_english_texts())
        assert not caplog.records
        english = Bm25Encoder()
        english.encode_documents(GERMAN_TEXTS[:10])  # not yet enough words
        assert not caplog.records
        english.encode_documents(GERMAN_TEXTS[10:])
        english.encode_documents(GERMAN_TEXTS)
    [warning] = [r.getMessage() for r in caplog.records]
    assert warning.startswith("documents look German (4"), warning
    assert "% English)" in warning and "HYBRID_RAG_BM25_LANGUAGE=german and rebuild" in warning
