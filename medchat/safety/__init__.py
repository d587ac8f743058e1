"""Safety: the disclaimer, triage (emergency, urgent, questions about suicide), input limits and
output escaping.

    flag = classify("my dad has crushing chest pain")   # RedFlag(level="emergency", ...) or None
    flag = classify("now he can't lift his arm", history=["my dad is 70"])  # recent turns count
    if flag: show(flag.notice)                           # before any model answer
    text = clean_message(raw, max_chars=4000)            # MedchatError when empty or too long
    safe = sanitize_markdown(model_output)               # no raw HTML, no remote images

The package:
- `rules`: the phrase tables (data in safety_data/rules.yaml) and what they find in a text.
- `story`: the parts of a long message that are scored, its framing, findings and vital signs.
- `model`: the scored parts of a message, their features and the fitted classifier.
- `judge`: the story judge, a fine-tuned encoder that reads a long message whole for its level
  (safety_data/story_judge/; `python -m medchat.story_judge_train` trains it).
- `triage`: `classify` (the embedder, the decision) and the notices (safety_data/notices.json).
- `hygiene`: `clean_message` and `sanitize_markdown`.
`python -m medchat.safety_train` refits the classifier (safety_data/classifier.npz).

Limits: this is triage help, not a diagnosis. The classifier was trained on about 1,200
hand-written lines; its embedder is English-only, so other languages lean on the rules; on
held-out files written apart from the training lines it still misses some emergencies (see
docs/safety.md). The app shows the disclaimer on every page whatever this package decides.
"""

from medchat.safety.hygiene import clean_message, sanitize_markdown
from medchat.safety.model import (
    CLASSIFIER_PATH,
    HEADS,
    INFO_CATEGORY,
    URGENT_CATEGORY,
    Classifier,
    Head,
    Parts,
    char_ngrams,
    emergency_columns,
    features_for,
    plain_text,
    split_parts,
)
from medchat.safety.rules import (
    DATA_DIR,
    LANGUAGES,
    LEXICAL_FEATURES,
    RuleHits,
    detect_language,
    rule_hits,
)
from medchat.safety.story import STORY_FEATURES, read_vitals, segments, story_features
from medchat.safety.triage import (
    CRISIS_NOTICE,
    DISCLAIMER,
    EMERGENCY_NOTICE,
    HISTORY_TURNS,
    METHODS,
    NOTICES_PATH,
    RULES_ONLY_ENV,
    SUPPORT_NOTICE,
    URGENT_NOTICE,
    RedFlag,
    _load_embedder,
    classify,
    classify_many,
    decide,
    decide_by_rules,
    embed,
    embedder,
    in_training_scope,
    notice_for,
    scores,
)

__all__ = [
    "CLASSIFIER_PATH",
    "CRISIS_NOTICE",
    "DATA_DIR",
    "DISCLAIMER",
    "EMERGENCY_NOTICE",
    "HEADS",
    "HISTORY_TURNS",
    "INFO_CATEGORY",
    "LANGUAGES",
    "LEXICAL_FEATURES",
    "METHODS",
    "NOTICES_PATH",
    "RULES_ONLY_ENV",
    "STORY_FEATURES",
    "SUPPORT_NOTICE",
    "URGENT_CATEGORY",
    "URGENT_NOTICE",
    "Classifier",
    "Head",
    "Parts",
    "RedFlag",
    "RuleHits",
    "_load_embedder",
    "char_ngrams",
    "classify",
    "classify_many",
    "clean_message",
    "decide",
    "decide_by_rules",
    "detect_language",
    "embed",
    "embedder",
    "emergency_columns",
    "features_for",
    "in_training_scope",
    "notice_for",
    "plain_text",
    "read_vitals",
    "rule_hits",
    "sanitize_markdown",
    "scores",
    "segments",
    "split_parts",
    "story_features",
]
