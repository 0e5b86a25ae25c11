"""KBSITE_KB_CREATORS is checked at start-up: a misspelt rule would refuse every "New knowledge base"."""

from __future__ import annotations

import pytest

from knowledge.checks import check_kb_creators_setting

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("rule", ["everyone", "staff", "group:kb-makers"])
def test_the_rules_it_knows_pass(settings, rule) -> None:
    settings.KB_CREATORS = rule
    assert check_kb_creators_setting() == []


@pytest.mark.parametrize("rule", ["Staff", "group:", "group:  ", "admins"])
def test_another_value_is_an_error_naming_the_choices(settings, rule) -> None:
    settings.KB_CREATORS = rule
    [problem] = check_kb_creators_setting()
    assert problem.id == "knowledge.E011" and "everyone, staff or group:<name of a group>" in problem.msg
