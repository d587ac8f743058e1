"""Retrieval for the questions people type: topics named (misspelt, reordered, by brand),
the question inside a story, live NIH links, one passage per page, "not covered" pointers,
the batch command others check the app with, and the frozen consumer question set."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest

from eval import consumer_set
from eval import retrieval as eval_retrieval
from medchat.pipeline import Pipeline
from medchat.retrieval import Hit, default_index
from medchat.retrieval import library as library_module
from medchat.retrieval.ages import ages_asked_about, title_age
from medchat.retrieval.library import (
    FEATURES,
    Library,
    RelevanceModel,
    _medicine_names,
    own_words,
    with_model,
)
from medchat.retrieval.links import live_link
from medchat.retrieval.questions import analyse, leans_on_earlier
from medchat.retrieval.topics import (
    LAY_NAMES,
    Topics,
    edit_distance,
    name_key,
    unnamed_medicines,
)
from medchat.settings import Settings

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def topics():
    return Topics.load()


@pytest.fixture(scope="module")
def library():
    lib = default_index(Settings())
    assert isinstance(lib, Library)
    return lib


def names(topics, text):
    return [m.name.lower() for m in topics.find(text)]


def focuses(topics, text):
    """The focus of every document the topics named in `text` stand for, lower case."""
    return {d.focus.lower() for m in topics.find(text) for d in m.documents}


def test_topics_are_found_misspelt_reordered_in_lower_case_and_by_brand(topics):
    assert "glaucoma" in names(topics, "what are the symptoms of glaucomma")
    assert "breast cancer in men" in names(topics, "can men get cancer of the breast in men")
    assert "copd" in names(topics, "my mom has copd and a bad cough")
    advil = topics.find("Is Advil safe every day?")
    drug_pages = [(d.source, d.focus) for m in advil for d in m.documents]
    assert ("MPlusDrugs", "Ibuprofen") in drug_pages
    high_bp = names(topics, "my dad has high blod pressure")
    assert high_bp == ["high blood pressure"]


def test_a_persons_word_for_a_condition_names_it(topics):
    assert names(topics, "can diabetics eat sweets") == ["diabetes"]
    assert names(topics, "my son is asthmatic, can he play football?") == ["asthma"]
    found = topics.find("what is diabetic retinopathy")
    assert [name_key(m.name) for m in found] == [name_key("retinopathy - diabetic")]


def test_a_synonym_names_every_page_of_its_focus(topics, library):
    # The table gives "sinus infection" only to the encyclopedia's Sinusitis, which has no text:
    # the question was told "not covered" although MedlinePlus's Sinusitis page is in MedQuAD.
    (mention,) = topics.find("what helps a sinus infection?")
    assert {(d.focus, d.covered) for d in mention.documents} >= {
        ("Sinusitis", False),
        ("Sinusitis", True),
    }
    # The MedlinePlus page is a candidate (whether it is shown is the relevance model's call).
    found = library.candidates("what helps a sinus infection?")
    pages = {(library.passages[it["row"]].title, library.passages[it["row"]].source)
             for it in found["items"] if it.get("mention") is not None}  # fmt: skip
    assert ("Sinusitis", "MPlusHealthTopics") in pages, pages
    (flu,) = topics.find("how long does the stomach flu last")
    assert "Viral Gastroenteritis" in {d.focus for d in flu.documents if d.covered}


def test_an_eponymous_disease_is_named_by_its_eponym_as_people_write_it(topics):
    assert "parkinson disease" in focuses(topics, "My dad has Parkinson's. Is it hereditary?")
    assert "alzheimer disease" in focuses(topics, "my mom has alzheimers, is it genetic?")
    assert "crohn disease" in focuses(
        topics, "I have Crohn\u2019s and a flare"
    )  # a curly apostrophe
    assert "tourette syndrome" in focuses(topics, "my son has Tourette's")
    assert "graves disease" in focuses(topics, "I was told I have Graves'")
    # Without an apostrophe only a disease's eponym counts: Carpenter and Fountain syndromes are
    # not named by "carpenters" or "fountains", nor Parkinson disease by the bare name.
    assert focuses(topics, "the carpenters fixed the fountains") == set()
    assert "parkinson disease" not in focuses(topics, "Dr. Parkinson saw me today")


def test_a_name_people_use_names_the_pages_of_the_name_it_stands_for(topics):
    assert "gerd" in focuses(topics, "what helps acid reflux at night?")
    assert "viral gastroenteritis" in focuses(topics, "my kids have a stomach bug")
    assert "bipolar disorder" in focuses(topics, "my brother is bipolar")
    assert "carpal tunnel syndrome" in focuses(topics, "can carpal tunnel come back after surgery")
    assert "hepatitis c" in focuses(topics, "is hep c curable")
    assert "helicobacter pylori infections" in focuses(topics, "how do you get H. pylori?")
    # A name whose only page has no text in MedQuAD is still named: it becomes a pointer.
    assert "hand-foot-mouth disease" in focuses(topics, "my kid has hand, foot and mouth")
    # "meniscus tears" named MedlinePlus's Tears page (crying); it is the knee injury's.
    assert focuses(topics, "Can meniscus tears heal?") == {"meniscus tears - aftercare"}
    assert focuses(topics, "I think I have a torn meniscus") == {"meniscus tears - aftercare"}
    assert focuses(topics, "Why do my eyes make tears?") == {"tears"}
    # Each lay name stands for a name the table has: none of them is lost to a typo.
    for lay, name in LAY_NAMES.items():
        assert topics.find(name), (lay, name)
        assert focuses(topics, name) <= focuses(topics, lay)


def test_ordinary_words_are_not_topics(topics):
    assert names(topics, "I have all the symptoms") == []  # not ALL (the leukemia)
    assert names(topics, "I use hearing aids") == ["hearing aids"]  # not AIDS
    assert names(topics, "Is it contagious?") == []
    assert names(topics, "Can I take med for pain?") == []


def test_edit_distance_counts_transpositions_and_stops_past_the_limit():
    assert edit_distance("glaucomma", "glaucoma") == 1
    assert edit_distance("hte", "the") == 1
    assert edit_distance("abcdef", "uvwxyz", 2) == 3


def test_the_question_inside_a_story_and_its_type():
    a = analyse(
        "I've been taking ibuprofen for my back pain for 3 weeks. My doctor is away. "
        "Is that safe with my blood pressure pills?"
    )
    assert a.questions == ("Is that safe with my blood pressure pills?",)
    assert len(a.context) == 2
    assert analyse("How is gout treated?").qtypes[0] == "treatment"
    side = analyse("what are the side effects of lisinopril")
    assert side.qtypes[0] == "side effects" and side.consumer_only
    assert analyse("What are the symptoms of glaucoma?").medquad_qtypes[0] == "symptoms"
    # A short follow-up is searched with the sentence before it.
    assert analyse("My son has strep throat. Is it contagious?").query.startswith("My son")


def test_questions_asked_the_way_people_ask_them_get_their_type(library):
    # "Is X used for Y?" asks about treatment; "Could <what I feel> be a Y?" about symptoms.
    assert analyse("Is levodopa used for Parkinson's disease?").qtypes[0] == "treatment"
    assert analyse("Could burning when I pee be a UTI?").qtypes[0] == "symptoms"
    # A pronoun leans on what came before; a side effect is its own type, not a symptom.
    assert analyse("could it be a fungal infection?").qtypes == ()
    assert "symptoms" not in analyse("Could my new pills be a side effect?").qtypes
    levodopa = [h for h in library.search("Is levodopa used for Parkinson's disease?") if h.covered]
    assert levodopa and levodopa[0].passage.title == "Parkinson's Disease"
    assert "levodopa" in levodopa[0].passage.text.lower()
    uti = [h for h in library.search("Could burning when I pee be a UTI?") if h.covered]
    assert uti and uti[0].passage.title == "Urinary Tract Infections"
    assert uti[0].passage.qtype == "symptoms"


def test_retired_nih_sites_are_mapped_or_marked_archived():
    ghr = live_link("https://ghr.nlm.nih.gov/condition/noonan-syndrome")
    assert ghr == ("https://medlineplus.gov/genetics/condition/noonan-syndrome/", False)
    old = live_link("https://www.nlm.nih.gov/medlineplus/druginfo/meds/a682159.html")
    assert old.url == "https://medlineplus.gov/druginfo/meds/a682159.html"
    senior = live_link("http://nihseniorhealth.gov/glaucoma/toc.html")
    assert senior.archived and senior.url.startswith("https://web.archive.org/")
    gard = live_link("https://rarediseases.info.nih.gov/gard/10955/noonan-syndrome")
    assert gard.url == "https://rarediseases.info.nih.gov/diseases/10955/noonan-syndrome"


def test_three_sources_are_three_pages(library):
    for question in (
        "What are the symptoms of glaucoma?",
        "What is gout?",
        "How is asthma treated?",
    ):
        hits = [h for h in library.search(question, 3) if h.covered]
        assert hits, question
        assert len({h.passage.document for h in hits}) == len(hits)
        assert len({h.passage.url for h in hits}) == len(hits)
        assert [h.rank for h in hits] == list(range(1, len(hits) + 1))
        assert not any("nihseniorhealth.gov" in h.passage.url and not h.passage.archived
                       for h in hits)  # fmt: skip


def test_a_drug_question_points_to_its_medlineplus_page(library):
    hits = library.search("What is the usual dose of Advil for a grown man?", 3)
    pointers = [h for h in hits if not h.covered]
    assert [h.passage.url for h in pointers] == [
        "https://medlineplus.gov/druginfo/meds/a682159.html"
    ]
    assert pointers[0].passage.text == "" and pointers[0].passage.title == "Ibuprofen"


def test_templated_medquad_questions_find_their_page(library):
    hits = library.search("What are the treatments for Hemorrhoids ?", 3)
    assert hits[0].covered and hits[0].passage.title.lower() == "hemorrhoids"
    assert hits[0].passage.qtype == "treatment" and hits[0].method == "topic"


def test_the_relevance_model_ships_fitted_on_the_tuning_half():
    model = RelevanceModel.load()
    data = json.loads((REPO / "medchat" / "retrieval" / "relevance.json").read_text())
    assert tuple(data["features"]) == FEATURES and len(model.weights) == len(FEATURES)
    assert "tuning half" in model.provenance and 0 < model.threshold < 1
    assert model.probability([1.0] + [0.0] * (len(FEATURES) - 1)) < model.threshold


def test_a_question_s_own_words_say_which_passage_answers_it(library):
    # Stop words, the words that tell the question's type on their own, numbers and short words go;
    # plurals fold.
    assert own_words("What are the treatments for my 2 sore knees?") == {"sore", "knee"}
    assert own_words("What are the symptoms? How is it treated?") == set()
    said = "Can diabetes make my feet numb?"
    found = library.candidates(said)
    overlap = FEATURES.index("ask_overlap")
    by_title = {}
    for item in found["items"]:
        passage = library.passages[item["row"]]
        by_title.setdefault(passage.title, []).append(item["features"][overlap])
    # Asked: "feet", "make", "numb" ("diabetes" is in the titles). The general page's passages
    # use at most one of them; a page on the nerves of people with diabetes uses more.
    assert max(by_title["Diabetes"]) < max(v for t, vs in by_title.items() for v in vs)
    shown = [h for h in library.search(said) if h.covered]
    assert shown and shown[0].passage.title != "Diabetes"
    assert {"feet", "numb"} & own_words(f"{shown[0].passage.text} {shown[0].passage.question}")


@pytest.mark.parametrize(
    "text, groups",
    [
        ("My mother is 78 and confused, and it burns when she pees.", {"adult"}),
        ("my 70 yo dad fell", {"adult"}),
        ("I am 34 and have a rash", {"adult"}),
        ("My son is 30 and has gout", {"adult"}),
        ("my 4 year old has a fever", {"child"}),
        ("my 3-month-old baby is not feeding", {"child"}),
        ("Can children get shingles?", {"child"}),
        ("I'm 40 and my 3 year old has a cough", {"adult", "child"}),
        ("I have asthma", set()),
        ("my sugar is 180 after meals", set()),  # a reading, not an age
        ("I take 40 mg of it", set()),
        ("I've had diabetes for 3 years and my feet hurt", set()),  # a duration, not an age
        ("a 45 y/o man with chest pain", {"adult"}),
        ("I'm 5'4 and 200 lbs", set()),  # a height
        ("she is 6 weeks pregnant", set()),
    ],
)
def test_whom_a_message_is_about_child_or_adult(text, groups):
    assert ages_asked_about(text) == groups


def test_a_page_for_another_age_group_is_not_shown(library):
    # Titles that name their readers; a disease named "infantile" or "juvenile" is for everyone.
    assert title_age("Urinary Tract Infections in Children") == "child"
    assert title_age("Childhood Hodgkin Lymphoma") == "child"
    assert title_age("Urinary Tract Infection In Adults") == "adult"
    assert title_age("Exercise for Seniors") == "adult"
    assert title_age("Infantile Refsum disease") is None
    assert title_age("Diabetes in Children and Teens") == "child"
    assert title_age("Glaucoma") is None

    def shown(text):
        return {h.passage.title for h in library.search(text) if h.covered}

    def candidates(text):
        return {library.passages[it["row"]].title for it in library.candidates(text)["items"]}

    mother = (
        "My mother is 78 and has been getting more confused over the last two days, and she "
        "says it burns when she pees. Could this be a UTI?"
    )
    assert "Urinary Tract Infection In Adults" in shown(mother)
    assert "Urinary Tract Infections in Children" not in candidates(mother)
    child = "My 4 year old says it burns when she pees. Could it be a UTI?"
    assert "Urinary Tract Infections in Children" in shown(child)
    assert "Urinary Tract Infection In Adults" not in candidates(child)
    # Nothing said of age: both pages stay candidates.
    either = candidates("Could burning when I pee be a UTI?")
    assert {"Urinary Tract Infections in Children", "Urinary Tract Infection In Adults"} <= either
    assert "Kidney Stones in Children" in shown(
        "My 8 year old son has kidney stones. What is the treatment?"
    )
    assert "Kidney Stones in Adults" in shown(
        "My 66 year old husband has kidney stones. What is the treatment?"
    )


def test_batch_command_writes_what_the_app_shows(tmp_path, library):
    questions = [
        "What are the symptoms of glaucoma?",
        "How much Tylenol can I take in a day?",
        "Is it contagious?",
    ]
    qfile = tmp_path / "q.jsonl"
    qfile.write_text("".join(json.dumps({"id": i, "question": q}) + "\n"
                             for i, q in enumerate(questions)))  # fmt: skip
    out = tmp_path / "hits.jsonl"
    assert eval_retrieval.main(["--questions", str(qfile), "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [0, 1, 2]
    pipeline = Pipeline(_NoModel(), Settings(), index=library)
    for row, question in zip(rows, questions, strict=True):
        app = pipeline.retrieve(question)
        assert [s["url"] for s in row["sources"]] == [h.passage.url for h in app]
        for s in row["sources"]:
            assert set(s) >= {"source", "document_id", "qid", "url", "title", "score", "covered"}
    assert rows[0]["sources"][0]["covered"] and rows[0]["sources"][0]["qid"]
    assert any(s["covered"] is False for s in rows[1]["sources"])
    assert [s for s in rows[2]["sources"] if s["covered"]] == []


def test_batch_command_says_what_is_wrong_with_a_bad_file(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "no id"}\n')
    assert eval_retrieval.main(["--questions", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "Line 1" in capsys.readouterr().err


class _NoModel:
    """A backend without a model: retrieval needs none (Pipeline.retrieve only)."""

    name = "none"
    has_adapter = False
    adapter = None


# -- the frozen consumer question set ------------------------------------------------------


def test_the_consumer_set_is_frozen_with_its_labels():
    rows = consumer_set.questions()
    assert len(rows) == 250 and sum(r["answered"] for r in rows) == 201
    assert rows == consumer_set.questions()  # seeded: the same sample and halves every time
    halves = {r["half"] for r in rows}
    assert halves == {"tune", "report"}
    labelled = consumer_set.load()
    assert len(labelled) == 250
    for r in labelled:
        assert set(r["relevant"]) <= set(r["judged"])
        assert r["medquad_has"] == bool(r["relevant"])
    pool = {json.loads(line)["id"] for line in consumer_set.POOL.open()}
    assert pool == {r["id"] for r in rows}


def test_the_later_tuning_questions_are_frozen_and_share_no_question_with_the_report_half():
    extra = consumer_set.extra_questions()
    assert len(extra) == 350 and extra == consumer_set.extra_questions()
    assert {r["half"] for r in extra} == {"tune"}
    texts = {r["question"].lower() for r in extra}
    assert len(texts) == 350
    assert not texts & {r["question"].lower() for r in consumer_set.questions()}
    both = consumer_set.load(half="tune", extra=True)
    assert len(both) == 126 + 350
    assert len(consumer_set.load(half="tune")) == 126
    pool = {}
    for line in consumer_set.EXTRA_POOL.open():
        row = json.loads(line)
        pool[row["id"]] = {c["key"] for c in row["candidates"]}
    assert set(pool) == {r["id"] for r in extra}
    for r in both:
        if r["id"] in pool:
            assert sorted(r["judged"]) == sorted(pool[r["id"]])
            assert set(r["relevant"]) <= set(r["judged"])
            assert r["medquad_has"] == bool(r["relevant"])
    with pytest.raises(ValueError):
        consumer_set.load(half="report", extra=True)


def test_nothing_but_the_report_reads_the_report_half():
    """Every call of consumer_set.load in the project's code: only eval.retrieval's report
    reads the report half, and tuning reads the tuning half alone."""
    calls = []
    for path in REPO.rglob("*.py"):
        if any(part.startswith(".") for part in path.relative_to(REPO).parts):
            continue
        if path.parts[-2] == "tests":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "load"
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "consumer_set"
            ):
                calls.append((path.relative_to(REPO).as_posix(), ast.unparse(node)))
    assert calls == [("eval/retrieval.py", "consumer_set.load(half=half, extra=tune)")]
    source = (REPO / "eval" / "retrieval.py").read_text()
    assert 'half="tune" if args.tune else "report"' in source
    fit = source[source.index("def fit_relevance") : source.index("def medicationqa_metrics")]
    assert "consumer_set" not in fit and "report" not in fit


def test_consumer_metrics_count_what_an_assessor_would():
    labelled = [
        {"id": "a", "relevant": ["k1"], "judged": ["k1", "k2"], "medquad_has": True},
        {"id": "b", "relevant": [], "judged": ["k3"], "medquad_has": False},
        {"id": "c", "relevant": ["k4"], "judged": ["k4", "k5"], "medquad_has": True},
    ]

    def hit(key, covered=True):
        from medchat.retrieval import Passage

        return Hit(Passage(key, key, "", ""), 0.5, 1, covered=covered)

    shown = {"a": [hit("k2"), hit("k1")], "b": [hit("x", covered=False)], "c": [hit("k9")]}
    m = eval_retrieval.consumer_metrics(shown, labelled)
    assert m["found"] == 0.5  # a found k1 (second); c showed only an unjudged page
    assert m["top_precision"] == 0.0  # a's first is k2, c's first is unjudged
    assert m["told_not_covered"] == 1.0  # b: a pointer is not a passage
    assert m["unjudged_shown"] == 1
    assert np.isclose(m["given_a_source"], 2)


# -- follow-ups: the topic of the conversation ---------------------------------------------------
@pytest.mark.parametrize(
    ("earlier", "question", "searched"),
    [
        (["What is gout?"], "Is it contagious?", "Is gout contagious?"),
        (["I was told I have shingles.", "Thanks."], "Can I give it to my grandson?",
         "Can I give shingles to my grandson?"),
        (["What is gout?"], "And the treatment?", "And the treatment (gout)?"),
        (["What is asthma?"], "What about in children?", "What about in children (asthma)?"),
        (["What is gout?"], "What about the symptoms?", "What about the symptoms (gout)?"),
        # Not follow-ups: a topic of its own, a long question naming nothing, no history.
        (["What is gout?"], "What are the symptoms of glaucoma?", None),
        (["What is gout?"], "What is the best diet for losing weight after a baby?", None),
        # A short one with words of its own, on something the library does not name.
        (["My mom has macular degeneration."], "can diabetics eat sweets", None),
        (["What is gout?"], "Can dogs eat grapes?", None),
        ([], "Is it contagious?", None),
    ],
)  # fmt: skip
def test_a_follow_up_is_searched_with_the_topic_named_before(library, earlier, question, searched):
    assert library.in_context(question, earlier) == (searched or question)


def test_a_question_that_only_asks_is_searched_with_the_topic_of_its_story(library):
    # Alone, "What treatments are there and will she go blind?" ranks pages on other eye diseases.
    message = (
        "My mom is 72 and was just told she has macular degeneration. "
        "What treatments are there and will she go blind?"
    )
    found = library.candidates(message)
    ranked = [library.passages[it["row"]] for it in found["items"] if it["passage_rank"] < 4]
    assert ranked and all("macular degeneration" in p.title.lower() for p in ranked)


def test_a_follow_up_in_a_chat_gets_the_pages_of_the_topic_before(library):
    pipeline = Pipeline(_NoModel(), Settings(), index=library)
    assert [h for h in pipeline.retrieve("How is it treated?") if h.covered] == []
    found = pipeline.retrieve("How is it treated?", ["What is gout?"])
    titles = {h.passage.title for h in found if h.covered}
    assert titles == {"Gout"}, titles
    assert library.in_context("Is it contagious?", ["What is gout?"]) == "Is gout contagious?"
    # The passage index alone knows no topics: it searches the message as it is.
    assert library.index.in_context("Is it contagious?", ["What is gout?"]) == "Is it contagious?"


@pytest.mark.parametrize(
    ("message", "leans"),
    [
        ("What about bronchitis?", True),
        ("Ok so how about the topical cream ?", True),
        ("What bout antibiotics", True),
        ("Do you think it's poison ivy?", True),
        ("Why would you say not bacteria?", True),
        ("You mentioned a virus. Is it contagious?", True),
        ("Do you think my headaches could be migraines?", False),
        ("What if I miss a dose of my blood pressure pill?", False),
        ("What is bronchitis and what about it is contagious?", False),
        ("Is it normal to feel tired with anemia?", False),
    ],
)
def test_a_message_that_leans_on_what_it_does_not_say(message, leans):
    assert leans_on_earlier(analyse(message)) is leans


def test_a_follow_up_sent_alone_gets_no_passage_and_in_a_chat_gets_its_pages(library):
    # The assessor judged the Bronchitis page no answer to "What about bronchitis?" sent alone:
    # it answers a conversation the passages cannot see. In a chat the earlier turns are that
    # conversation, and the page is shown.
    said = "What about bronchitis?"
    assert library.candidates(said)["items"] == []
    assert [h for h in library.search(said) if h.covered] == []
    found = [h for h in library.search(said, alone=False) if h.covered]
    assert found and all("bronchitis" in h.passage.title.lower() for h in found)
    pipeline = Pipeline(_NoModel(), Settings(), index=library)
    assert [h for h in pipeline.retrieve(said) if h.covered] == []
    in_chat = pipeline.retrieve(said, ["I have had a cough with phlegm for two weeks."])
    assert {h.passage.title for h in in_chat if h.covered} == {h.passage.title for h in found}


def test_the_topic_asked_about_gets_its_pages_before_one_the_story_names(library):
    # "Tremor" from the story took two of the four topic pages, so the Parkinson's pages that
    # answer the question were not among the candidates and nothing was shown.
    message = "What are the early signs of Parkinson's disease? My father has a tremor in one hand."
    found = library.candidates(message)
    topic_pages = [library.passages[it["row"]] for it in found["items"] if "mention" in it]
    assert len(topic_pages) == 4
    assert all("parkinson" in p.title.lower() for p in topic_pages), [p.title for p in topic_pages]
    shown = [h for h in library.search(message) if h.covered]
    assert shown and all("parkinson" in h.passage.title.lower() for h in shown)
    # A topic only the story names still gets pages when the question names none.
    alone = library.candidates("My father has a tremor in one hand. What can be done?")
    assert any("tremor" in library.passages[it["row"]].title.lower() for it in alone["items"])


def test_a_medicine_question_gets_passages_only_on_the_conditions_its_question_names(library):
    # MedQuAD holds no text on medicines: the pages the wording found ("blood pressure" ->
    # High Blood Pressure, judged no answer to whether lisinopril works yet) were shown as if
    # they answered. A medicine question now gets its MedlinePlus page and passages only on a
    # condition its question names.
    story = "I started taking lisinopril yesterday. Should my blood pressure be normal by now?"
    found = library.candidates(story)
    assert found["items"] == []
    assert [(h.passage.title, h.covered) for h in library.decide(found)] == [("Lisinopril", False)]
    # ... and only a passage that names the medicine: High Blood Pressure's pages do not name
    # ibuprofen, so they answer nothing asked of it, while Kawasaki disease's treatment passage
    # names aspirin.
    both = "Can I take ibuprofen with my high blood pressure?"
    assert library.candidates(both)["items"] == []
    assert [(h.passage.title, h.covered) for h in library.search(both)] == [("Ibuprofen", False)]
    kawasaki = library.candidates("Can aspirin help with Kawasaki disease?")
    kept = [library.passages[it["row"]] for it in kawasaki["items"]]
    assert [(p.title, p.qtype) for p in kept] == [("Kawasaki syndrome", "treatment")]
    assert "aspirin" in kept[0].text.lower()
    # A medicine goes by all its names (a brand is its generic too), and a kind by either number.
    said = "Is Advil ok with tirzepatide?"
    mentions = library.topics.find(said)
    assert {"advil", "ibuprofen", "tirzepatide"} <= _medicine_names(said, mentions)
    assert library._names_any(kawasaki["items"][0]["row"], {"aspirins"})
    assert not library._names_any(kawasaki["items"][0]["row"], {"ibuprofen", "advil"})
    # Without a medicine the wording still finds pages, and "thyroid" alone is an organ, not
    # MedlinePlus's Thyroid (the medicine).
    plain = library.candidates("Does low thyroid contribute to weight gain?")
    assert plain["mentions"] == []
    assert "Hypothyroidism" in {library.passages[it["row"]].title for it in plain["items"]}
    # ... while "thyroid" before a word for a medicine names the medicine.
    for said in ("What if I quit taking thyroid medicine?", "Is it ok with my thyroid meds?"):
        pointers = [h for h in library.search(said) if not h.covered]
        assert [h.passage.title for h in pointers] == ["Thyroid"], said
        assert "/druginfo/meds/" in pointers[0].passage.url


def test_a_passage_of_the_question_type_is_shown_first(library):
    # Both passages were chosen, the page's "What is" one first (more probable), so the top
    # source did not answer what was asked.
    said = "Oh one quick question is there anything that can be prescribed to treat hemorrhoids?"
    # A model under which a page's "What is" passage is the more probable, as the one fitted on
    # fewer questions had it: P = sigmoid(-1 + 1.5 information + 1.5 title named).
    weights = [0.0] * len(FEATURES)
    weights[0] = -1.0
    weights[FEATURES.index("information")] = 1.5
    weights[FEATURES.index("title_named")] = 1.5
    favoured = with_model(library, RelevanceModel(tuple(weights), 0.5))
    shown = [h for h in favoured.search(said) if h.covered]
    assert [h.passage.qtype for h in shown] == ["treatment", "information"]
    assert [h.rank for h in shown] == [1, 2]
    assert shown[0].score < shown[1].score  # the type, not the probability, put it first
    # Passages all of the same type keep the most probable first.
    plain = [h.score for h in library.search("What is gout?") if h.covered]
    assert plain == sorted(plain, reverse=True)


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("Is it safe to take azithromycin with my statins?", ["azithromycin", "statins"]),
        ("Can I take antibiotics and blood thinners?", ["antibiotics", "blood thinners"]),
        ("Can SSRIs or an NSAID cause bruising?", ["ssris", "nsaid"]),
        ("Is it normal to feel tired after starting semaglutide?", ["semaglutide"]),
        ("I have high cholesterol. What is histidine?", []),
        ("In April my father had a stroke. Is it inherited?", []),
    ],
)
def test_a_medicine_without_a_page_is_told_by_its_ending_or_kind(text, named):
    assert unnamed_medicines(text) == named


def test_a_question_on_a_medicine_without_a_page_gets_no_passage_its_wording_found(library):
    # Semaglutide has no MedlinePlus page in the table, so the message was read as medicine-free
    # and "tired" found the Fatigue page, which says nothing about the medicine.
    said = "Is it normal to feel tired after starting semaglutide?"
    found = library.candidates(said)
    assert found["items"] == []
    assert library.search(said) == []
    # A kind of medicine MedQuAD has a page on is that page's topic, not an unknown medicine.
    found = library.candidates("Can I drink alcohol while on antibiotics?")
    named = [library.passages[it["row"]].title for it in found["items"] if it.get("mention")]
    assert named == ["Antibiotics"]
    # The same question about a condition still gets its passages.
    assert [h for h in library.search("Is it normal to feel tired with anemia?") if h.covered]


@pytest.mark.parametrize(
    ("title", "text", "negated"),
    [
        ("Fever", "I have no fever and feel well otherwise. What should I do?", True),
        ("Seizures", "He has never had a seizure. Is epilepsy inherited?", True),
        ("Asthma", "No history of asthma. Why am I wheezing at night?", True),
        ("Fever", "I don't have a fever now, but what causes fever in children?", False),
        ("Cough", "No fever, but a bad cough. What should I do?", False),
        ("Diabetes", "Is there no cure for diabetes?", False),
        ("Asthma", "What is asthma?", False),
    ],
)
def test_a_page_is_negated_only_when_every_naming_of_it_is(title, text, negated):
    assert library_module.negated_only(title, text) is negated


def test_a_page_on_what_the_person_says_they_do_not_have_is_not_shown(library):
    # "I have no fever" brought the Fever page by its words, under an urgent story of a
    # spreading redness round a scratch.
    story = (
        "I'm 34. Since yesterday the skin around a scratch on my shin has become red, warm and "
        "swollen, and the redness has spread a few centimetres. I have no fever and feel well "
        "otherwise. What should I do?"
    )
    assert "Fever" not in {
        library.passages[it["row"]].title for it in library.candidates(story)["items"]
    }
    # The same story with a fever keeps the page among the candidates.
    feverish = story.replace("I have no fever", "I have a fever")
    titles = {library.passages[it["row"]].title for it in library.candidates(feverish)["items"]}
    assert "Fever" in titles
