"""The story judge: a long message read whole by a fine-tuned encoder decides its triage level.

Its held-out figures are measured in tests/test_safety.py (the only reader of the held-out
files); here: which messages it reads, how its thresholds are chosen, that the shipped one is
what its training wrote, and that triage follows it.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from medchat import story_judge_train
from medchat.errors import MedchatError
from medchat.safety import classify, judge, triage

EMERGENCY_STORY = (
    "My husband is 58 and has diabetes. About twenty minutes ago he got a heavy pain in the "
    "middle of his chest that goes into his jaw. He is sweaty and grey and says he feels sick. "
    "What should I do?"
)
SELF_CARE_STORY = (
    "Three weeks ago I had chest pain and went to the emergency department. They did an ECG, "
    "an X-ray and blood tests and said it was a strained muscle between my ribs. It has eased "
    "a lot and only twinges when I twist. When can I go back to lifting weights?"
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


def test_a_story_is_decided_by_the_judge():
    shipped = judge.shipped()
    p = shipped.probabilities([EMERGENCY_STORY, SELF_CARE_STORY])
    assert np.allclose(p.sum(axis=1), 1.0)
    flag = classify(EMERGENCY_STORY)
    assert flag is not None and flag.is_emergency and flag.category == "cardiac"
    assert flag.score == pytest.approx(float(p[0, 0]), abs=1e-5)  # the judge's, not the parts'
    assert p[0, 0] >= shipped.threshold > p[1, 0]
    calm = classify(SELF_CARE_STORY)
    assert calm is None or not calm.is_emergency
    # A message too short to be a story keeps the part-by-part score.
    short = "my husband has heavy chest pain going into his jaw and he is sweaty"
    flag = classify(short)
    assert flag is not None and flag.is_emergency
    assert flag.score != pytest.approx(float(shipped.probabilities([short])[0, 0]), abs=1e-5)


def test_the_turns_joined_are_read_as_one_story():
    flag = classify("Should I give him an aspirin?", history=[EMERGENCY_STORY])
    assert flag is not None and flag.is_emergency


def test_without_the_judge_a_story_is_judged_part_by_part(monkeypatch, tmp_path):
    with pytest.raises(MedchatError, match="story judge is missing"):
        judge.StoryJudge.load(tmp_path)
    with_judge = classify(EMERGENCY_STORY)
    monkeypatch.setattr(triage, "shipped_judge", lambda: None)
    parts = classify(EMERGENCY_STORY)
    assert parts is not None and parts.is_emergency  # the parts catch it too
    assert parts.score != pytest.approx(with_judge.score, abs=1e-5)
