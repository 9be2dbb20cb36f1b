"""The command lines: help text and defaults from the config's comments, refused abbreviations and unknown
flags, the choices named for a bad value, every flag form HfArgumentParser accepted, and no torch for --help."""

import dataclasses
import os
import re
import subprocess
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from vsibench_eval.scoring import report
from vsibench_eval.settings.command_line import dataclass_parser, field_comments, parse_dataclass, without_none
from vsibench_eval.settings.config import EvalConfig, parse_config

ROOT = Path(__file__).resolve().parent.parent


def one_line(text: str) -> str:
    return " ".join(text.split())


@dataclass
class Settings:
    """A docstring is not a field."""

    name: str = "a"  # the name
    sizes: list[int] = field(default_factory=lambda: [1, 2])  # sizes, continued
    # on the next line
    # and the one after

    # a comment after a blank line belongs to nobody
    quiet: bool = False
    mode: Literal["x", "y"] | None = None  # how; 10 % of the time


def test_field_comments_take_the_trailing_comment_and_its_continuation_lines():
    assert field_comments(Settings) == {
        "name": "the name",
        "sizes": "sizes, continued on the next line and the one after",
        "quiet": "",
        "mode": "how; 10 % of the time",
    }


def test_help_shows_each_field_comment_and_its_default():
    text = one_line(dataclass_parser(Settings, Settings(name="b"), prog="p").format_help())
    assert "--name STR the name (default: b)" in text
    assert "--sizes INT [INT ...] sizes, continued on the next line and the one after (default: 1 2)" in text
    assert "--mode {x,y} how; 10 % of the time (default: unset)" in text
    assert "--quiet [true|false] (default: false)" in text and "--no_quiet turn off --quiet (= --quiet false)" in text
    assert "--no-quiet" not in text  # the dashed spellings work but are not listed


def test_every_config_field_has_help_text():
    comments = field_comments(EvalConfig)
    assert [f.name for f in dataclasses.fields(EvalConfig) if not comments.get(f.name)] == []


def test_every_negation_in_help_says_what_it_turns_off(capsys):
    with pytest.raises(SystemExit) as stop:
        parse_config(EvalConfig(), ["--help"])
    assert stop.value.code == 0
    help_text = capsys.readouterr().out
    negated = re.findall(r"^ +--no_(\w+)", help_text, re.MULTILINE)  # each flag's entry starts a line
    hints = typing.get_type_hints(EvalConfig)
    booleans = [f.name for f in dataclasses.fields(EvalConfig) if without_none(hints[f.name]) is bool]
    assert sorted(negated) == sorted(booleans)
    assert {"shared_prefix", "demo", "use_cognitive_map", "offload_cogmap", "debug_mode"} < set(booleans)
    for name in negated:
        assert f"--no_{name} turn off --{name} (= --{name} false)" in one_line(help_text)


@pytest.mark.e2e
def test_eval_qwen_help_lists_help_text_and_the_main_blocks_defaults():
    wide = {**os.environ, "COLUMNS": "1000"}  # argparse wraps at hyphens otherwise ("score- changing")
    done = subprocess.run(
        [sys.executable, "eval_qwen.py", "--help"], capture_output=True, text=True, cwd=ROOT, env=wide
    )
    assert done.returncode == 0, done.stderr
    text = one_line(done.stdout)
    # a comment continued on the next line of config.py, and the default set in eval_qwen.py's __main__ block
    assert (
        "--protocol {none,spatial_r1,vsibench_official,lmms_eval} the evaluation protocol (protocols.py): every "
        "score-changing field left unset takes its value; fields set keep theirs and are logged as deviations "
        "(default: lmms_eval)" in text
    )
    assert "--num_processes INT worker processes; the questions are split between them by video (default: 4)" in text
    assert "--num_frames INT frames sampled uniformly over the whole video (protocol: 32) (default: unset)" in text
    assert "--shared_prefix [true|false] encode each video and prefill" in text and "(default: true)" in text


WITHOUT_TORCH = """
import runpy, sys
sys.argv = {argv!r}
try:
    {call}
except SystemExit as stop:
    loaded = sorted(name for name in ("torch", "transformers", "pandas") if name in sys.modules)
    print("exit", stop.code, "loaded", loaded, file=sys.stderr)
"""


@pytest.mark.e2e
@pytest.mark.parametrize(
    "argv, status",
    [(["eval_qwen.py", "--help"], 0), (["eval_qwen.py", "--num_proc", "2"], 2), (["vsibench-eval", "--help"], 0)],
)
def test_help_and_flag_errors_never_import_torch(argv, status):
    call = "runpy.run_path('eval_qwen.py', run_name='__main__')"
    if argv[0] == "vsibench-eval":
        call = "import vsibench_eval; vsibench_eval.evaluate_command()"
    code = WITHOUT_TORCH.format(argv=argv, call=call)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert f"exit {status} loaded []" in done.stderr, done.stderr


def test_abbreviated_flags_exit_2_naming_the_close_matches(capsys):
    with pytest.raises(SystemExit) as stop:
        parse_config(EvalConfig(), ["--demo", "--num_proc", "2", "--max_new", "4"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: --num_proc 2 --max_new 4" in err
    assert "--num_proc: did you mean --num_processes?" in err
    assert "--max_new: did you mean --max_new_tokens?" in err


def test_a_misspelled_flag_names_flags_spelled_alike(capsys):
    with pytest.raises(SystemExit) as stop:
        parse_config(EvalConfig(), ["--batch_szie=4"])
    assert stop.value.code == 2 and "--batch_szie: did you mean --batch_size" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--protocol", "lmms"], "invalid choice: 'lmms' (choose from 'none', 'spatial_r1', 'vsibench_official', "),
        (["--subset", "half"], "invalid choice: 'half' (choose from 'full', 'debiased', 'pruned')"),
        (["--prompt_type", "cot"], "invalid choice: 'cot' (choose from 'default', 'official', 'thinking'"),
        (["--shared_prefix", "maybe"], "expected true or false (yes/no, t/f, y/n, 1/0), got 'maybe'"),
        (["--num_frames", "8.5"], "argument --num_frames: invalid int value: '8.5'"),
    ],
)
def test_bad_values_exit_2_naming_the_choices(argv, needle, capsys):
    with pytest.raises(SystemExit) as stop:
        parse_config(EvalConfig(), argv)
    assert stop.value.code == 2 and needle in capsys.readouterr().err


def test_every_flag_form_of_hf_argument_parser_still_works():
    defaults = EvalConfig(use_cognitive_map=True, target_resolution=[448, 448])
    argv = [
        "--no_use_cognitive_map",
        "--shared-prefix",
        "FALSE",
        "--debug_mode",
        "--demo=false",
        "--target-resolution",
        "224",
        "336",
        "--question_types",
        "route_planning",
        "object_counting",
        "--fps=0.5",
        "--max_new_tokens",
        "8",
        "--mrope_positions",
        "transformers",
    ]
    config, given = parse_config(defaults, argv)
    assert (config.use_cognitive_map, config.shared_prefix, config.debug_mode, config.demo) == (
        False,
        False,
        True,
        False,
    )
    assert config.target_resolution == [224, 336] and defaults.target_resolution == [448, 448]
    assert config.question_types == ["route_planning", "object_counting"]
    assert config.fps == 0.5 and config.max_new_tokens == 8 and config.mrope_positions == "transformers"
    assert config.batch_size == defaults.batch_size and config.num_frames is None
    assert given == {
        "use_cognitive_map", "shared_prefix", "debug_mode", "demo", "target_resolution", "question_types", "fps",
        "max_new_tokens", "mrope_positions",
    }  # fmt: skip


def test_parse_dataclass_leaves_the_defaults_untouched():
    defaults = Settings()
    parsed, given = parse_dataclass(Settings, defaults, ["--sizes", "5", "--no_quiet"])
    assert parsed.sizes == [5] and parsed.quiet is False and given == {"sizes", "quiet"}
    assert defaults.sizes == [1, 2]


def test_scorer_refuses_abbreviations(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        report.main([str(tmp_path / "a.jsonl"), "--comp", str(tmp_path / "b.jsonl")])
    assert stop.value.code == 2 and "--comp: did you mean --compare?" in capsys.readouterr().err
