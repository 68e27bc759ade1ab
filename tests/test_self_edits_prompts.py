"""Self-edit -> training sequences, and the prompts (paper formats)."""

import pytest

from seal_lm.knowledge.prompts import answer_prompt, load_user_template, self_edit_prompt
from seal_lm.knowledge.self_edits import split_self_edit, training_sequences


def test_each_line_becomes_a_titled_sequence_plus_the_passage():
    seqs = training_sequences("Varnholt Bridge", "The passage.", "1. It has eleven arches.\n\n2. It is old.\n")
    assert seqs == ["Varnholt Bridge\n1. It has eleven arches.", "Varnholt Bridge\n2. It is old.",
                    "Varnholt Bridge\nThe passage."]


def test_chatty_preamble_is_dropped_and_segments_split():
    text = "Sure! Here are some implications:\n1. A\n2. B\n---\nC"
    assert split_self_edit(text) == ["1. A", "2. B", "C"]


def test_self_qa_split_per_question():
    text = "Who built it?\nAnswer: Oda.\nQuestion 2: When?\nAnswer: 1874."
    units = split_self_edit(text, self_qa=True)
    assert units == ["Question 1: Who built it?\nAnswer: Oda.", "Question 2: When?\nAnswer: 1874."]


def test_empty_and_none_self_edits():
    assert split_self_edit("") == [] and split_self_edit("   \n \n") == []
    assert training_sequences("T", "ctx", None) == ["T\nctx"]  # passage-only condition
    assert training_sequences("T", "ctx", "a\nb\nc", max_sequences=2) == ["T\na", "T\nb", "T\nctx"]
    assert training_sequences("T", "ctx", "a", include_passage=False) == ["T\na"]


def test_prompts_use_chat_template(tiny):
    tok = tiny.tokenizer
    p = self_edit_prompt(tok, "Title", "Some context.")
    assert "<|im_start|>system" in p and "implications" in p and p.endswith("<|im_start|>assistant\n")
    assert "Title\nSome context." in p
    qa = self_edit_prompt(tok, "Title", "Some context.", style="self-qa")
    assert qa.endswith("Question 1: ")
    a = answer_prompt(tok, "Who built it?")
    assert "directly and concisely" in a and "Who built it?" in a
    with pytest.raises(ValueError, match="unknown self-edit style"):
        self_edit_prompt(tok, "T", "c", style="nope")


def test_user_template(tmp_path, tiny):
    f = tmp_path / "t.txt"
    f.write_text("Summarise {title}: {context}")
    t = load_user_template(f)
    assert "Summarise T: c" in self_edit_prompt(tiny.tokenizer, "T", "c", template=t)
    f.write_text("no placeholder")
    with pytest.raises(ValueError, match="context"):
        load_user_template(f)
