"""Prompts of the knowledge-incorporation domain, following the SEAL paper's code.

Self-edit prompts ask the model to restate a passage ("implications" is the paper's main one);
the question prompt asks a question *without* the passage. For instruct models both are wrapped in
the tokenizer's chat template; base models get the paper's plain-text templates.
"""

from __future__ import annotations

from pathlib import Path

from ..engine import chat_prompt

# Plain-text templates (the paper's base-model prompts); {title} and {context} are filled in.
SELF_EDIT_TEMPLATES: dict[str, str] = {
    "implications": (
        "Let's read the following passage and produce a list of implications "
        "derived directly or indirectly from the content.\n\n"
        "Passage:\n{title}\n{context}\n\nImplications:\n"
    ),
    "implications-long": (
        "Let's read the following passage and produce a long list of implications "
        "derived directly or indirectly from the content.\n\n"
        "Passage:\n{title}\n{context}\n\nImplications:\n"
    ),
    "implications-very-long": (
        "Let's read the following passage and produce a very long list of implications "
        "derived directly or indirectly from the content.\n\n"
        "Passage:\n{title}\n{context}\n\nImplications:\n"
    ),
    "rewrite": (
        "Let's read the following passage and rewrite it in a few different ways, "
        "each one separated by a newline.\n\n"
        "Passage:\n{title}\n{context}\n\nRewritten passages:\n"
    ),
    "self-qa": (
        "Let's read the following passage and rewrite it in a question-answer format.\n\n"
        "Passage:\n{title}\n{context}\n\nQuestion 1: "
    ),
}

# Instruct models: the instruction goes in the system turn, the passage in the user turn (as the
# paper's instruct template does for implications).
SELF_EDIT_SYSTEM: dict[str, str] = {
    "implications": "You are an assistant tasked with analyzing the provided passage and producing "
    "implications derived directly or indirectly from the content. Write one implication per line.",
    "implications-long": "You are an assistant tasked with analyzing the provided passage and producing "
    "a long list of implications derived directly or indirectly from the content. Write one per line.",
    "implications-very-long": "You are an assistant tasked with analyzing the provided passage and "
    "producing a very long list of implications derived directly or indirectly from the content. "
    "Write one per line.",
    "rewrite": "You are an assistant tasked with rewriting the provided passage in a few different ways, "
    "each rewrite on its own line.",
    "self-qa": "You are an assistant tasked with rewriting the provided passage in a question-answer "
    "format. Write each pair as 'Question N: ...' followed by 'Answer: ...'.",
}

ANSWER_TEMPLATE_BASE = "Let's answer a question directly and concisely.\nQuestion: {question}\nAnswer:\n"
ANSWER_SYSTEM = "You are an assistant to answer a question directly and concisely."


def load_user_template(path: str | Path) -> str:
    """A user-supplied self-edit template file; must contain {context} (and may use {title})."""
    text = Path(path).read_text(encoding="utf-8")
    if "{context}" not in text:
        raise ValueError(f"{path}: a self-edit template must contain the placeholder {{context}}")
    return text


def self_edit_prompt(tokenizer, title: str, context: str, style: str = "implications",
                     template: str | None = None) -> str:
    """The full prompt text that asks for a self-edit of one passage."""
    if template is not None:
        user = template.replace("{title}", title).replace("{context}", context)
        return chat_prompt(tokenizer, user) if getattr(tokenizer, "chat_template", None) else user
    if style not in SELF_EDIT_TEMPLATES:
        raise ValueError(f"unknown self-edit style {style!r}; choose from {sorted(SELF_EDIT_TEMPLATES)}")
    if getattr(tokenizer, "chat_template", None):
        prefix = "Question 1: " if style == "self-qa" else ""
        return chat_prompt(tokenizer, f"{title}\n{context}", system=SELF_EDIT_SYSTEM[style], assistant_prefix=prefix)
    return SELF_EDIT_TEMPLATES[style].format(title=title, context=context)


def answer_prompt(tokenizer, question: str) -> str:
    """The paper's no-context question prompt."""
    if getattr(tokenizer, "chat_template", None):
        return chat_prompt(tokenizer, question, system=ANSWER_SYSTEM)
    return ANSWER_TEMPLATE_BASE.format(question=question)
