"""The lenient answer parser, for verbose and reasoning models; the score is then the official metric.

text2num reads numbers written in words. The official parser (metric.py) is never changed.

The lenient parser, for verbose and reasoning models, reads the last <answer> span (also when its closing tag
is missing), else the whole text, and never guesses:
- multiple choice: the option the text states last: a letter that is the whole answer or a line of its own
  (`B`, `B.`, `(B)`, `**B**`), follows an answer cue (`Answer: B`, `The answer is B`, `**Answer:** (B)`,
  `the correct option is B`) or is the last word (`..., so B.`); or the full text of one option, as the whole
  answer or after a cue (`Left`, `The answer is Left`). When the text states none, the last letter written as
  an option label: `B. Right` or `B) Right` starting a line, `(B)`, `B)`, `**B**` (so "The answer is B. (A) is
  wrong because ..." reads B). Only the record's option letters count, and outside a whole answer only
  capitals, so the article "A" starting a sentence and the pronoun "I" are never read as answers.
- numerical: the last number stated, in digits (`3`, `3.5 m`, `3m`, `1,200`) or in words, which text2num's
  alpha2digit turns into digits first (`three`, `twenty-one`, `a hundred`, `one thousand two hundred` -> 1200,
  `two point five meters` -> 2.5). Ordinals (`first`, `2nd`) are not numbers stated. Units are not converted;
  a number echoed from the question is not told apart (VSI-Bench questions hold none).
A text that states no answer scores 0. Scoring is then the official one: letter match, mean relative accuracy.
"""

import re

from text_to_num import alpha2digit

from vsibench_eval.metric import is_multiple_choice, metric

TAG = re.compile(r"</?\w+>")
# "Answer:", "The answer is", "the correct option is", "answer would be option", "**Answer:**" (any case).
CUE = r"(?i:\b(?:answer|option|choice)(?:\s+(?:is|would be|should be)\s*:?|\s*:)\s*(?:option\s+)?)[\s*(\[\"']*"
# Where a text states its answer; the last statement wins.
STATEMENT_PATTERNS = (
    re.compile(r"\A[\s*(\[]*([A-Za-z])[\s.:)\]*]*\Z"),  # the whole answer: "B", "b.", "(B)", "**B**"
    re.compile(r"^[\s*#>-]*\(?([A-Z])[.)]?[*\s]*$", re.MULTILINE),  # a line of its own: "B", "(B)", "**B.**"
    re.compile(CUE + r"([A-Z])\b"),  # "Answer: B", "The answer is (B)", "the correct option is B"
    re.compile(r"\b([A-Z])[\s.)*]*\Z"),  # the last word: "..., so B."
)
# Letters written as option labels; read only when the text makes no statement.
LABEL_PATTERNS = (
    re.compile(r"^[\s*#>-]*([A-Z])[.)]\s", re.MULTILINE),  # a line that starts like an option: "B. Right"
    re.compile(r"\(([A-Z])\)"),  # "(B)"
    re.compile(r"(?<![\w(])([A-Z])\)"),  # "B) Right"
    re.compile(r"\*\*([A-Z])\b"),  # "**B**", "**B. Right**"
)
OPTION = re.compile(r"\s*([A-Z])\s*[.):]\s*(.*)", re.DOTALL)
# "1,200" (thousands separators) or "3" / "3.5"; not inside a word, a longer number or a power ("scene0653", "m^2"),
# nor an ordinal ("1st", "2nd", which alpha2digit writes for "first", "second").
NUMBER_IN_DIGITS = re.compile(
    r"(?<![\w.^])\d{1,3}(?:,\d{3})+(?:\.\d+)?(?!,?\d)|(?<![\w.,^])\d+(?:\.\d+)?(?!\d|(?:st|nd|rd|th)\b)"
)


def answer_text(prediction: str | None) -> str:
    """The text of the last <answer> span, also when the closing tag is missing (output cut off); else the whole
    prediction. Other tags (<think>, </think>) become line breaks, so what follows them starts a line."""
    text = prediction or ""
    if "<answer>" in text:
        text = text.rsplit("<answer>", 1)[1].split("</answer>", 1)[0]
    return TAG.sub("\n", text).strip()


def parse_options(options: list[str] | None) -> dict[str, str]:
    """Option letter -> option text, from ["A. Back", "B. Right"]; an option without its letter gets its place's."""
    parsed = {}
    for index, option in enumerate(options or []):
        match = OPTION.fullmatch(option)
        letter, text = match.groups() if match else (chr(ord("A") + index), option)
        parsed[letter] = text.strip()
    return parsed


def normalized(text: str) -> str:
    return text.strip(" \t\n*.\"'`").lower()


def letter_mentions(text: str, patterns: tuple[re.Pattern, ...]) -> list[tuple[int, str]]:
    """(end position, letter) of every letter that one of `patterns` finds."""
    return [(m.end(1), m.group(1).upper()) for pattern in patterns for m in pattern.finditer(text)]


def option_text_mentions(text: str, options: dict[str, str]) -> list[tuple[int, str]]:
    """(end position, letter) of every option whose full text is the whole answer or follows an answer cue."""
    found = []
    for letter, option in options.items():
        if not option:
            continue
        if normalized(text) == normalized(option):
            found.append((len(text), letter))
        cued = re.compile(CUE + rf"(?i:{re.escape(option)})(?![\w-])")
        found += [(m.end(), letter) for m in cued.finditer(text)]
    return found


def parse_choice(text: str, options: list[str] | None) -> str | None:
    """The option letter the text states last; else the last one it writes as an option label ("(B)", "B)");
    None when there is neither. Only the options' letters count (any capital when there are no options)."""
    parsed = parse_options(options)
    statements = letter_mentions(text, STATEMENT_PATTERNS) + option_text_mentions(text, parsed)
    for mentions in (statements, letter_mentions(text, LABEL_PATTERNS)):
        valid = [(end, letter) for end, letter in mentions if not parsed or letter in parsed]
        if valid:
            return max(valid)[1]
    return None


def parse_number(text: str) -> float | None:
    """The number the text states last, written in digits or words, or None when it states none."""
    digits = alpha2digit(text, "en", threshold=0)  # threshold 0: also "one" and "two" alone, as counts often are
    found = NUMBER_IN_DIGITS.findall(digits)
    return float(found[-1].replace(",", "")) if found else None


def score_lenient(prediction: str | None, ground_truth: str, question_type: str, options: list[str] | None) -> float:
    """Metric of one prediction read by the lenient parser, in [0, 1]; 0 when it states no answer."""
    text = answer_text(prediction)
    parsed = parse_choice(text, options) if is_multiple_choice(question_type) else parse_number(text)
    return metric(parsed, ground_truth, question_type)


def score_lenient_record(record: dict) -> float:
    """One result record's score read by the lenient parser; a failed question (its `error` set) scores 0."""
    if record.get("error"):
        return 0.0
    return score_lenient(record["prediction"], record["ground_truth"], record["question_type"], record.get("options"))
