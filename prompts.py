"""Prompts: the text that follows the video in the user message, for each prompt type.

Imports util (question kinds, DataError).
"""

import json
from pathlib import Path

from util import MCA_QUESTION_TYPES, DataError

OFFICIAL_PRE_PROMPT = "These are frames of a video."
MCA_POST_PROMPT = "Answer with the option's letter from the given choices directly."
NA_POST_PROMPT = "Please answer the question using a single word or phrase."
API_NA_POST_PROMPT = "Do not response anything other than a single number!"  # sic, as published
THINKING_MCA_POST_PROMPT = (
    "First output the thinking process in <think> </think> tags and then output an option letter "
    "in <answer> </answer> tags."
)
THINKING_NA_POST_PROMPT = (
    "First output the thinking process in <think> </think> tags and then output a number in <answer> </answer> tags."
)
# Spatial-R1's prompt types: pre_prompt + "Question:\n" + question [+ "\nOptions:\n" + options] + "\n" + post.
PROMPT_TEMPLATES = {
    "default": {"pre_prompt": "", "mca_post_prompt": MCA_POST_PROMPT, "na_post_prompt": NA_POST_PROMPT},
    "thinking": {
        "pre_prompt": "",
        "mca_post_prompt": THINKING_MCA_POST_PROMPT,
        "na_post_prompt": THINKING_NA_POST_PROMPT,
    },
    "gemini_api": {"pre_prompt": "", "mca_post_prompt": MCA_POST_PROMPT, "na_post_prompt": API_NA_POST_PROMPT},
    "gpt4v": {"pre_prompt": "", "mca_post_prompt": MCA_POST_PROMPT, "na_post_prompt": API_NA_POST_PROMPT},
}
PROMPT_TYPES = ("default", "official", "thinking", "gemini_api", "gpt4v", "custom")
TEMPLATE_KEYS = ("pre_prompt", "mca_post_prompt", "na_post_prompt")
# Spatial-R1's wording for a cognitive map placed before the question.
COGMAP_INTRO = "Here is a cognitive_map for the video that may help you understand the space in the video:"


def load_prompt_template(path: str) -> dict:
    """A user prompt template: a JSON or YAML mapping with pre_prompt, mca_post_prompt and na_post_prompt."""
    if not Path(path).is_file():
        raise DataError(f"prompt_template_file: {path}: file not found")
    text = Path(path).read_text(encoding="utf-8")
    try:
        if Path(path).suffix.lower() in (".yaml", ".yml"):
            import yaml

            template = yaml.safe_load(text)
        else:
            template = json.loads(text)
    except Exception as error:
        raise DataError(f"prompt_template_file: {path}: cannot parse ({error})") from None
    if not isinstance(template, dict):
        raise DataError(f"prompt_template_file: {path}: expected a mapping with {', '.join(TEMPLATE_KEYS)}")
    missing = [key for key in TEMPLATE_KEYS if not isinstance(template.get(key), str)]
    if missing:
        raise DataError(f"prompt_template_file: {path}: missing or non-text key(s) {', '.join(missing)}")
    return {key: template[key] for key in TEMPLATE_KEYS}


def build_prompt(
    question: dict, prompt_type: str, template: dict | None = None, cognitive_map: str | None = None
) -> str:
    """The text that follows the video in the user message. `template` is the user's, for prompt_type
    "custom"; a cognitive map goes between the pre-prompt and the question."""
    is_mca = question["question_type"] in MCA_QUESTION_TYPES
    cogmap = f"{COGMAP_INTRO}\nCognitive Map:\n{cognitive_map}\n" if cognitive_map else ""
    if prompt_type == "official":  # the VSI-Bench paper's wording
        lines = [OFFICIAL_PRE_PROMPT, cogmap + question["question"]]
        if is_mca:
            lines += ["Options:", *question["options"], MCA_POST_PROMPT]
        else:
            lines.append(NA_POST_PROMPT)
        return "\n".join(lines)
    if prompt_type == "custom":
        if template is None:
            raise ValueError("prompt_type 'custom' needs a prompt template")
    elif prompt_type in PROMPT_TEMPLATES:
        template = PROMPT_TEMPLATES[prompt_type]
    else:
        raise ValueError(f"unknown prompt_type {prompt_type!r}; choose from {', '.join(PROMPT_TYPES)}")
    text = template["pre_prompt"] + cogmap + "Question:\n" + question["question"]
    if is_mca:
        text += "\nOptions:\n" + "\n".join(question["options"])
    return text + "\n" + (template["mca_post_prompt"] if is_mca else template["na_post_prompt"])
