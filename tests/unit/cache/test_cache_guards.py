"""The guards: each rule on pairs it must decline and pairs it must let through."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from lbd.cache.guards import GUARDS, check, features


@pytest.mark.parametrize("a, b", [
    ("Why do people change?", "Why don't people change?"),
    ("Is the API key required?", "Is the API key not required?"),
    ("Can liquids be compressed?", "Liquids cannot be compressed, can they?"),
    ("I have seen it", "I have never seen it"),
])
def test_negation_declines_flipped_polarity(a: str, b: str) -> None:
    assert check(a, b) == "negation"


@pytest.mark.parametrize("a, b", [
    ("It is not available in version 2.10.0.", "No, it doesn't exist in v2.10.0."),
    ("Not only fast but also cheap", "Fast and cheap too"),
    ("You cannot do that", "That isn't possible"),
])
def test_negation_passes_same_polarity(a: str, b: str) -> None:
    assert check(a, b, ["negation"]) is None


@pytest.mark.parametrize("a, b", [
    ("Should people over 90 be allowed to vote?", "Should people over 98 be allowed to vote?"),
    ("What zodiac sign is January 21?", "What zodiac sign is January 20?"),
    ("How do I lose 15 kilos?", "How do I lose 30 pounds?"),
    ("There are three methods", "There are two methods"),
    ("Install version 2.10.0", "Install version 2.1"),
    ("Make $10,000 a month", "Make $1,000 a month"),
])
def test_numbers_decline_different_numbers(a: str, b: str) -> None:
    assert check(a, b, ["numbers"]) == "numbers"


@pytest.mark.parametrize("a, b", [
    ("Make $10,000 a month", "Earn 10000 dollars per month"),
    ("It takes 3 steps", "It takes three steps"),
    ("It works in two steps: 1) download 2) generate", "It is a two-step process"),
    ("Preprocess the whole dataset in one go", "Preprocess the entire dataset at once"),
    ("Set the ratio to 0.50", "Set the ratio to 0.5"),
])
def test_numbers_pass_the_same_numbers_written_differently(a: str, b: str) -> None:
    assert check(a, b, ["numbers"]) is None


@pytest.mark.parametrize("a, b", [
    ("What is the best hotel in Ohio?", "What is the best hotel in Kentucky?"),
    ("How do I learn Java quickly?", "How do I learn Python quickly?"),
    ("Upgrade from an i3 to a newer laptop", "Upgrade from an i5 to a newer laptop"),
    ("Call `load_dataset` first", "Call `load_metric` first"),
    ('Set "anon=True" on the client', 'Set "anon=False" on the client'),
    ("The first day at Bridge Bank", "The first day at Associated Bank"),
])
def test_entities_decline_different_names(a: str, b: str) -> None:
    assert check(a, b, ["entities"]) == "entities"


@pytest.mark.parametrize("a, b", [
    ("What is the salary of the Indian president?", "what is the indian president's salary"),
    ("Tasks for Machine Learning projects", "Tasks for ML projects"),
    ("Libraries with TypeScript types", "Libraries with TS types"),
    ("Use `AudioFolder` to load it", "Load it with the audiofolder builder"),
    ("Save datasets the Pythonic way", "Save datasets with Python"),
    ("Why is it raining?", "Why is it raining today?"),
])
def test_entities_pass_the_same_names_reworded(a: str, b: str) -> None:
    assert check(a, b, ["entities"]) is None


@pytest.mark.parametrize("a, b", [
    ("The parameters of the AudioClassification class of datasets are task and audio_column.",
     "The parameters of the datasets.AudioClassification class are task and audio_column."),
    ("Retrieve it from disk with `Dataset.load_from_disk()`.",
     "Use the `load_from_disk` function of the `Dataset` class to retrieve it from disk."),
    ("I'm scared of death.What do I do?", "I'm scared of death. What do I do?"),
])
def test_entities_pass_a_dotted_name_whose_parts_are_all_named(a: str, b: str) -> None:
    assert check(a, b, ["entities"]) is None


@pytest.mark.parametrize("a, b", [
    ("Call numpy.sum on the array", "Call math.sum on the array"),
    ("What are some facts about politics?", "What are some facts about U.S. politics?"),
    ("Load it with datasets.load_dataset", "Load it with load_dataset"),
])
def test_entities_decline_a_dotted_name_whose_qualifier_is_missing(a: str, b: str) -> None:
    assert check(a, b, ["entities"]) == "entities"


def test_quoted_spans_pair_left_to_right() -> None:
    """The text between two code spans is not a quoted name, even when the first span is too
    long to count as one."""
    command = "`datasets-cli test path/to/<your-dataset-loading-script> --save_info --all_configs --with-more`"
    a = f"Run {command} to generate the metadata of your dataset in `README.md`."
    b = f"Generate the metadata in `README.md` with {command}."
    assert check(a, b, ["entities"]) is None
    assert "to generate the metadata of your dataset in" not in features(a).entities


@pytest.mark.parametrize("a, b", [
    ("Can I become a pro boxer?", "How can I become a pro boxer?"),
    ("When did the Vikings reach America?", "Did the Vikings reach America?"),
    ("Why do dogs chew wood?", "How do dogs chew wood?"),
    ("Who created the universe?", "What created the universe?"),
    ("How many people live in Lima?", "Where do people live in Lima?"),
])
def test_question_declines_questions_asking_for_different_answers(a: str, b: str) -> None:
    assert check(a, b, ["question"]) == "question"


@pytest.mark.parametrize("a, b", [
    ("How do I learn to swim?", "What is the best way to learn swimming?"),
    ("Is Harvard likely to accept me?", "Will Harvard accept me?"),
    ("Generally speaking, are cats lazy?", "Are cats lazy?"),
    ("I am scared of the dark. What do I do?", "What should I do about being scared of the dark?"),
    ("The method returns a new table.", "Which method returns a new table?"),
])
def test_question_passes_the_same_kind_of_question_and_statements(a: str, b: str) -> None:
    assert check(a, b, ["question"]) is None


def test_disabled_guards_do_not_run() -> None:
    assert check("Why do people change?", "Why don't people change?", ["numbers", "entities"]) is None


def test_features_are_cached_per_text() -> None:
    assert features("Some text 12") is features("Some text 12")


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=120))
def test_a_text_always_passes_against_itself(text: str) -> None:
    assert check(text, text) is None


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80), st.text(max_size=80))
def test_guards_are_symmetric(a: str, b: str) -> None:
    assert (check(a, b) is None) == (check(b, a) is None)
    assert set(GUARDS) == {"negation", "numbers", "entities", "question"}
