"""The story judge: a long message read whole by a fine-tuned encoder decides its triage level.

Its held-out figures are measured in tests/test_safety.py (the only reader of the held-out
files); here: which messages it reads, how its thresholds are chosen, that the shipped one is
what its training wrote, and that triage follows it.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from medchat import safety, story_judge_train
from medchat.errors import MedchatError
from medchat.safety import classify, judge, triage

EMERGENCY_STORY = (
    "My husband is 58 and has diabetes. About twenty minutes ago he got a heavy pain in the "
    "middle of his chest that goes into his jaw. He is sweaty and grey and says he feels sick. "
    "What should I do?"
)
SELF_CARE_STORY = (
    "My toddler swallowed a mouthful of bath water tonight and coughed for a moment. He is "
    "breathing normally, laughing and now fast asleep. Is there anything I should watch for?"
)


def test_a_story_is_two_sentences_and_fifteen_words():
    assert judge.is_story(EMERGENCY_STORY) and judge.is_story(SELF_CARE_STORY)
    assert not judge.is_story("my dad has crushing chest pain and is sweating, what do I do now?")
    assert not judge.is_story("Chest pain. Sweating.")  # two sentences, too few words
    long_line = " ".join(["word"] * 40)
    assert not judge.is_story(long_line)  # many words, one sentence


def test_thresholds_keep_the_emergencies_and_at_most_a_tenth_of_self_care_noticed():
    rng = np.random.default_rng(0)
    y = np.array([0] * 20 + [1] * 10 + [2] * 20)

    def probs_of(self_care_top):
        p_em = np.concatenate([rng.uniform(0.3, 1.0, 20), rng.uniform(0.0, 0.3, 10),
                               rng.uniform(0.0, self_care_top, 20)])  # fmt: skip
        p_urg = np.where(y == 1, 0.5, rng.uniform(0.0, 0.5, len(y))).clip(0, 1 - p_em)
        return np.stack([p_em, p_urg, 1 - p_em - p_urg], axis=1)

    probs = probs_of(0.25)
    t_em, t_urgent = story_judge_train.thresholds(probs, y)
    pred = story_judge_train.level_of(probs, t_em, t_urgent)
    assert (pred[y == 0] == 0).sum() >= 19  # 95% of 20
    assert t_em == pytest.approx(np.sort(probs[y == 0, 0])[::-1][18])  # the highest keeping 19
    assert (pred[y == 1] == 1).sum() > 0 and (pred[y == 2] != 2).sum() <= 2  # a tenth of 20
    # No other urgent threshold is right more often within that limit.
    for u in np.unique(probs[:, 0] + probs[:, 1]):
        other = story_judge_train.level_of(probs, t_em, u)
        if (other[y == 2] != 2).sum() <= 2:
            assert (other == y).sum() <= (pred == y).sum()
    # When the emergency threshold alone gives too many self-care lines a notice, there is no
    # urgent notice at all.
    crowded = probs_of(0.9)
    t_em, t_urgent = story_judge_train.thresholds(crowded, y)
    assert (crowded[y == 2, 0] >= t_em).sum() > 2 and t_urgent == np.inf


def test_the_parts_threshold_keeps_the_most_emergencies_then_the_most_right():
    y = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2])
    # The judge: every emergency but the first; urgent for the urgent lines and for one
    # self-care line; no notice for the other self-care lines.
    p_em = np.array([0.01, 0.9, 0.9, 0.01, 0.01, 0.01, *[0.01] * 9])
    p_urg = np.array([0.0, 0.05, 0.05, 0.9, 0.9, 0.9, *[0.0] * 9])
    probs = np.stack([p_em, p_urg, 1 - p_em - p_urg], axis=1)
    # The parts: an emergency for all three emergencies (the first at 0.7), both urgent lines
    # (at 0.3 and 0.4) and two self-care lines (at 0.2 and 0.8).
    scores = np.array([0.7, 0.9, 0.9, 0.3, 0.4, 0.1, 0.2, 0.8, *[0.0] * 7])
    levels = np.array([0, 0, 0, 0, 0, 2, 0, 0, *[2] * 7])
    t_em = 0.5
    t_parts, t_urgent = story_judge_train.parts_threshold(probs, y, t_em, (scores, levels))
    pred = story_judge_train.level_of(probs, t_em, t_urgent, (scores, levels), t_parts)
    # Up to 0.2 the parts keep two self-care notices, over a tenth of ten; from 0.3 one. At 0.3
    # and 0.4 they keep urgent lines emergencies; above 0.7 the judge loses the first
    # emergency. So 0.7: all three emergencies kept, both urgent lines urgent.
    assert t_parts == pytest.approx(0.7)
    assert list(pred[:5]) == [0, 0, 0, 1, 1] and (pred[y == 2] != 2).sum() == 1
    # Not the lowest threshold within the limit: 0.3 keeps as many emergencies, fewer right.
    low = story_judge_train.level_of(probs, t_em, t_urgent, (scores, levels), 0.3)
    assert (low[y == 2] != 2).sum() == 1 and (low[y == 0] == 0).sum() == 3
    assert (low == y).sum() < (pred == y).sum()


def test_the_shipped_judge_is_what_its_training_wrote():
    meta = json.loads((judge.JUDGE_DIR / "judge.json").read_text(encoding="utf-8"))
    shipped = judge.shipped()
    assert shipped is not None
    assert shipped.threshold == meta["threshold"] and 0 < shipped.threshold < 1
    assert 0 < shipped.urgent_threshold <= 2
    assert "redflags_long_more.jsonl" in meta["trained_on"]
    assert "redflags_train.jsonl" in meta["trained_on"]
    # The thresholds were chosen for these cross-validated figures (docs/safety.md).
    cv = meta["cv_read_by_the_judge"]
    caught, emergencies = map(int, cv["emergencies_flagged"].split("/"))
    noticed, self_care = map(int, cv["self_care_noticed"].split("/"))
    assert caught >= 0.95 * emergencies and noticed <= 0.10 * self_care
    # LoRA, not a second copy of the encoder.
    assert (judge.JUDGE_DIR / "adapter_model.safetensors").stat().st_size < 5_000_000


def test_a_story_is_read_by_the_judge_and_a_short_message_is_not():
    shipped = judge.shipped()
    short = "my husband has heavy chest pain going into his jaw and he is sweaty"
    p = shipped.probabilities([EMERGENCY_STORY, SELF_CARE_STORY])
    assert np.allclose(p.sum(axis=1), 1.0)
    assert p[0, 0] >= shipped.threshold > p[1, 0]
    stories = triage._stories([EMERGENCY_STORY, short, SELF_CARE_STORY], [], [0, 1, 2])
    assert sorted(stories) == [0, 2]
    assert stories[2].emergency == pytest.approx(float(p[1, 0]), abs=1e-5)
    assert stories[2].parts_threshold == shipped.parts_threshold
    flag = classify(EMERGENCY_STORY)
    assert flag is not None and flag.is_emergency and flag.category == "cardiac"
    assert classify(SELF_CARE_STORY) is None  # the parts alone: an emergency (below)
    assert classify(short).is_emergency


def test_the_judge_lowers_the_parts_level_never_raises_it_and_not_when_they_are_sure():
    classes = ("none", safety.INFO_CATEGORY, safety.URGENT_CATEGORY, "cardiac")
    head = safety.Head(np.zeros((4, 1)), np.zeros(4), threshold=0.2, urgent_threshold=0.4)
    hits = [safety.rule_hits("my chest hurt last week when I pressed on it")]
    unsure = np.array([[0.6, 0.0, 0.1, 0.3]])  # the parts: an emergency by their threshold
    sure = np.array([[0.2, 0.0, 0.1, 0.7]])
    calm = np.array([[0.85, 0.0, 0.05, 0.1]])  # the parts: no notice

    def story(emergency, concern):
        return triage.Story(emergency, concern, threshold=0.5, urgent_threshold=0.8,
                            parts_threshold=0.6)  # fmt: skip

    assert safety.decide("combined", head, classes, unsure, hits).is_emergency
    assert safety.decide("combined", head, classes, unsure, hits, story=story(0.1, 0.2)) is None
    urgent = safety.decide("combined", head, classes, unsure, hits, story=story(0.1, 0.9))
    assert urgent.level == "urgent" and urgent.allow_answer
    flag = safety.decide("combined", head, classes, unsure, hits, story=story(0.9, 0.95))
    assert flag.is_emergency and flag.score == pytest.approx(0.3)  # the parts' flag
    flag = safety.decide("combined", head, classes, sure, hits, story=story(0.1, 0.2))
    assert flag.is_emergency and flag.score == pytest.approx(0.7)  # the parts are sure
    # The judge never raises an alarm the parts did not give (it was trained on clean stories
    # only; a long message unlike them must not get a notice from it alone).
    assert safety.decide("combined", head, classes, calm, hits, story=story(0.99, 1.0)) is None


def test_the_judge_raises_an_unflagged_story_only_from_its_raise_threshold():
    classes = ("none", safety.INFO_CATEGORY, safety.URGENT_CATEGORY, "cardiac", "self_harm")
    head = safety.Head(np.zeros((5, 1)), np.zeros(5), threshold=0.2, urgent_threshold=0.4)
    hits = [safety.rule_hits("my chest hurt last week when I pressed on it")]
    # The parts: no notice; self-harm is the likeliest emergency class of the part.
    calm = np.array([[0.85, 0.0, 0.03, 0.04, 0.08]])
    urgent = np.array([[0.5, 0.0, 0.4, 0.05, 0.05]])  # the parts: the urgent notice

    def story(emergency, raise_at=0.99):
        return triage.Story(emergency, emergency, threshold=0.5, urgent_threshold=0.8,
                            parts_threshold=0.6, raise_at=raise_at)  # fmt: skip

    assert safety.decide("combined", head, classes, calm, hits, story=story(0.98)) is None
    raised = safety.decide("combined", head, classes, calm, hits, story=story(0.995))
    # An emergency, never the crisis notice (the judge learnt no self-harm story).
    assert raised.is_emergency and raised.category == "cardiac" and raised.allow_answer
    assert safety.decide("combined", head, classes, urgent, hits, story=story(0.995)).is_emergency
    assert (
        safety.decide("combined", head, classes, urgent, hits, story=story(0.7)).level == "urgent"
    )
    # Without the value (a judge trained before it) it never raises.
    assert safety.decide("combined", head, classes, calm, hits, story=story(1.0, 2.0)) is None


def test_the_raise_threshold_is_above_every_calm_story_the_parts_do_not_flag():
    y = np.array([0, 0, 1, 2, 2, 2])
    p_em = np.array([0.999, 0.5, 0.95, 0.97, 0.2, 0.99])
    probs = np.stack([p_em, np.zeros(6), 1 - p_em], axis=1)
    scores = np.array([0.1, 0.1, 0.1, 0.1, 0.1, 0.9])
    levels = np.array([2, 2, 1, 2, 2, 0])
    # Not emergencies the parts do not flag: 0.95, 0.97, 0.2 (0.99 is flagged by the parts).
    t = story_judge_train.raise_threshold(probs, y, (scores, levels))
    assert 0.97 < t < 0.9701
    pred = story_judge_train.level_of(probs, 0.9999, 2.0, (scores, levels), 0.5, t)
    assert list(pred) == [0, 2, 2, 2, 2, 0]  # the judge lowers the urgent line (below 2.0)
    # Never below 0.9.
    low = np.stack([np.full(6, 0.3), np.zeros(6), np.full(6, 0.7)], axis=1)
    assert story_judge_train.raise_threshold(low, y, (scores, levels)) == 0.9


def test_the_turns_joined_are_read_as_one_story():
    flag = classify("Should I give him an aspirin?", history=[EMERGENCY_STORY])
    assert flag is not None and flag.is_emergency


def test_unrelated_earlier_turns_do_not_talk_the_judge_out_of_a_story():
    # In the app, two unrelated questions before a story made the judge read all three turns
    # as one text, and its urgent notice went: earlier turns may add, never take away.
    earlier = [
        "Is it normal to feel tired after starting semaglutide?",
        "Can I drink alcohol while on antibiotics?",
    ]
    for story in (
        "I'm 34. Since yesterday the skin around a scratch on my shin has become red, warm and "
        "swollen, and the redness has spread a few centimetres. I have no fever and feel well "
        "otherwise. What should I do?",
        "My dad is 70 and takes warfarin. He fell yesterday and hurt his hip but seems fine. "
        "Should we worry?",
    ):
        alone = classify(story)
        assert alone is not None and alone.level == "urgent"
        flag = classify(story, history=earlier)
        assert flag is not None and flag.level == "urgent", story
    # The reassured story read with its turns is still lowered when it is so on its own.
    assert classify(SELF_CARE_STORY, history=earlier) is None


def test_without_the_judge_a_story_is_judged_part_by_part(monkeypatch, tmp_path):
    with pytest.raises(MedchatError, match="story judge is missing"):
        judge.StoryJudge.load(tmp_path)
    monkeypatch.setattr(triage, "shipped_judge", lambda: None)
    assert triage._stories([EMERGENCY_STORY], [], [0]) == {}
    flag = classify(EMERGENCY_STORY)
    assert flag is not None and flag.is_emergency  # the parts catch it
    # ... and give the reassured story the emergency notice that the judge spares it.
    calm = classify(SELF_CARE_STORY)
    assert calm is not None and calm.is_emergency


def test_the_app_loads_the_judge_in_the_background_at_start():
    from medchat.pipeline import warm_up_triage

    judge._shipped.cache_clear()
    warm_up_triage().join(timeout=300)
    assert judge._shipped.cache_info().currsize == 1  # loaded before any message asked for it
    assert judge.shipped() is not None


def test_loading_the_judge_draws_no_random_numbers():
    # The app loads it in the background while a seeded generation may be sampling, which
    # seeds torch's global generator and must be the only one drawing from it.
    import torch

    torch.manual_seed(0)
    before = torch.random.get_rng_state().clone()
    loaded = judge.StoryJudge.load()
    assert torch.equal(before, torch.random.get_rng_state())
    p = loaded.probabilities([EMERGENCY_STORY])
    assert np.allclose(p, judge.shipped().probabilities([EMERGENCY_STORY]), atol=1e-6)
