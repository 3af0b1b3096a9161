import re

import pytest

from mirg_lib.prompts import STYLES, ZHANG_SUFFIX, ZHANG_TOKENS_SUFFIX, build_messages, build_question


def _box_strings(info):
    return re.findall(r"<\|box_start\|>.*?<\|box_end\|>", info)


def test_no_prompt_leaks_group_grounding_answers(real_mig):
    gg = [r for r in real_mig if r.task == "group_grounding"]
    assert len(gg) == 499 and all(r.additional_info for r in gg)
    for r in gg:
        for style in STYLES:
            text = str(build_messages(r, style))
            assert r.additional_info.strip() not in text
            for box in _box_strings(r.additional_info):
                assert box not in text
            assert not re.search(r"It is in the \w+ image", text)


def test_reasoning_additional_info_is_not_used(real_mig):
    for r in (r for r in real_mig if r.task == "reasoning" and r.additional_info and r.additional_info not in r.question):
        assert r.additional_info not in build_question(r, "zhang")


def test_styles(real_mig):
    r = real_mig[0]
    assert build_question(r, "zhang") == r.question.strip() + ZHANG_SUFFIX
    msgs = build_messages(r, "plain")
    assert [c["type"] for c in msgs[0]["content"]] == ["image"] * len(r.images) + ["text"]
    with pytest.raises(ValueError, match="unknown prompt style"):
        build_question(r, "fancy")


def test_the_box_notation_changes_only_zhangs_box_sentence(real_mig):
    r = real_mig[0]
    tokens = build_question(r, "zhang", "tokens")
    assert tokens == r.question.strip() + ZHANG_TOKENS_SUFFIX and "JSON" not in tokens and "<|box_start|>(x1,y1),(x2,y2)<|box_end|>" in tokens
    assert ZHANG_TOKENS_SUFFIX.split("tags.")[0] == ZHANG_SUFFIX.split("tags.")[0]
    for style in ("plain", "mirg", "migician"):
        assert build_question(r, style, "tokens") == build_question(r, style)
    with pytest.raises(ValueError, match="unknown box notation"):
        build_question(r, "zhang", "xml")
