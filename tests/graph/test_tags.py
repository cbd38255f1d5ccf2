import pytest

from ice_ignite.graph.tags import check_name, is_selected, make_uid, normalize_tags, split_uid


@pytest.mark.parametrize(
    "tags, expected",
    [
        ("train", ("train",)),
        ("val,train", ("train", "val")),
        (["b", "a", "b"], ("a", "b")),
        ("*", ("*",)),
        (" #dbg , val", ("#dbg", "val")),
    ],
)
def test_normalize_tags(tags, expected):
    assert normalize_tags(tags) == expected


@pytest.mark.parametrize(
    "tags, error, words",
    [
        ("", ValueError, "empty"),
        ([], ValueError, "empty"),
        ("*,train", ValueError, "combines"),
        ("tr ain", ValueError, "invalid tag"),
        ("a/b", ValueError, "invalid tag"),
        (3, TypeError, "str"),
        (["a", 1], TypeError, "str"),
    ],
)
def test_bad_tags_name_the_problem(tags, error, words):
    with pytest.raises(error, match=words):
        normalize_tags(tags)


def test_uid_sorts_tags_and_parses_in_any_order():
    assert make_uid("probe", ("val", "#dbg")) == "#dbg,val/probe"
    assert split_uid("val,#dbg/probe") == ("probe", ("#dbg", "val"))
    with pytest.raises(KeyError, match="<tags>/<name>"):
        split_uid("probe")


@pytest.mark.parametrize("name", ["", "a b", "a/b", "a,b", 3])
def test_bad_names(name):
    with pytest.raises((TypeError, ValueError)):
        check_name(name)


# The selection table of ice-learn's reference notes, with its bug fixed: a node with only #tags
# is selected only when the task names one of them.
@pytest.mark.parametrize(
    "node_tags, query, selected",
    [
        (("train",), {"train"}, True),
        (("train",), {"val"}, False),
        (("train",), {"train", "hrnet", "crela"}, True),
        (("crela", "hrnet"), {"train"}, False),
        (("crela", "hrnet"), {"train", "hrnet", "crela"}, True),
        (("#dbg",), {"train"}, False),
        (("#dbg",), {"val"}, False),
        (("#dbg",), {"#dbg"}, True),
        (("#dbg",), {"*"}, False),
        (("#dbg", "val"), {"train"}, False),
        (("#dbg", "val"), {"val"}, True),
        (("#dbg", "val"), {"#dbg"}, True),
        (("train",), {"*"}, False),
    ],
)
def test_selection_rules(node_tags, query, selected):
    assert is_selected(node_tags, frozenset(query)) is selected
