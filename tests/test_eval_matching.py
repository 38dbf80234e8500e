"""Answer matching against hand-labelled predictions: what a person reading the output would score."""
import pytest

from nativevlm.eval.matching import (CORRECT, PARSE_FAILURE, WRONG, match_choice, match_open, normalize_answer,
                                     numbers_to_digits)

OPTIONS = {"A": "red", "B": "blue", "C": "green", "D": "yellow"}
RAMBLE = "Let me look at the picture carefully. " * 12  # 84 words, no option named

CHOICE_CASES = [
    # letters, with and without punctuation or parentheses
    ("B", CORRECT), ("B.", CORRECT), ("(B)", CORRECT), ("B)", CORRECT), ("[B]", CORRECT), ("**B**", CORRECT),
    ("b", CORRECT), ("'B'", CORRECT), ("B. blue", CORRECT), ("The answer is B.", CORRECT), ("Option B", CORRECT),
    ("C", WRONG), ("(D)", WRONG),
    # option text instead of the letter
    ("blue", CORRECT), ("It is blue.", CORRECT), ("Blue", CORRECT), ("green", WRONG),
    # two letters or two option texts: ambiguous
    ("A or B", PARSE_FAILURE), ("B, C", PARSE_FAILURE), ("A and B are both possible", PARSE_FAILURE),
    ("blue or green", PARSE_FAILURE),
    # "A" as an article is not option A; the option text decides
    ("A blue square.", CORRECT), ("A red square.", WRONG), ("A is right", WRONG),
    # verbose answers ending in "Answer: X"
    ("The square is left of the circle, and it is painted in a cold colour.\nAnswer: B", CORRECT),
    ("Red is warm (A) but the object looks cold to me, not like C or D. Answer: (B)", CORRECT),
    ("I think it could be A or C. Final answer: C.", WRONG),
    (RAMBLE + "Answer: B", CORRECT),
    # empty, overlong, unreadable
    ("", PARSE_FAILURE), ("   \n", PARSE_FAILURE), (RAMBLE, PARSE_FAILURE), (RAMBLE + "so B", PARSE_FAILURE),
    ("I don't know.", PARSE_FAILURE), ("purple", PARSE_FAILURE), ("Answer:", PARSE_FAILURE),
]


@pytest.mark.parametrize("prediction,status", CHOICE_CASES)
def test_multiple_choice(prediction, status):
    assert match_choice(prediction, OPTIONS, "B").status == status


def test_choice_prefers_the_longer_option_text_and_numbers_by_value():
    shapes = {"A": "circle", "B": "red circle", "C": "square", "D": "star"}
    assert match_choice("the red circle", shapes, "B").status == CORRECT
    counts = {"A": "1", "B": "2", "C": "3", "D": "12"}
    assert match_choice("three", counts, "C").status == CORRECT
    assert match_choice("12", counts, "D").status == CORRECT  # "1" and "2" inside "12" are not options named


OPEN_CASES = [
    # numbers as words or digits, by value
    ("3", "3", CORRECT), ("three", "3", CORRECT), ("Three.", "3", CORRECT), ("3", "three", CORRECT),
    ("There are 3 objects.", "3", CORRECT), ("twenty-one", "21", CORRECT), ("3.0", "3", CORRECT),
    ("one hundred and five", "105", CORRECT), ("1,000", "1000", CORRECT), ("4", "3", WRONG),
    ("3 or 4", "3", PARSE_FAILURE), ("many", "3", PARSE_FAILURE), ("Counting: 1, 2, 3. Answer: 3", "3", CORRECT),
    # yes / no
    ("Yes", "yes", CORRECT), ("yes, there is a green star", "yes", CORRECT), ("No.", "yes", WRONG),
    ("yes and no", "yes", PARSE_FAILURE),
    # normalised exact match
    ("circle", "circle", CORRECT), ("A circle.", "circle", CORRECT), ("The answer is circle", "circle", CORRECT),
    ("Circle", "circle", CORRECT), ("square", "circle", WRONG), ("a red circle", "circle", WRONG),
    ("", "circle", PARSE_FAILURE), (RAMBLE, "circle", PARSE_FAILURE),
]


@pytest.mark.parametrize("prediction,reference,status", OPEN_CASES)
def test_open_answers(prediction, reference, status):
    assert match_open(prediction, reference).status == status


def test_number_words():
    assert numbers_to_digits("twenty-one cats and three hundred and five dogs") == "21 cats and 305 dogs"
    assert numbers_to_digits("two and three") == "2 and 3"
    assert numbers_to_digits("three four") == "3 4"
    assert normalize_answer("The answer is Seven.") == "7"
