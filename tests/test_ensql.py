"""Unit tests of local_ensign.ensql: parsing, errors, evaluation on real Event messages, explain."""

from __future__ import annotations

import json

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from pyensign.api.v1beta1 import event_pb2
from pyensign.mimetype.v1beta1 import mimetype_pb2

from local_ensign.ensql import (
    Comparison,
    Or,
    Query,
    QueryError,
    TopicTarget,
    explain,
    parse,
)

JSON = mimetype_pb2.MIME.APPLICATION_JSON
TEXT = mimetype_pb2.MIME.TEXT_PLAIN
REVIEW = {"text": "great film", "label": "positive", "stars": 5, "score": 0.75, "verified": True}


def make_event(data: bytes | dict | list, name: str = "Review", major: int = 1, mimetype: int = JSON):
    """A real Event as pyensign publishes it; dicts and lists are encoded as JSON."""
    payload = data if isinstance(data, bytes) else json.dumps(data).encode()
    return event_pb2.Event(
        data=payload,
        mimetype=mimetype,
        type=event_pb2.Type(name=name, major_version=major, minor_version=2, patch_version=3),
        metadata={"source": "tests", "lang": "en"},
        created=Timestamp(seconds=1_700_000_000, nanos=5),
    )


def where(sql_predicate: str):
    """The predicate tree of ``SELECT * FROM t WHERE <sql_predicate>``."""
    return parse(f"SELECT * FROM t WHERE {sql_predicate}").where


def matches(sql_predicate: str, data) -> bool:
    """Whether an event with ``data`` matches the WHERE clause ``sql_predicate``."""
    return parse(f"SELECT * FROM t WHERE {sql_predicate}").matches(make_event(data))


# ---------------------------------------------------------------------------------------
# Parsing


def test_select_star():
    assert parse("SELECT * FROM reviews") == Query(fields=None, topic_parts=("reviews",))
    assert parse("SELECT * FROM reviews").selects_all


def test_projection_with_aliases_keeps_the_listed_order():
    query = parse("SELECT text AS body, label, stars AS rating FROM reviews")
    assert query.fields == (("text", "body"), ("label", None), ("stars", "rating"))
    assert not query.selects_all


@pytest.mark.parametrize(
    "sql",
    [
        "select * from reviews where label = 'x' offset 1 limit 2",
        "SeLeCt * FrOm reviews WhErE label = 'x' OfFsEt 1 LiMiT 2",
        "SELECT\n*\tFROM   reviews\r\nWHERE label='x' OFFSET 1 LIMIT 2",
    ],
)
def test_keywords_in_any_case_and_any_whitespace(sql):
    assert parse(sql) == Query(None, ("reviews",), Comparison("label", "=", "x"), offset=1, limit=2)


@pytest.mark.parametrize(
    "name", ["orders", "assets", "android", "selection", "fromage", "limited", "offsets", "likes", "ASIA"]
)
def test_names_that_start_with_a_keyword_are_ordinary_names(name):
    query = parse(f"SELECT {name}, x AS {name}2 FROM {name} WHERE {name} = 1 OR {name} ILIKE 'a' LIMIT 1")
    assert query.fields == ((name, None), ("x", f"{name}2"))
    assert query.topic_parts == (name,)
    assert query.where == Or((Comparison(name, "=", 1), Comparison(name, "ILIKE", "a")))
    assert query.limit == 1


@pytest.mark.parametrize(
    ("reference", "parts"),
    [
        ("reviews.Review", ("reviews", "Review")),
        ("reviews.Review.1", ("reviews", "Review", "1")),
        ("reviews.Review.v2", ("reviews", "Review", "v2")),
        ("team.data.reviews.Review.v1", ("team", "data", "reviews", "Review", "v1")),
        ("my-topic_2", ("my-topic_2",)),
    ],
)
def test_dotted_from_reference_is_returned_as_raw_parts(reference, parts):
    query = parse(f"SELECT * FROM {reference} LIMIT 3")
    assert query.topic_parts == parts
    assert query.topic_reference == reference


@pytest.mark.parametrize(
    ("predicate", "tree"),
    [
        ("a = 1 OR b = 2 AND c = 3", "Or(a, And(b, c))"),
        ("a = 1 AND b = 2 OR c = 3", "Or(And(a, b), c)"),
        ("(a = 1 OR b = 2) AND c = 3", "And(Or(a, b), c)"),
        ("a = 1 AND (b = 2 OR c = 3) AND d = 4", "And(a, Or(b, c), d)"),
        ("((a = 1)) OR (b = 2 OR c = 3)", "Or(a, b, c)"),
        ("a = 1 AND b = 2 AND c = 3", "And(a, b, c)"),
    ],
)
def test_and_binds_tighter_than_or_and_parentheses_group(predicate, tree):
    def shape(node) -> str:
        if isinstance(node, Comparison):
            return node.field
        return f"{type(node).__name__}({', '.join(shape(o) for o in node.operands)})"

    assert shape(where(predicate)) == tree


@pytest.mark.parametrize(
    ("literal", "value"),
    [
        ("'plain'", "plain"),
        (r"'it\'s'", "it's"),
        ("'it''s'", "it's"),
        (r"'back\\slash'", "back\\slash"),
        (r"'kept\n'", "kept\\n"),
        ("''", ""),
        ("'SELECT FROM'", "SELECT FROM"),
        ("42", 42),
        ("-7", -7),
        ("3.25", 3.25),
        ("-0.5", -0.5),
        ("true", True),
        ("FALSE", False),
        ("True", True),
    ],
)
def test_values(literal, value):
    comparison = where(f"x = {literal}")
    assert comparison.value == value
    assert type(comparison.value) is type(value)


@pytest.mark.parametrize(
    ("sql_operator", "normalised"),
    [("=", "="), ("!=", "!="), ("<>", "!="), ("<", "<"), ("<=", "<="), (">", ">"), (">=", ">=")],
)
def test_comparison_symbols_are_normalised_and_need_no_spaces(sql_operator, normalised):
    assert where(f"x {sql_operator} 1").operator == normalised
    assert where(f"x{sql_operator}-1") == Comparison("x", normalised, -1)


@pytest.mark.parametrize(("sql_operator", "normalised"), [("like", "LIKE"), ("ILike", "ILIKE")])
def test_pattern_operators_are_whole_words(sql_operator, normalised):
    assert where(f"x {sql_operator}'a%'") == Comparison("x", normalised, "a%")
    with pytest.raises(QueryError) as caught:
        where(f"x{sql_operator} 'a%'")  # one word: a field name, then no operator
    assert caught.value.token == "'a%'"


@pytest.mark.parametrize(
    ("tail", "offset", "limit"),
    [
        ("", 0, None),
        ("OFFSET 10", 10, None),
        ("LIMIT 5", 0, 5),
        ("OFFSET 10 LIMIT 5", 10, 5),
        ("LIMIT 5 OFFSET 10", 10, 5),
        ("LIMIT 0", 0, 0),
        ("OFFSET 007", 7, None),
    ],
)
def test_offset_and_limit_in_either_order(tail, offset, limit):
    for sql in (f"SELECT * FROM t {tail}", f"SELECT * FROM t WHERE a = 1 {tail} ;"):
        query = parse(sql)
        assert (query.offset, query.limit) == (offset, limit)


@pytest.mark.parametrize(
    "sql", ["SELECT * FROM t;", "SELECT * FROM t ;  ", "SELECT a FROM t WHERE a = 'x;' LIMIT 1;"]
)
def test_trailing_semicolon(sql):
    assert parse(sql).topic_parts == ("t",)


@pytest.mark.parametrize(
    "predicate",
    [
        "a = 'it''s' AND (b > -1.5 OR c ILIKE 'x\\\\%_') AND d != true",
        "a LIKE '%.(%' OR b <= 10 AND c = false",
        "a = 0.0000001 OR b = 123456789012345678901234.5",
    ],
)
def test_predicate_text_parses_back_to_the_same_tree(predicate):
    tree = where(predicate)
    assert where(str(tree)) == tree


# ---------------------------------------------------------------------------------------
# Syntax errors


@pytest.mark.parametrize(
    ("sql", "position", "token", "expected"),
    [
        ("SELECT * reviews", 9, "reviews", "expected FROM"),
        ("SELECT text label FROM t", 12, "label", "expected ',', AS or FROM"),
        ("SELECT text AS FROM t", 15, "FROM", "expected an alias"),
        ("SELECT FROM t", 7, "FROM", "expected * or a field name"),
        ("SELECTED * FROM t", 0, "SELECTED", "expected SELECT"),
        (
            "SELECT * FROM reviews WHER label = 'x'",
            22,
            "WHER",
            "expected WHERE, OFFSET, LIMIT or end of query",
        ),
        ("SELECT * FROM t WHERE x == 1", 25, "=", "expected a value"),
        ("SELECT * FROM t WHERE x IS 1", 24, "IS", "expected a comparison operator"),
        ("SELECT * FROM t WHERE x ~ 1", 24, "~", "unexpected character"),
        ("SELECT * FROM t WHERE x = 'abc", 26, "'abc", "unterminated string"),
        (r"SELECT * FROM t WHERE x = 'abc\'", 26, r"'abc\'", "unterminated string"),
        ("SELECT * FROM t LIMIT 1 LIMIT 2", 24, "LIMIT", "LIMIT given twice"),
        ("SELECT * FROM t offset 1 LIMIT 2 OFFSET 3", 33, "OFFSET", "OFFSET given twice"),
        ("SELECT * FROM t LIMIT -1", 22, "-1", "expected a non-negative integer after LIMIT"),
        ("SELECT * FROM t LIMIT 1.5", 22, "1.5", "expected a non-negative integer after LIMIT"),
        ("SELECT * FROM t LIMIT", 21, "end of query", "expected a non-negative integer after LIMIT"),
        ("SELECT * FROM t LIMIT 5 extra", 24, "extra", "expected OFFSET or end of query"),
        ("SELECT * FROM t; DROP", 17, "DROP", "expected end of query"),
        ("SELECT * FROM t WHERE a = 1 )", 28, ")", "expected AND, OR, OFFSET, LIMIT or end of query"),
        ("SELECT * FROM t WHERE (a = 1", 28, "end of query", "expected ')', AND or OR"),
        ("SELECT * FROM t WHERE a = 1 AND", 31, "end of query", "expected a field name or '('"),
        ("SELECT * FROM", 13, "end of query", "expected a topic name"),
        ("SELECT * FROM t..x", 14, "t..x", "expected a topic name"),
        ("SELECT * FROM limit", 14, "limit", "expected a topic name"),
        ("SELECT * FROM t WHERE a.b = 1", 22, "a.b", "expected a field name"),
        ("SELECT * FROM t WHERE x = 1e5", 26, "1e5", "expected a value"),
        ("SELECT * FROM t WHERE x = yes", 26, "yes", "expected a value"),
        ("SELECT * FROM t WHERE x LIKE 5", 29, "5", "expected a 'string' pattern after LIKE"),
        ("SELECT * FROM t WHERE x < true", 24, "<", "expected = or != before a boolean"),
        ("SELECT a, b AS a FROM t", 15, "a", "duplicate result field"),
        ('SELECT * FROM "t"', 14, '"', "unexpected character"),
    ],
)
def test_syntax_errors_name_position_token_and_what_was_expected(sql, position, token, expected):
    with pytest.raises(QueryError) as caught:
        parse(sql)
    error = caught.value
    assert (error.position, error.token) == (position, token)
    near = token if token == "end of query" else f"'{token}'"
    assert str(error).startswith(f"syntax error at position {position} near {near}: {expected}")
    assert isinstance(error, ValueError)


@pytest.mark.parametrize("sql", ["", "   ", "\n\t"])
def test_empty_query_is_invalid(sql):
    with pytest.raises(QueryError, match=r"^invalid query$") as caught:
        parse(sql)
    assert caught.value.token == "end of query"


def test_first_error_in_reading_order_wins():
    with pytest.raises(QueryError) as caught:
        parse("SELECT * FRM t WHERE x @ 1")
    assert caught.value.token == "FRM"


def test_deep_nesting_is_a_syntax_error_not_a_crash():
    with pytest.raises(QueryError, match="nested too deeply"):
        parse("SELECT * FROM t WHERE " + "(" * 1000 + "a = 1" + ")" * 1000)
    assert parse("SELECT * FROM t WHERE " + "(" * 50 + "a = 1" + ")" * 50).where == Comparison("a", "=", 1)


# ---------------------------------------------------------------------------------------
# Evaluation


@pytest.mark.parametrize(
    ("predicate", "expected"),
    [
        ("label = 'positive'", True),
        ("label = 'Positive'", False),
        ("label != 'negative'", True),
        ("label <> 'positive'", False),
        ("stars = 5", True),
        ("stars = 5.0", True),
        ("stars >= 5 AND stars <= 5", True),
        ("stars > 4.5", True),
        ("stars < -1", False),
        ("score > 0.5", True),
        ("score = 0.75", True),
        ("text < 'h'", True),
        ("text > 'great film'", False),
        ("verified = true", True),
        ("verified != true", False),
        ("verified = false", False),
        ("label = 'negative' OR stars = 5", True),
        ("label = 'negative' OR stars = 5 AND verified = false", False),
        ("(label = 'negative' OR stars = 5) AND verified = true", True),
    ],
)
def test_where_on_json_objects(predicate, expected):
    assert matches(predicate, REVIEW) is expected


@pytest.mark.parametrize(
    ("predicate", "data"),
    [
        ("verified = 1", {"verified": True}),  # true is not 1
        ("flag = true", {"flag": 1}),
        ("stars = '5'", {"stars": 5}),
        ("stars != '5'", {"stars": 5}),  # a comparison between types is false, even !=
        ("code = 7", {"code": "7"}),
        ("code LIKE '7'", {"code": 7}),
        ("empty = 0", {"empty": None}),
        ("empty != 0", {"empty": None}),
        ("items = 'a'", {"items": ["a"]}),
        ("nested != 'x'", {"nested": {"x": 1}}),
    ],
)
def test_values_of_different_types_never_compare(predicate, data):
    assert matches(predicate, data) is False


@pytest.mark.parametrize("predicate", ["missing = 'a'", "missing != 'a'", "missing < 1", "missing LIKE '%'"])
def test_a_missing_field_matches_no_comparison(predicate):
    assert matches(predicate, REVIEW) is False
    assert matches(f"{predicate} OR stars = 5", REVIEW) is True


@pytest.mark.parametrize(
    "data",
    [b"not json", b"", b"\xff\xfe\x00", b"[1, 2]", b'"positive"', b"5", b"null", ["label", "positive"]],
)
def test_data_that_is_not_a_json_object_matches_no_where_clause(data):
    assert matches("label != 'x'", data) is False
    assert parse("SELECT * FROM t").matches(make_event(data))  # no WHERE: nothing to evaluate


def test_json_is_read_whatever_the_mimetype():
    event = make_event(json.dumps(REVIEW).encode(), mimetype=TEXT)
    assert parse("SELECT * FROM t WHERE stars = 5").matches(event)


@pytest.mark.parametrize(
    ("pattern", "value", "like", "ilike"),
    [
        ("great%", "great film", True, True),
        ("%film", "great film", True, True),
        ("%eat f%", "great film", True, True),
        ("great", "great film", False, False),  # whole-string match
        ("GREAT%", "great film", False, True),
        ("gr_at film", "great film", True, True),
        ("gr_t film", "great film", False, False),
        ("_", "", False, False),
        ("%", "", True, True),
        ("a.c", "abc", False, False),  # '.' is literal
        ("a.c", "a.c", True, True),
        ("f(x)%", "f(x) = 1", True, True),  # regex metacharacters are literal
        ("[ab]*", "[ab]*", True, True),
        ("a+b?", "aab", False, False),
        ("100\\%", "100%", True, True),  # backslash escapes a wildcard
        ("100\\%", "1000", False, False),
        ("line%", "line one\nline two", True, True),
        ("ÉTÉ", "été", False, True),
    ],
)
def test_like_and_ilike_patterns(pattern, value, like, ilike):
    literal = "'" + pattern.replace("\\", "\\\\").replace("'", "''") + "'"
    assert matches(f"v LIKE {literal}", {"v": value}) is like
    assert matches(f"v ILIKE {literal}", {"v": value}) is ilike


def test_like_applies_to_strings_only():
    assert matches("v LIKE '%'", {"v": 5}) is False
    assert matches("v ILIKE '%'", {"v": True}) is False


# ---------------------------------------------------------------------------------------
# Topic reference and schema/version filter


@pytest.mark.parametrize(
    ("topics", "reference", "target"),
    [
        ({"reviews"}, "reviews", TopicTarget("reviews")),
        ({"reviews"}, "reviews.Review", TopicTarget("reviews", "Review")),
        ({"reviews"}, "reviews.Review.1", TopicTarget("reviews", "Review", 1)),
        ({"reviews"}, "reviews.Review.v2", TopicTarget("reviews", "Review", 2)),
        ({"reviews"}, "reviews.Review.V0", TopicTarget("reviews", "Review", 0)),
        ({"reviews", "reviews.Review"}, "reviews.Review", TopicTarget("reviews.Review")),
        ({"team.reviews"}, "team.reviews.Review.v1", TopicTarget("team.reviews", "Review", 1)),
        ({"a"}, "a.b.c.d", None),  # at most schema and version after the topic
        ({"reviews"}, "tweets", None),
        (set(), "reviews", None),
    ],
)
def test_resolve_tries_the_whole_reference_then_topic_schema_version(topics, reference, target):
    assert parse(f"SELECT * FROM {reference}").resolve(topics.__contains__) == target


def test_resolve_rejects_a_version_that_is_not_a_number():
    with pytest.raises(QueryError) as caught:
        parse("SELECT * FROM reviews.Review.latest LIMIT 1").resolve({"reviews"}.__contains__)
    assert (caught.value.position, caught.value.token) == (29, "latest")
    assert "expected a schema version such as 1 or v1" in str(caught.value)


@pytest.mark.parametrize(
    ("target", "name", "major", "kept"),
    [
        (TopicTarget("reviews"), "Anything", 9, True),
        (TopicTarget("reviews", "Review"), "Review", 9, True),
        (TopicTarget("reviews", "Review"), "review", 1, False),  # case-sensitive
        (TopicTarget("reviews", "Review"), "Tweet", 1, False),
        (TopicTarget("reviews", "Review", 1), "Review", 1, True),
        (TopicTarget("reviews", "Review", 1), "Review", 2, False),
        (None, "Tweet", 3, True),
    ],
)
def test_schema_and_version_filter(target, name, major, kept):
    event = make_event(REVIEW, name=name, major=major)
    star, filtered = parse("SELECT * FROM reviews"), parse("SELECT * FROM reviews WHERE stars = 5")
    assert star.matches(event, target) is kept
    assert filtered.matches(event, target) is kept
    assert (star.select(event.SerializeToString(), target) is not None) is kept


# ---------------------------------------------------------------------------------------
# Selecting and projecting serialized events


def test_select_star_returns_the_stored_bytes_untouched():
    stored = make_event(b"not even json", mimetype=TEXT).SerializeToString()
    assert parse("SELECT * FROM t").select(stored) is stored
    assert parse("SELECT * FROM t").select(stored, TopicTarget("t", "Review", 1)) is stored
    matching = make_event(REVIEW).SerializeToString()
    assert parse("SELECT * FROM t WHERE stars = 5").select(matching) is matching
    assert parse("SELECT * FROM t WHERE stars = 4").select(matching) is None


def test_projection_keeps_the_listed_fields_under_their_aliases_and_nothing_else_changes():
    original = make_event(REVIEW, mimetype=TEXT)
    query = parse("SELECT stars AS rating, missing, text FROM reviews WHERE verified = true")
    projected_bytes = query.select(original.SerializeToString())
    projected = event_pb2.Event.FromString(projected_bytes)
    assert list(json.loads(projected.data).items()) == [("rating", 5), ("text", "great film")]
    assert projected.mimetype == JSON
    assert projected.type == original.type
    assert dict(projected.metadata) == dict(original.metadata)
    assert projected.created == original.created


def test_projection_of_unicode_and_an_event_with_none_of_the_fields():
    stored = make_event({"text": "café ☕", "other": 1}).SerializeToString()
    assert json.loads(event_pb2.Event.FromString(parse("SELECT text FROM t").select(stored)).data) == {
        "text": "café ☕"
    }
    assert event_pb2.Event.FromString(parse("SELECT absent FROM t").select(stored)).data == b"{}"


@pytest.mark.parametrize("data", [b"plain text", b"[1, 2]", b"42"])
def test_a_projecting_query_skips_events_whose_data_is_not_a_json_object(data):
    assert parse("SELECT text FROM t").select(make_event(data).SerializeToString()) is None


def test_projection_respects_where_and_the_type_filter():
    stored = make_event(REVIEW, name="Review", major=1).SerializeToString()
    query = parse("SELECT label FROM reviews.Review.v1 WHERE stars > 3")
    assert query.select(stored, TopicTarget("reviews", "Review", 1)) is not None
    assert query.select(stored, TopicTarget("reviews", "Review", 2)) is None
    assert parse("SELECT label FROM reviews WHERE stars > 5").select(stored) is None


# ---------------------------------------------------------------------------------------
# Explain


def test_explain_names_each_part_of_the_plan_in_order():
    query = parse(
        "SELECT text, label AS l FROM reviews.Review.v1 "
        "WHERE label = 'positive' AND (domain = 'tweets' OR stars >= 4) LIMIT 5 OFFSET 10"
    )
    plan = explain(query, TopicTarget("reviews", "Review", 1))
    parts = [
        "scan topic reviews, every event in commit order",
        "keep events of type Review v1",
        "keep events whose JSON data matches label = 'positive' AND (domain = 'tweets' OR stars >= 4)",
        "skip the first 10 matching events",
        "return at most 5",
        "project text, label AS l",
    ]
    assert plan == "; ".join(parts)


def test_explain_without_a_target_describes_the_reference_as_written():
    assert explain(parse("SELECT * FROM orders")) == (
        "scan orders, every event in commit order; return whole events"
    )
    plan = explain(parse("SELECT * FROM reviews.Review LIMIT 0"))
    assert plan.startswith("scan reviews.Review (a topic name, or topic.schema[.version])")
    assert "return at most 0" in plan and "skip" not in plan
