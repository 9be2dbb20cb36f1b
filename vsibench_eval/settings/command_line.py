"""Command lines: a settings dataclass as flags (one --field per field, its help the field's comment in the
source, its default shown), and a parser that refuses abbreviated and unknown flags, naming the close
matches. Imports only the standard library, so `--help` and argument errors answer before torch loads.
"""

import argparse
import ast
import copy
import dataclasses
import difflib
import inspect
import io
import textwrap
import tokenize
import types
import typing
from typing import Literal

UNSET = object()  # the parse default of every field: a field still UNSET after parsing was not given


class StrictParser(argparse.ArgumentParser):
    """argparse without abbreviations (`--num_proc` is not `--num_processes`): an unknown flag is an error
    (exit 2) that names the closest known flags."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def parse_args(self, args=None, namespace=None):
        namespace, extras = self.parse_known_args(args, namespace)
        if extras:
            self.error(unrecognized_message(extras, self.long_flags()))
        return namespace

    def long_flags(self) -> list[str]:
        """Each --flag once, in its underscore spelling (the dashed aliases are left out)."""
        flags = [flag for action in self._actions for flag in action.option_strings if flag.startswith("--")]
        return list(dict.fromkeys(normal_flag(flag) for flag in flags))


def normal_flag(flag: str) -> str:
    """--max-new-tokens and --max_new_tokens=4 -> --max_new_tokens."""
    return "--" + flag.split("=")[0][2:].replace("-", "_")


def close_flags(flag: str, known: list[str]) -> list[str]:
    """The known flags `flag` may have meant: those it abbreviates, then those spelled alike."""
    flag = normal_flag(flag)
    extending = [name for name in known if name.startswith(flag)]
    return extending or difflib.get_close_matches(flag, known, n=3, cutoff=0.7)


def unrecognized_message(extras: list[str], known: list[str]) -> str:
    message = f"unrecognized arguments: {' '.join(extras)}"
    for flag in extras:
        if flag.startswith("--"):
            matches = close_flags(flag, known)
            hint = f"did you mean {' or '.join(matches)}?" if matches else "no flag is spelled like it"
            message += f"\n  {flag.split('=')[0]}: {hint}"
    return message


# ---------------------------------------------------------------- dataclass -> flags


def field_comments(cls) -> dict[str, str]:
    """Each field's comment in the class's source: the comment ending its line, joined with the comment-only
    lines that follow it. {} when the source cannot be read."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    comments = {
        token.start[0]: token.string.lstrip("#").strip()
        for token in tokenize.generate_tokens(io.StringIO(source).readline)
        if token.type == tokenize.COMMENT
    }
    lines_of = source.splitlines()
    found = {}
    for statement in ast.parse(source).body[0].body:
        if not (isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name)):
            continue
        lines = [comments[n] for n in range(statement.lineno, statement.end_lineno + 1) if n in comments]
        after = statement.end_lineno + 1
        while lines and after in comments and not lines_of[after - 1].split("#")[0].strip():
            lines.append(comments[after])
            after += 1
        found[statement.target.id] = " ".join(lines)
    return found


def parse_bool(text: str) -> bool:
    """A flag's true/false value, spelled as HfArgumentParser accepted it."""
    if text.lower() in ("yes", "true", "t", "y", "1"):
        return True
    if text.lower() in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false (yes/no, t/f, y/n, 1/0), got {text!r}")


def without_none(annotation):
    """X for `X | None`, list[X] for `X | list[X]` (one or more values); any other union is refused (one flag
    parses one type)."""
    if typing.get_origin(annotation) not in (typing.Union, types.UnionType):
        return annotation
    kept = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    lists = [arg for arg in kept if typing.get_origin(arg) is list]
    if len(kept) == 2 and len(lists) == 1 and set(kept) - set(lists) == set(typing.get_args(lists[0])):
        return lists[0]
    if len(kept) != 1:
        raise TypeError(f"a flag parses one type, not {annotation}")
    return kept[0]


def shown_default(value) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return " ".join(map(str, value)) if value else "empty"
    return repr(value) if value == "" else str(value)


def flag_options(annotation, choices) -> dict:
    """argparse options for a field's type: bool (--x, --x true|false), list[T] (one or more T), Literal (its
    values), int, float, str."""
    kind = without_none(annotation)
    if kind is bool:
        return {"type": parse_bool, "nargs": "?", "const": True, "metavar": "true|false"}
    if typing.get_origin(kind) is list:
        (item,) = typing.get_args(kind)
        return {"type": item, "nargs": "+", "metavar": item.__name__.upper()}
    if typing.get_origin(kind) is Literal:
        return {"type": type(typing.get_args(kind)[0]), "choices": typing.get_args(kind)}
    if choices:
        return {"type": kind, "choices": tuple(choices)}
    return {"type": kind, "metavar": kind.__name__.upper()}


def dataclass_parser(cls, defaults, choices: dict | None = None, **parser_options) -> StrictParser:
    """A parser with --name (and --name-with-dashes) per field of `cls`, every default UNSET; the help of
    each is the field's source comment and its value in `defaults`. `choices`: allowed values of fields
    typed plain str (e.g. names defined elsewhere). Bool fields also get --no_name. The dashed spellings work
    but are left out of --help."""
    parser = StrictParser(**parser_options)
    comments, hints = field_comments(cls), typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        name, default = field.name, getattr(defaults, field.name)
        text = comments.get(name, "").replace("%", "%%")
        options = flag_options(hints[name], (choices or {}).get(name))
        add_flag(parser, f"--{name}", dest=name, help=f"{text} (default: {shown_default(default)})", **options)
        if without_none(hints[name]) is bool:
            add_flag(
                parser,
                f"--no_{name}",
                dest=name,
                action="store_const",
                const=False,
                help=f"turn off --{name} (= --{name} false)",
            )
    return parser


def add_flag(parser: argparse.ArgumentParser, flag: str, **options) -> None:
    """--flag_name, and --flag-name hidden from --help (HfArgumentParser accepted both)."""
    parser.add_argument(flag, default=UNSET, **options)
    if "_" in flag:
        parser.add_argument(flag.replace("_", "-"), default=UNSET, **(options | {"help": argparse.SUPPRESS}))


def parse_dataclass(cls, defaults, argv: list[str], choices: dict | None = None, **parser_options):
    """`defaults` with the fields given in `argv` replaced, and the names of those fields. Exits (status 2)
    with a message on a bad flag or value, (status 0) after printing --help."""
    parsed = vars(dataclass_parser(cls, defaults, choices, **parser_options).parse_args(argv))
    given = {name: value for name, value in parsed.items() if value is not UNSET}
    config = copy.deepcopy(defaults)
    for name, value in given.items():
        setattr(config, name, value)
    return config, set(given)
