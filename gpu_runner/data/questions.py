"""Question bank for the tiny model: every fact table row phrased as questions with two answers.

Each question carries a short answer (what the fine-tuning task wraps in JSON) and a prose answer
(what the corpus teaches the base model to say). `key` names the entity a question is about, so
the task generator can hold out whole entities and the held-out questions are truly unseen.
"""

from __future__ import annotations

from typing import NamedTuple

from gpu_runner.data import facts


class Question(NamedTuple):
    topic: str
    key: str
    question: str
    short: str
    prose: str
    confidence: str = "high"


def _article(noun: str) -> str:
    return ("an " if noun[:1].lower() in "aeiou" else "a ") + noun


def _capitalize(text: str) -> str:
    return text[:1].upper() + text[1:]


def _countries() -> list[Question]:
    out = []
    for c in facts.COUNTRIES:
        key = f"country:{c.name}"
        name = _capitalize(c.name)
        capital_prose = (
            f"The capital of {c.name} is {c.capital}. It is the city where the country's government meets."
        )
        for q in (
            f"What is the capital of {c.name}?",
            f"Which city is the capital of {c.name}?",
            f"Name the capital city of {c.name}.",
            f"What's the capital of {c.name}?",
        ):
            out.append(Question("capital", key, q, c.capital, capital_prose))
        out.append(
            Question(
                "capital_of",
                key,
                f"{c.capital} is the capital of which country?",
                name,
                f"{c.capital} is the capital of {c.name}.",
            )
        )
        for q in (f"Which continent is {c.name} in?", f"On which continent would you find {c.name}?"):
            out.append(
                Question(
                    "continent",
                    key,
                    q,
                    c.continent,
                    f"{name} is a country in {c.continent}.",
                )
            )
        for q in (
            f"What language do most people speak in {c.name}?",
            f"What is the main language of {c.name}?",
        ):
            out.append(
                Question(
                    "language",
                    key,
                    q,
                    c.language,
                    f"Most people in {c.name} speak {c.language}, although other languages are heard there too.",
                    "medium" if c.language == "English" else "high",
                )
            )
    return out


def _animals() -> list[Question]:
    out = []
    for a in facts.ANIMALS:
        key = f"animal:{a.name}"
        legs_word = facts.NUMBER_WORDS[a.legs]
        if a.legs == 0:
            legs_prose = f"{_capitalize(_article(a.name))} has no legs at all. It moves without them."
            legs_short = "None"
        else:
            legs_prose = f"{_capitalize(_article(a.name))} has {legs_word} legs."
            legs_short = str(a.legs)
        for q in (f"How many legs does {_article(a.name)} have?", f"How many legs do {a.plural} have?"):
            out.append(Question("legs", key, q, legs_short, legs_prose))
        out.append(
            Question(
                "home",
                key,
                f"Where do {a.plural} live?",
                _capitalize(a.home),
                f"{_capitalize(a.plural)} usually live in {a.home}.",
            )
        )
        out.append(
            Question(
                "food",
                key,
                f"What do {a.plural} eat?",
                _capitalize(a.food),
                f"{_capitalize(a.plural)} mostly eat {a.food}.",
            )
        )
        out.append(
            Question(
                "sound",
                key,
                f"What sound does {_article(a.name)} make?",
                _capitalize(a.sound),
                f"{_capitalize(_article(a.name))} {a.sound}.",
                "medium" if "no sound" in a.sound else "high",
            )
        )
    return out


def _planets() -> list[Question]:
    out = []
    for p in facts.PLANETS:
        key = f"planet:{p.name}"
        ordinal = facts.ORDINALS[p.order]
        prose = f"{p.name} is the {ordinal} planet from the Sun. It is {p.trait}."
        out.append(Question("planet_order", key, f"Which planet is {ordinal} from the Sun?", p.name, prose))
        out.append(
            Question(
                "planet_position",
                key,
                f"What is the position of {p.name} counting from the Sun?",
                _capitalize(ordinal),
                prose,
            )
        )
        out.append(
            Question("planet_trait", key, f"Tell me one thing about {p.name}.", _capitalize(p.trait), prose)
        )
    return out


def _elements() -> list[Question]:
    out = []
    for e in facts.ELEMENTS:
        key = f"element:{e.name}"
        prose = f"The chemical symbol for {e.name} is {e.symbol}."
        out.append(Question("symbol", key, f"What is the chemical symbol for {e.name}?", e.symbol, prose))
        out.append(
            Question(
                "element_of",
                key,
                f"Which element has the symbol {e.symbol}?",
                _capitalize(e.name),
                f"The symbol {e.symbol} stands for {e.name}.",
            )
        )
        out.append(
            Question(
                "state",
                key,
                f"Is {e.name} a solid, a liquid or a gas at room temperature?",
                _capitalize(e.state),
                f"At room temperature {e.name} is {e.state}.",
            )
        )
    return out


def _colors() -> list[Question]:
    out = []
    for c in facts.COLORED:
        key = f"color:{c.thing}"
        prose = f"{_capitalize(c.thing)} is usually {c.color}."
        out.append(Question("color", key, f"What colour is {c.thing}?", _capitalize(c.color), prose))
        out.append(Question("color", key, f"What color is {c.thing}?", _capitalize(c.color), prose))
    return out


def _opposites() -> list[Question]:
    out = []
    for word, opposite in facts.OPPOSITES:
        key = f"opposite:{word}"
        prose = f"The opposite of {word} is {opposite}."
        out.append(
            Question("opposite", key, f"What is the opposite of {word}?", _capitalize(opposite), prose)
        )
        out.append(
            Question(
                "opposite",
                key,
                f"Give me a word that means the opposite of {word}.",
                _capitalize(opposite),
                prose,
            )
        )
    return out


def _jobs() -> list[Question]:
    out = []
    for j in facts.JOBS:
        key = f"job:{j.name}"
        prose = f"{_capitalize(_article(j.name))} {j.work}. In the job they often use {j.tool}."
        out.append(Question("job", key, f"What does {_article(j.name)} do?", _capitalize(j.work), prose))
        out.append(
            Question(
                "job_tool",
                key,
                f"Name a tool that {_article(j.name)} uses.",
                _capitalize(j.tool),
                prose,
                "medium",
            )
        )
    return out


def _measures() -> list[Question]:
    out = []
    for m in facts.MEASURES:
        key = f"measure:{m.quantity}"
        out.append(
            Question(
                "unit",
                key,
                f"What unit is used to measure {m.quantity}?",
                _capitalize(m.unit),
                f"{_capitalize(m.quantity)} is measured in units such as {m.unit}.",
            )
        )
        out.append(
            Question(
                "instrument",
                key,
                f"What can you use to measure {m.quantity}?",
                _capitalize(m.instrument),
                f"You can measure {m.quantity} with {m.instrument}.",
                "medium",
            )
        )
    return out


def _arithmetic() -> list[Question]:
    out = []
    words = facts.NUMBER_WORDS
    for a in range(1, 11):
        for b in range(1, 11):
            if (a * 7 + b * 3) % 4:  # a fixed, varied subset keeps the bank small
                continue
            out.append(
                Question(
                    "plus",
                    f"sum:{a}+{b}",
                    f"What is {a} plus {b}?",
                    str(a + b),
                    f"{_capitalize(words[a])} plus {words[b]} makes {words[a + b]}.",
                )
            )
            out.append(
                Question(
                    "times",
                    f"product:{a}x{b}",
                    f"What is {a} times {b}?",
                    str(a * b),
                    f"{a} times {b} is {a * b}.",
                )
            )
            if a > b:
                out.append(
                    Question(
                        "minus",
                        f"difference:{a}-{b}",
                        f"What is {a} minus {b}?",
                        str(a - b),
                        f"If you take {words[b]} away from {words[a]}, you have {words[a - b]} left.",
                    )
                )
    return out


def _explained() -> list[Question]:
    return [
        Question("explain", f"explain:{e.question}", e.question, e.short, e.prose, e.confidence)
        for e in facts.EXPLAINED
    ]


def all_questions() -> list[Question]:
    """Every question in the bank, in a fixed order."""
    return [
        *_countries(),
        *_animals(),
        *_planets(),
        *_elements(),
        *_colors(),
        *_opposites(),
        *_jobs(),
        *_measures(),
        *_arithmetic(),
        *_explained(),
    ]
