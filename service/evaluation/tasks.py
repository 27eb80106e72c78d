"""Question-answering tasks built from the offline essays, with fixed seeds.

needle     one long passage of real text (an essay excerpt) with one fact
           sentence inserted at a varied depth; a question about that fact.
multidoc   10 short passages (essay excerpts), each with one fact sentence
           of the same shape; one holds the fact the question asks about,
           the others hold distractors (same template, other names/values).
multihop   10 short passages: one describes a person and names them (the
           bridge: "Tara Novak is the keeper of the old lighthouse."), one
           gives that person's fact under the name, eight give the same
           kind of fact for other people; the question names the person only
           by the description. Both evidence passages are needed.

Facts come from a few templates whose answers are a number, a city, a
colour or a name, so that no single kind of word decides the score. The
text comes from the essays of one corpus split (compressors/training/corpus.py):
"dev" to tune on, "test" to report. The llmlingua2 model never trained on
either.
"""

import dataclasses
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

FIRST = ["Anna", "Boris", "Clara", "Diego", "Elena", "Farid", "Greta", "Hiro", "Ines", "Jonas",
         "Kira", "Lars", "Maya", "Nikolai", "Olga", "Pavel", "Rosa", "Sven", "Tara", "Viktor"]
LAST = ["Almeida", "Brandt", "Castillo", "Dubois", "Eriksen", "Fischer", "Gallo", "Horvat",
        "Ivanova", "Jensen", "Kowalski", "Lindqvist", "Moreau", "Novak", "Okafor", "Petrov"]
CITIES = ["Lisbon", "Oslo", "Nairobi", "Montreal", "Osaka", "Valparaiso", "Krakow", "Adelaide",
          "Tbilisi", "Marrakesh", "Reykjavik", "Cartagena", "Tallinn", "Hanoi", "Porto", "Zagreb"]
COLOURS = ["red", "blue", "green", "yellow", "purple", "orange", "white", "black", "grey", "pink"]
OBJECTS = ["bicycle", "boat", "van", "piano", "front door", "kayak", "tractor", "mailbox"]
PETS = ["Biscuit", "Pepper", "Mango", "Waffles", "Juniper", "Pickles", "Noodle", "Clover",
        "Marble", "Toffee", "Pretzel", "Sprout"]
ROOMS = ["storage room", "server room", "garden shed", "back office", "wine cellar", "boathouse",
         "workshop", "music room", "archive", "greenhouse"]


@dataclass
class Example:
    id: str
    task: str
    passages: list[str]
    question: str
    answer: str
    meta: dict = field(default_factory=dict)

    @property
    def context(self) -> str:
        return "\n\n".join(self.passages)


def _fact(rng: random.Random, kind: str):
    """(subject, fact sentence, question, answer) for a fact template; the
    subject is what distinguishes one fact of this kind from another."""
    if kind == "code":
        room, code = rng.choice(ROOMS), str(rng.randint(1000, 9999))
        return room, (f"The access code for the {room} is {code}.",
                      f"What is the access code for the {room}?", code)
    if kind == "city":
        person = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
        city = rng.choice(CITIES)
        return person, (f"{person} moved to {city} last spring.",
                        f"Which city did {person} move to?", city)
    if kind == "colour":
        person, obj, colour = rng.choice(FIRST), rng.choice(OBJECTS), rng.choice(COLOURS)
        return (person, obj), (f"{person} painted the {obj} {colour}.",
                               f"What colour did {person} paint the {obj}?", colour)
    person, pet = f"{rng.choice(FIRST)} {rng.choice(LAST)}", rng.choice(PETS)
    return person, (f"{person} has a dog named {pet}.",
                    f"What is the name of {person}'s dog?", pet)


KINDS = ["code", "city", "colour", "pet"]


def _sentences(text: str) -> list[str]:
    """Sentences of a text, paragraph breaks kept as "\n\n" items."""
    out = []
    for para in text.split("\n\n"):
        out += [s for s in re.split(r"(?<=[.?!])\s+(?=[A-Z\"(])", para.strip()) if s]
        out.append("\n\n")
    return out[:-1]


def _excerpt(rng: random.Random, docs: dict[str, str], words: int) -> tuple[str, list[str]]:
    """About `words` words of consecutive sentences from one essay, starting
    at a sentence: (the essay's name, the sentence list; "\n\n" marks
    paragraph breaks)."""
    name = rng.choice(sorted(docs))
    sents = _sentences(docs[name])
    left = np.cumsum([len(s.split()) for s in sents][::-1])[::-1]  # words from each sentence on
    starts = [i for i, s in enumerate(sents) if s != "\n\n" and left[i] >= words] or [0]
    start = rng.choice(starts)
    out, n = [], 0
    for s in sents[start:]:
        if n >= words:
            break
        out.append(s)
        n += len(s.split())
    while out and out[-1] == "\n\n":
        out.pop()
    return name, out


def _join(sentences: list[str]) -> str:
    text = ""
    for s in sentences:
        text += s if s == "\n\n" or text.endswith("\n\n") or not text else " " + s
    return text


def needle(docs: dict[str, str], n: int, seed: int, words: int = 300,
           fits: Callable[[str], bool] | None = None) -> list[Example]:
    """`n` needle examples; depths cycle through 0.1, 0.3, 0.5, 0.7, 0.9.
    With `fits`, an example whose context it refuses is drawn again (new
    excerpt and fact, same depth and kind); without, every example is drawn
    once (the same examples as before `fits` existed)."""
    rng = random.Random(f"needle-{seed}")
    out = []
    for i in range(n):
        kind, depth = KINDS[i % len(KINDS)], [0.1, 0.3, 0.5, 0.7, 0.9][i % 5]
        for _ in range(100):
            name, sents = _excerpt(rng, docs, words)
            _, (fact, question, answer) = _fact(rng, kind)
            at = round(depth * len(sents))
            context = _join(sents[:at] + [fact] + sents[at:])
            if fits is None or fits(context):
                break
        else:
            raise ValueError(f"needle: no context of about {words} words fits (100 draws)")
        out.append(Example(f"needle-{seed}-{i}", "needle", [context], question, answer,
                           {"depth": depth, "kind": kind, "doc": name}))
    return out


def multidoc(docs: dict[str, str], n: int, seed: int, passages: int = 10,
             words: int = 35) -> list[Example]:
    """`n` multi-document examples; the gold passage's position cycles."""
    rng = random.Random(f"multidoc-{seed}")
    out = []
    for i in range(n):
        kind = KINDS[i % len(KINDS)]
        gold = (i * 3) % passages
        facts, subjects, answers, first = [], set(), set(), None
        while len(facts) < passages:
            # Distinct subjects and answers among the first 10 (some kinds have
            # only 10 of either); past 10 (multidoc20) only the first fact's
            # subject and answer stay unique: it becomes the gold passage below.
            subject, fact = _fact(rng, kind)
            if len(facts) < 10:
                fresh = subject not in subjects and fact[2] not in answers
            else:
                fresh = subject != first[0] and fact[2] != first[1][2]
            if fresh:
                subjects.add(subject)
                answers.add(fact[2])
                facts.append(fact)
                first = first or (subject, fact)
        if passages > 10:
            facts.insert(gold, facts.pop(0))
        texts = []
        for fact, _, _ in facts:
            _, sents = _excerpt(rng, docs, words)
            sents = [s for s in sents if s != "\n\n"]
            at = rng.randint(0, len(sents))
            texts.append(_join(sents[:at] + [fact] + sents[at:]))
        _, question, answer = facts[gold]
        out.append(Example(f"multidoc-{seed}-{i}", "multidoc", texts, question, answer,
                           {"gold": gold, "kind": kind}))
    return out


def multidoc20(docs: dict[str, str], n: int, seed: int) -> list[Example]:
    """The "lost in the middle" layout: 20 passages, the gold one at every
    position in turn (position = example index * 3 mod 20: all 20 in 20
    examples)."""
    return [dataclasses.replace(ex, task="multidoc20", id=ex.id.replace("multidoc", "multidoc20"))
            for ex in multidoc(docs, n, seed, passages=20, words=35)]


# (description, the word of it no other role has): a bridge sentence names
# whoever holds the role; the question asks about the role.
ROLES = [("keeper of the old lighthouse", "lighthouse"), ("conductor of the town choir", "choir"),
         ("captain of the island ferry", "ferry"), ("head baker at the harbour market", "baker"),
         ("curator of the maritime museum", "curator"), ("coach of the rowing club", "rowing"),
         ("warden of the mountain hut", "warden"), ("editor of the village newsletter", "newsletter"),
         ("owner of the corner bookshop", "bookshop"), ("night nurse at the cottage hospital", "nurse"),
         ("groundskeeper of the botanical garden", "groundskeeper"),
         ("organist at the stone chapel", "organist")]
HOP_KINDS = ["city", "pet", "colour"]


def multihop(docs: dict[str, str], n: int, seed: int, passages: int = 10,
             words: int = 35) -> list[Example]:
    """`n` two-hop examples: the bridge passage ("{name} is the {role}.") and
    the fact passage ("{name} moved to {city} last spring.") at positions
    that cycle, other people's facts of the same kind in the other passages.
    meta["evidence"]: (the role's own word, the answer), both of which must
    survive compression for the question to be answerable; meta["bridge"]
    and meta["gold"]: the two passages' positions."""
    rng = random.Random(f"multihop-{seed}")
    out = []
    for i in range(n):
        kind = HOP_KINDS[i % len(HOP_KINDS)]
        role, marker = ROLES[i % len(ROLES)]
        facts, subjects, answers = [], set(), set()
        while len(facts) < passages - 1:  # the person's fact first, then distractors
            subject, fact = _fact(rng, kind)
            name = subject[0] if isinstance(subject, tuple) else subject
            if name not in subjects and fact[2] not in answers:
                subjects.add(name)
                answers.add(fact[2])
                facts.append((name, fact))
        name, (fact, question, answer) = facts[0]
        question = question.replace(name, f"the {role}")
        bridge, gold = (i * 3) % passages, (i * 3 + 1 + i % (passages - 1)) % passages
        if gold == bridge:
            gold = (gold + 1) % passages
        others = iter(f[1][0] for f in facts[1:])
        sentences = [f"{name} is the {role}." if k == bridge else fact if k == gold else next(others)
                     for k in range(passages)]
        texts = []
        for sentence in sentences:
            _, sents = _excerpt(rng, docs, words)
            sents = [s for s in sents if s != "\n\n"]
            at = rng.randint(0, len(sents))
            texts.append(_join(sents[:at] + [sentence] + sents[at:]))
        out.append(Example(f"multihop-{seed}-{i}", "multihop", texts, question, answer,
                           {"gold": gold, "bridge": bridge, "kind": kind, "person": name,
                            "evidence": [marker, answer]}))
    return out


TASKS = {"needle": needle, "multidoc": multidoc, "multidoc20": multidoc20, "multihop": multihop}
