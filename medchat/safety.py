"""Safety: the disclaimer, red-flag (emergency) detection, input limits and output escaping.

    flag = classify("my dad has crushing chest pain")  # RedFlag(category="cardiac", ...) or None
    if flag: show(flag.notice)                          # before any model answer
    text = clean_message(raw, max_chars=4000)           # MedchatError when empty or too long
    safe = sanitize_markdown(model_output)              # no raw HTML, no remote images

Pure Python and stdlib only, so the app can check a message before the model sees it.

How `classify` finds red flags
1. Normalise: strip accents, casefold, split French elisions (j'ai -> j ai), drop other
   apostrophes (can't -> cant), turn punctuation into spaces (keeping decimals: 38,5 -> 38.5),
   and squeeze letters repeated three or more times (heeelp -> heelp).
2. Correct typos: a word of five or more letters that the tables do not use is replaced by
   the key word (`_TYPO_TARGETS`) one edit away (insert, delete, substitute or swap two
   neighbours), so "unconcious", "swalowed" and "strok" still match. Real words that sit one
   edit from a key word ("cooking", "attach") are listed and never corrected.
3. Match the per-category tables in `_RULES` (readable phrases, see `_compile`). `urgent`
   phrases flag on their own ("can't breathe", "kill myself", "overdosed"). `signs` flag only
   when the message reads as someone's own situation: a personal word is present (I, my, he,
   she, ich, mi, mon, meu, ...) or the message has no informational frame ("what is",
   "symptoms of", "how is ... treated", a leading "can"/"is"/"does", "qué es", "was ist", ...).
   So "what are the symptoms of a heart attack?" passes, while "my chest hurts and my left arm
   is numb" and the terse "baby choking on food" are flagged.
4. Skip a match that a negation just before it cancels ("no chest pain"), and skip signs in a
   message that speaks of the past or of something recurring ("had a stroke last year", "when
   I have a cold", "every winter") unless it also says now, today or suddenly.
5. Categories are tried in priority order (self-harm first, the broad ones last); the first
   hit wins and carries that category's notice.

Limits: it is a pattern list, not a triage tool. It misses phrasings nobody wrote down
(fresh batches of labelled lines, scored before any tuning, were caught 11/34, 19/30, 20/30
and 23/25; the README's Safety section has the figures), languages beyond English, Spanish,
French, German and Portuguese, and context spread over several messages; it can flag a
worried question about someone else. The app shows the disclaimer on every page whatever
this module decides. The labelled lines are in tests/data/redflags.jsonl.
"""

from __future__ import annotations

import functools
import itertools
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from types import MappingProxyType

from medchat.errors import MedchatError

DISCLAIMER = (
    "medchat is an AI assistant, not a substitute for a doctor or other clinician; "
    "in an emergency, call your local emergency number."
)

EMERGENCY_NOTICE = (
    "⚠️ **This may be an emergency.** Call your local emergency number now (for example 911 "
    "in the US, 112 in the EU, 999 in the UK), or ask someone near you to call. {reason} "
    "Do not wait for the answer below before getting help."
)

CRISIS_NOTICE = (
    "⚠️ **You deserve support right now, and you don't have to face this alone.** If you "
    "might act on thoughts of ending your life or hurting yourself, call your local emergency "
    "number now (for example 911 in the US, 112 in the EU, 999 in the UK). To talk to someone "
    "today: call or text **988** (Suicide & Crisis Lifeline, US), call **116 123** (Samaritans, "
    "UK and Ireland), or find a free, confidential helpline in your country at "
    "https://findahelpline.com."
)


@dataclass(frozen=True)
class RedFlag:
    """A message that may describe an emergency.

    `matched` is the triggering phrase as normalised for matching (lower case, no accents).
    `allow_answer` False means the app shows `notice` and no model answer (self-harm).
    """

    category: str
    matched: str
    notice: str
    allow_answer: bool = True


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


def classify(message: str) -> RedFlag | None:
    """A RedFlag when the message may describe an emergency happening now, else None."""
    matcher = _matcher()
    words = [_correct(w, matcher) for w in _normalise(message or "").split()]
    if not words:
        return None
    text = " ".join(words)
    personal = not _PERSONAL.isdisjoint(words)
    general = words[0] in _FRAME_OPENERS or not _FRAME_WORDS.isdisjoint(words)
    not_now = any(_find(p, text, 0) for p in matcher.past) and not any(
        _find(p, text, 0) for p in matcher.now
    )
    signs_count = (personal or not general) and not not_now
    for compiled in matcher.rules:
        if any(_find(p, text, 0) for p in compiled.unless):
            continue
        found = (_find(parts, text, 1) for parts in compiled.urgent)
        if signs_count:
            found = itertools.chain(
                found, (_find(parts, text, _NEGATION_WINDOW) for parts in compiled.signs)
            )
        matched = next((m for m in found if m), None)
        if matched:
            return _flag(compiled.rules, matched)
    return None


def _flag(rules: _Rules, matched: str) -> RedFlag:
    if rules.category == "self_harm":
        return RedFlag(rules.category, matched, CRISIS_NOTICE, allow_answer=False)
    return RedFlag(rules.category, matched, EMERGENCY_NOTICE.format(reason=rules.reason))


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
