"""Reading the answer out of a model's free-form output: rules first, as VLMEvalKit's `can_infer` does, and
a prediction no rule can read is a *parse failure*, counted on its own, never a guessed option.

Multiple choice: the rules read the prediction's answer span (the text after a final "Answer:" / "answer
is", else the whole prediction). It counts when exactly one option letter appears as a word (punctuation and
parentheses stripped; "A" followed by a lower-case word is the article, not the option), or, when no letter
appears, exactly one option's text. Two letters, or two option texts, are ambiguous: a parse failure.
Open questions: numbers are compared by value (digits or number words, exactly one number in the span),
yes/no by the one of them that appears, anything else by normalised exact match.

VLMEvalKit falls back to an LLM judge and then to a random option; lmms-eval's MMMU parser to a random
option too. Both turn unreadable answers into noise around chance; reporting the parse-failure rate instead
says how much of a score is formatting, which for small models' verbose answers is most of the gap.
"""
from __future__ import annotations

import re
import string
from dataclasses import dataclass
from collections import Counter, defaultdict
from typing import Iterable, Mapping, Optional

CORRECT, WRONG, PARSE_FAILURE = "correct", "wrong", "parse_failure"
# Rules read short answers only: in a long ramble a lone capital letter or an option's word is as likely a
# passing mention as a choice. An explicit "Answer: X" line is read however long the text before it is.
MAX_RULE_WORDS = 40
STRIP = ".()[]{},:;!?*#\"'`<>|"  # VLMEvalKit's characters, plus quotes and brackets models wrap letters in
ANSWER_MARKER = re.compile(r"\banswer\s*(?:is\b\s*:?|:)", re.IGNORECASE)
# "A red circle": an "A" before a lower-case word is the article, unless that word is one that follows an
# option letter ("A or B", "A is right").
ARTICLE_A = re.compile(r"\bA\s+(?!(?:or|and|nor|is|was|vs|seems|looks|because|since|as)\b)[a-z]")
NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")

UNITS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
         "sixteen seventeen eighteen nineteen").split()
TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()
NUMBER_WORDS = {**{w: i for i, w in enumerate(UNITS)}, **{w: 20 + 10 * i for i, w in enumerate(TENS)}}
SCALES = {"hundred": 100, "thousand": 1000, "million": 1000000}


@dataclass(frozen=True)
class Match:
    status: str  # CORRECT, WRONG or PARSE_FAILURE
    parsed: Optional[str]  # what the rules read: an option letter, a number, the normalised text; None if nothing

    @property
    def correct(self) -> bool:
        return self.status == CORRECT


def answer_span(prediction: str) -> str:
    """The text after the last "Answer:" / "answer is" up to the end of that line, when that holds anything
    but punctuation; else the whole prediction."""
    text = prediction.strip()
    markers = list(ANSWER_MARKER.finditer(text))
    if markers:
        tail = text[markers[-1].end():].strip().split("\n", 1)[0]
        if tail.strip(STRIP + " "):
            return tail
    return text


def words_of(text: str) -> list[str]:
    for c in STRIP:
        text = text.replace(c, " ")
    return text.split()


def numbers_to_digits(text: str) -> str:
    """Number words to digits ("twenty-one" -> "21", "three hundred and five" -> "305"); other words kept.
    "and" joins only after a scale word, so "two and three" stays two numbers."""
    out: list[str] = []
    total, current, in_number, after_scale, pending = 0, 0, False, False, ""
    tokens = re.findall(r"[A-Za-z]+|[^A-Za-z]+", re.sub(r"(?i)(?<=ty)-(?=[a-z])", " ", text))
    for i, tok in enumerate(tokens):
        low = tok.lower()
        nxt = tokens[i + 2].lower() if i + 2 < len(tokens) else ""
        if low in NUMBER_WORDS:
            value, last = NUMBER_WORDS[low], current % 100
            if in_number and not (after_scale or (last >= 20 and last % 10 == 0 and value < 10)):
                out.append(str(total + current) + pending)  # "three four": two numbers, not seven
                total, current = 0, 0
            current, in_number, after_scale = current + value, True, False
        elif in_number and low in SCALES:
            current, after_scale = max(current, 1) * SCALES[low], True
            if SCALES[low] > 100:
                total, current = total + current, 0
        elif in_number and (tok.isspace() or (low == "and" and after_scale and nxt in NUMBER_WORDS)):
            pending += tok
            continue
        else:
            if in_number:
                out.append(str(total + current) + pending)
                total, current, in_number, after_scale = 0, 0, False, False
            pending = ""
            out.append(tok)
            continue
        pending = ""
    if in_number:
        out.append(str(total + current) + pending)
    return "".join(out)


def normalize_answer(text: str) -> str:
    """Lower case, number words as digits, no "Answer:" prefix, no surrounding punctuation, no leading
    article, single spaces: the form open answers are compared in."""
    text = numbers_to_digits(text.strip()).lower()
    text = re.sub(r"^(the answer is|answer:)\s*", "", text)
    text = text.strip(STRIP + " ")
    text = re.sub(r"^(a|an|the)\s+", "", text)
    return re.sub(r"\s+", " ", text)


def majority_counts(pairs: Iterable[tuple[str, str]]) -> dict[str, tuple[int, int]]:
    """Per group, (how often its most common normalised answer occurs, how many answers): what always
    giving that answer scores -- the answer prior of learning curves and study plots."""
    answers: dict[str, Counter] = defaultdict(Counter)
    for group, answer in pairs:
        answers[group][normalize_answer(answer)] += 1
    return {g: (c.most_common(1)[0][1], sum(c.values())) for g, c in sorted(answers.items())}


def parse_number(text: str) -> Optional[float]:
    """The value of `text` when, normalised, it is exactly one number; else None."""
    found = NUMBER.fullmatch(normalize_answer(text))
    return float(found.group().replace(",", "")) if found else None


def _letter(span: str, letters: list[str]) -> tuple[Optional[str], int]:
    """The one option letter in `span` and how many distinct letters appear."""
    words = words_of(span)
    if len(words) == 1 and words[0].upper() in letters:  # a bare "b" or "(b)" is a letter whatever its case
        return words[0].upper(), 1
    hits = {w for w in words if w in letters}
    if "A" in hits and all(ARTICLE_A.match(span, m.start()) for m in re.finditer(r"\bA\b", span)):
        hits.discard("A")
    return (next(iter(hits)) if len(hits) == 1 else None), len(hits)


def _phrase_in(phrase: str, text: str) -> bool:
    return bool(phrase) and re.search(rf"(?<!\w){re.escape(phrase)}(?!\w)", text) is not None


def read_choice(prediction: str, options: Mapping[str, str]) -> Optional[str]:
    """The option letter a prediction picks, or None when no rule reads exactly one."""
    span = answer_span(prediction)
    words = words_of(span)
    if not words or len(words) > MAX_RULE_WORDS:
        return None
    letters = list(options)
    letter, n_letters = _letter(span, letters)
    if n_letters:
        return letter  # None when two letters appear: ambiguous, even if an option text would decide
    text = normalize_answer(span)
    named = {k: normalize_answer(str(v)) for k, v in options.items()}
    hits = [k for k, v in named.items() if _phrase_in(v, text)]
    # "red circle" also contains the option "circle": the longer option is the one named
    hits = [k for k in hits if not any(k != o and named[k] in named[o] for o in hits)]
    return hits[0] if len(hits) == 1 else None


def match_choice(prediction: str, options: Mapping[str, str], answer: str) -> Match:
    """Score a multiple-choice prediction against the right option's letter."""
    letter = read_choice(prediction, options)
    if letter is None:
        return Match(PARSE_FAILURE, None)
    return Match(CORRECT if letter == answer else WRONG, letter)


def match_open(prediction: str, reference: str) -> Match:
    """Score an open answer: by value for a numeric reference, yes/no by the one that appears, else by
    normalised exact match."""
    span = answer_span(prediction)
    words = words_of(span)
    if not words or len(words) > MAX_RULE_WORDS:
        return Match(PARSE_FAILURE, None)
    target = parse_number(reference)
    if target is not None:
        values = {float(n.replace(",", "")) for n in NUMBER.findall(numbers_to_digits(span))}
        if len(values) != 1:
            return Match(PARSE_FAILURE, None)
        value = values.pop()
        return Match(CORRECT if value == target else WRONG, f"{value:g}")
    ref = normalize_answer(reference)
    if ref in ("yes", "no"):
        said = {w.lower() for w in words} & {"yes", "no"}
        if len(said) != 1:
            return Match(PARSE_FAILURE, None)
        return Match(CORRECT if said == {ref} else WRONG, said.pop())
    pred = normalize_answer(span)
    return Match(CORRECT if pred == ref else WRONG, pred)


def bare_answer(prediction: str, reference: str, options: Optional[Mapping[str, str]] = None) -> bool:
    """Whether the prediction's answer span is one answer and nothing else: a number alone for a numeric
    reference, yes or no alone for a yes/no one, an option letter and/or that option's text for a
    multiple-choice one (any open answer is compared whole already). The rules above read "yes. 1 is greater
    than" as `1` for "how many?" and as `yes` for "is there?", which is right for scoring verbose answers and
    a reward a policy learns to hedge with; a strict reward asks for this too (`rl.reward`)."""
    span = answer_span(prediction)
    if options:
        letter = read_choice(prediction, options)
        if letter is None:
            return False
        words, text = words_of(span), normalize_answer(str(options[letter]))
        return (normalize_answer(span) == text or [w.upper() for w in words] == [letter]
                or (bool(words) and words[0].upper() == letter and normalize_answer(" ".join(words[1:])) == text))
    if parse_number(reference) is not None:
        return parse_number(span) is not None
    if normalize_answer(reference) in ("yes", "no"):
        return normalize_answer(span) in ("yes", "no")
    return bool(words_of(span))


def option_letters(n: int) -> list[str]:
    return list(string.ascii_uppercase[:n])
