"""Prompts: the text that follows the video in the user message, for each prompt format and type, and the
text a cognitive map adds to it.
"""

import json
from pathlib import Path

from vsibench_eval.errors import DataError
from vsibench_eval.metric import MCA_QUESTION_TYPES

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
COGMAP_UNAVAILABLE = "\nCognitive Map Unavailable (Generation/Offloading Failed)."  # sic, the original's


def load_prompt_template(path: str) -> dict:
    """A user prompt template: a JSON or YAML mapping with pre_prompt, mca_post_prompt and na_post_prompt."""
    if not Path(path).is_file():
        raise DataError(f"prompt_template_file: {path}: file not found")
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(f"prompt_template_file: {path}: not UTF-8 text (byte {error.start + 1})") from None
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
    question: dict,
    prompt_type: str,
    template: dict | None = None,
    cogmap_block: str = "",
    prompt_format: str = "spatial_r1",
) -> str:
    """The text that follows the video in the user message.

    prompt_format "spatial_r1" (Spatial-R1's script): pre_prompt + "Question:\n" + question
    [+ "\nOptions:\n" + options] + "\n" + post_prompt. "vsibench" (the official task's doc_to_text): the
    pre-prompt, or "These are frames of a video." when it is empty, then the question, ("Options:" and the
    options,) and the post-prompt, one per line. prompt_type picks the wording (`template` is the user's, for
    "custom"); the legacy type "official" is the vsibench format with the default wording. `cogmap_block`
    (see cogmap_block) goes right before the question.
    """
    is_mca = question["question_type"] in MCA_QUESTION_TYPES
    if prompt_type == "official":
        prompt_type, prompt_format = "default", "vsibench"
    if prompt_type == "custom":
        if template is None:
            raise ValueError("prompt_type 'custom' needs a prompt template")
    elif prompt_type in PROMPT_TEMPLATES:
        template = PROMPT_TEMPLATES[prompt_type]
    else:
        raise ValueError(f"unknown prompt_type {prompt_type!r}; choose from {', '.join(PROMPT_TYPES)}")
    post_prompt = template["mca_post_prompt"] if is_mca else template["na_post_prompt"]
    if prompt_format == "vsibench":
        lines = [template["pre_prompt"] or OFFICIAL_PRE_PROMPT, cogmap_block + question["question"]]
        if is_mca:
            lines.append("Options:\n" + "\n".join(question["options"]))
        return "\n".join([*lines, post_prompt])
    text = template["pre_prompt"] + cogmap_block + "Question:\n" + question["question"]
    if is_mca:
        text += "\nOptions:\n" + "\n".join(question["options"])
    return text + "\n" + post_prompt


def cogmap_block(cogmap: str | None, source: str, insert: str = "evaluator", offloading: bool = False) -> str:
    """The text a question's cognitive map puts before the question, when maps are in use.

    insert "evaluator": the intro line and "Cognitive Map:" with the map, nothing without a map. "spatial_r1"
    (the original script): a newline, the intro line, then "\nCognitive Map:\n" and the map, with a space
    before a map the model generated while offloading was off, or a sentence saying no map was available.
    """
    if insert == "spatial_r1":
        if cogmap:
            space = " " if source == "generated" and not offloading else ""
            return f"\n{COGMAP_INTRO}\n\nCognitive Map:\n{space}{cogmap}\n"
        return f"\n{COGMAP_INTRO}\n{COGMAP_UNAVAILABLE}\n"
    return f"{COGMAP_INTRO}\nCognitive Map:\n{cogmap}\n" if cogmap else ""
