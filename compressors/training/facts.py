"""Question-answering examples for training a soft-token compressor: a
stretch of a training document with one made-up fact sentence inserted at a
sentence boundary, a question about that fact and its short answer, asked in
one of a few prompt wordings (soft.py turns them into the "qa" task).

The templates, names and values here are for training only and share none
with the evaluation's needle facts (service/evaluation/tasks.py: access
codes, cities, colours, dogs' names), so that the evaluation measures
whether looking a fact up from soft tokens was learned, not its templates.

Every value above comes from a short list, so a model can answer many of
these questions from a prior over the list without reading the value from
the rows. `fact(rng, names=...)` makes that share of the facts about a
made-up name (name_fact): a word built from syllables, one of tens of
thousands, that only the context can give.
"""

import random
import re

FIRST = ["Abel", "Bianca", "Cyrus", "Delia", "Emil", "Fiona", "Gideon", "Hana", "Ivo", "Jana",
         "Kofi", "Leila", "Milo", "Nadia", "Oscar", "Priya", "Quentin", "Renata", "Samir", "Tomas",
         "Ulla", "Vera", "Wendell", "Yusuf", "Zofia"]
LAST = ["Abbott", "Bauer", "Costa", "Dalton", "Ekberg", "Ferreira", "Grant", "Hale", "Ibarra",
        "Keller", "Lund", "Mercer", "Nakamura", "Ortiz", "Pike", "Quinn", "Reyes", "Sato", "Torres",
        "Varga", "Weber", "Young"]
COUNTRIES = ["Portugal", "Kenya", "Chile", "Norway", "Vietnam", "Peru", "Ghana", "Finland",
             "Mongolia", "Uruguay", "Nepal", "Morocco", "Iceland", "Laos", "Latvia", "Bolivia"]
JOBS = ["carpenter", "nurse", "pilot", "librarian", "baker", "surveyor", "dentist", "plumber",
        "chemist", "translator", "welder", "florist", "architect", "beekeeper"]
INSTRUMENTS = ["cello", "trumpet", "banjo", "harp", "oboe", "accordion", "violin", "flute",
               "drums", "saxophone", "clarinet", "ukulele"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]
DISHES = ["lentil soup", "mushroom risotto", "fish tacos", "beef stew", "onion tart", "pad thai",
          "cheese omelette", "pea salad", "lamb curry", "tomato pasta"]
THINGS = ["crate", "anchor", "statue", "barrel", "boiler", "generator", "bell", "trunk"]
TOWNS = ["Ashford", "Brookvale", "Carrow", "Dunmore", "Elmstead", "Fairholm", "Glenrock",
         "Harwick", "Ivybridge", "Kelso", "Larkhill", "Millbrook"]
WORDS = ["falcon", "marble", "juniper", "cobalt", "saffron", "thistle", "lantern", "quartz",
         "meadow", "harbour", "pebble", "willow"]
SYSTEMS = ["billing system", "staff portal", "lab computer", "office wifi", "alarm panel", "backup server"]
BRANDS = ["Volvo", "Toyota", "Fiat", "Skoda", "Subaru", "Renault", "Mazda", "Peugeot"]


ONSETS = ["b", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z",
          "br", "dr", "gr", "kr", "pl", "st", "tr", "sh"]
VOWELS = ["a", "e", "i", "o", "u", "ai", "ou"]
CODAS = ["", "", "", "n", "r", "l", "s", "m", "k"]
_EVAL_WORDS = {"boris", "gallo", "garden", "greta", "hiro", "kira", "lisbon", "mango", "nairobi",
               "nikolai", "novak", "pavel", "porto", "purple", "rosa", "server", "storage", "tara",
               "viktor"}
"""The evaluation's names and values (service/evaluation/tasks.py) that these
syllables can spell; tests/test_qa_training.py checks the list is complete."""


def made_up_word(rng: random.Random) -> str:
    """A pronounceable word of 2 or 3 syllables that is not an evaluation
    value, in lower case: "dravenok", "tilbas"."""
    while True:
        w = "".join(rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS)
                    for _ in range(rng.randint(2, 3)))
        if w not in _EVAL_WORDS:
            return w


NAME_TEMPLATES = [
    ("{p} grew up in a village called {N}.", "What was the village {p} grew up in called?"),
    ("{p}'s nickname at school was {N}.", "What was {p}'s nickname at school?"),
    ("The ferry {p} takes to work is called the {N}.", "What is the ferry {p} takes to work called?"),
    ("{p} named the new horse {N}.", "What did {p} name the new horse?"),
    ("The password for the {s} is {n}.", "What is the password for the {s}?"),
    ("The band {p} started is called {N}.", "What is the band {p} started called?"),
]
"""name_fact's (sentence, question): {p} a person, {s} a system, the name as
{N} (capitalised) or {n} (as made)."""


def name_fact(rng: random.Random) -> tuple[str, str, str]:
    """(fact sentence, question, answer) whose answer is a made-up word, one of NAME_TEMPLATES."""
    p, n = _person(rng), made_up_word(rng)
    sentence, question = NAME_TEMPLATES[rng.randrange(len(NAME_TEMPLATES))]
    fill = {"p": p, "n": n, "N": n.capitalize(), "s": rng.choice(SYSTEMS) if "{s}" in sentence else ""}
    answer = fill["N"] if "{N}" in sentence else n
    return sentence.format(**fill), question.format(**fill), answer


def _person(rng: random.Random) -> str:
    return f"{rng.choice(FIRST)} {rng.choice(LAST)}"


def fact(rng: random.Random, names: float = 0.0) -> tuple[str, str, str]:
    """(fact sentence, question, answer), one of 12 kinds, or with
    probability `names` a name_fact. With names=0 no draw is added, so the
    facts of a seed are those of runs made before name facts existed."""
    if names and rng.random() < names:
        return name_fact(rng)
    p = _person(rng)
    kind = rng.randrange(12)
    if kind == 0:
        y = str(rng.randint(1901, 2019))
        return f"{p} was born in {y}.", f"In which year was {p} born?", y
    if kind == 1:
        c = rng.choice(COUNTRIES)
        return f"{p} spent last winter in {c}.", f"Where did {p} spend last winter?", c
    if kind == 2:
        j = rng.choice(JOBS)
        return f"{p} works as a {j}.", f"What does {p} work as?", j
    if kind == 3:
        i = rng.choice(INSTRUMENTS)
        return f"{p} plays the {i} in a band.", f"Which instrument does {p} play?", i
    if kind == 4:
        m = rng.choice(MONTHS)
        return f"{p}'s wedding is planned for {m}.", f"In which month is {p}'s wedding planned?", m
    if kind == 5:
        d = rng.choice(DISHES)
        return f"For lunch, {p} ordered the {d}.", f"What did {p} order for lunch?", d
    if kind == 6:
        t, n = rng.choice(THINGS), str(rng.randint(12, 950))
        return f"The old {t} weighs {n} kilograms.", f"How many kilograms does the old {t} weigh?", n
    if kind == 7:
        t, n = rng.choice(TOWNS), str(rng.randint(2, 19))
        return (f"The train to {t} leaves from platform {n}.",
                f"Which platform does the train to {t} leave from?", n)
    if kind == 8:
        s, w = rng.choice(SYSTEMS), rng.choice(WORDS)
        return f"The password for the {s} is {w}.", f"What is the password for the {s}?", w
    if kind == 9:
        b = rng.choice(BRANDS)
        return f"{p} drives an old {b}.", f"What make of car does {p} drive?", b
    if kind == 10:
        q = _person(rng)
        return f"The new head of the school is {q}.", "Who is the new head of the school?", q
    n = str(rng.randint(3, 98))
    return f"{p} has read {n} books this year.", f"How many books has {p} read this year?", n


PROMPTS = [
    "Answer the question using the text below. Reply with the answer only.\n\n"
    "Text:\n{context}\n\nQuestion: {question}",
    "Read the text and answer the question in a few words.\n\n{context}\n\nQuestion: {question}",
    "{context}\n\nBased on the text above, {question_lower}",
]
"""Prompt wordings; the first is the one the README's example and the
evaluation use, the others keep the rows from being fitted to one frame."""


def insert(rng: random.Random, text: str, sentence: str) -> str:
    """`text` with `sentence` put at one of its sentence boundaries (or its start or end)."""
    cuts = [0] + [m.end() for m in re.finditer(r"(?<=[.?!])\s+", text)] + [len(text)]
    at = rng.choice(cuts)
    before, after = text[:at].rstrip(), text[at:].lstrip()
    return " ".join(s for s in (before, sentence, after) if s)


def prompt(rng: random.Random, question: str) -> str:
    """A user message holding "{context}" once, with `question` filled in."""
    p = rng.choice(PROMPTS)
    lower = question[0].lower() + question[1:]
    return p.replace("{question_lower}", lower).replace("{question}", question)
