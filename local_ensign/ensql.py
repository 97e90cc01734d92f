"""EnSQL for the local server: parse a query, then filter, project and explain it.

This module only reads query text and event bytes; it does no I/O and knows nothing
of gRPC, the catalog or the event log. The service parses a query with ``parse``,
picks the topic with ``Query.resolve``, runs every stored event of that topic through
``Query.select`` in commit order (leaving duplicates out unless the request includes
them), and applies ``Query.offset`` and ``Query.limit`` to what comes out.

Grammar (keywords in any case)::

    SELECT ( * | field [AS alias] {, field [AS alias]} )
    FROM topic[.schema[.version]]
    [WHERE predicate] [OFFSET n] [LIMIT n] [;]

- OFFSET and LIMIT come in either order, each at most once; ``n`` is a non-negative
  integer.
- Fields and aliases are ``[A-Za-z0-9_-]+``. The FROM reference is such names joined
  by dots; as topic names may contain dots themselves, ``Query.resolve`` tries the
  longest dotted prefix that names a topic, and reads what follows as schema and
  version.
- A predicate is ``field op value`` with ``= != <> < <= > >= LIKE ILIKE``, joined by
  AND and OR (AND binds tighter) and grouped with parentheses. Values are strings in
  single quotes (``\\'`` or ``''`` for a quote, ``\\\\`` for a backslash; any other
  backslash is kept as written), integers and decimals (optionally negative, no
  exponent) and ``true``/``false``.
- Reserved words (``RESERVED_WORDS``) are recognised as whole words only: the query
  is cut into maximal runs of name characters first, and only a run that is exactly
  a keyword is one. So ``orders``, ``assets`` or ``android`` are ordinary names. A
  bare name may not be a reserved word itself (no field or topic called ``limit``).
- Syntax errors raise ``QueryError`` with the 0-based ``position`` of the offending
  token and its text (``token``), or ``"end of query"``.

Local extensions over Ensign (which parsed WHERE, projections and schema/version but
returned whole events of the whole topic):

- WHERE is evaluated on the top-level fields of the event data parsed as JSON,
  whatever the event's mimetype says. Data that is not a JSON object matches no
  comparison, nor does an event that lacks the field a comparison reads (so
  ``x != 'a'`` is false when ``x`` is absent). Numbers compare with numbers, strings
  with strings, booleans with booleans (``=`` and ``!=`` only; ``true`` is not ``1``);
  any other pairing is false. LIKE and ILIKE (case-insensitive) match a whole string
  against a pattern where ``%`` is any run of characters, ``_`` exactly one, and a
  backslash makes the next character literal; they apply to strings only.
- ``topic.schema`` keeps events whose ``type.name`` is ``schema`` (case-sensitive);
  ``topic.schema.version`` also requires ``type.major_version`` to be ``version``,
  written ``1`` or ``v1``.
- With a field list, each result's data is a JSON object holding only the listed
  fields that the event has, keyed by alias when one is given, in the listed order,
  with mimetype ``application/json``; events whose data is not a JSON object are not
  returned. With ``*`` the stored bytes are returned untouched.
- OFFSET skips events that match (after the type and WHERE filters), not raw events
  as Ensign did; with no filter the two are the same.
"""

from __future__ import annotations

import json
import operator
import re
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from functools import lru_cache
from typing import Any

from pyensign.api.v1beta1 import event_pb2
from pyensign.mimetype.v1beta1 import mimetype_pb2

END_OF_QUERY = "end of query"
RESERVED_WORDS = frozenset({"SELECT", "FROM", "WHERE", "AND", "OR", "AS", "OFFSET", "LIMIT", "LIKE", "ILIKE"})
MAX_NESTING = 64  # parentheses deep enough for any real query, shallow enough for the recursion

_DIGITS = frozenset(string.digits)
_NAME_CHARACTERS = frozenset(string.ascii_letters + string.digits + "_-")
_WORD_CHARACTERS = _NAME_CHARACTERS | {"."}  # dotted names and decimals are read as one word
_COMPARISON_SYMBOLS = ("<=", ">=", "<>", "!=", "<", ">", "=")  # longest first
_PUNCTUATION = frozenset("*,();")
_NUMBER = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")
_ORDERING_OPERATORS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
_EQUALITY_OPERATORS = {"=": operator.eq, "!=": operator.ne}
_PATTERN_OPERATORS = frozenset({"LIKE", "ILIKE"})

Value = str | int | float | bool


class QueryError(ValueError):
    """A query that cannot be parsed; the service answers it with INVALID_ARGUMENT."""

    def __init__(self, message: str, position: int, token: str) -> None:
        super().__init__(message)
        self.position = position
        self.token = token


def _syntax_error(position: int, token: str, expected: str = "") -> QueryError:
    """A QueryError worded ``syntax error at position N near 'TOKEN': EXPECTED``."""
    near = END_OF_QUERY if token == END_OF_QUERY else f"'{token}'"
    message = f"syntax error at position {position} near {near}"
    return QueryError(f"{message}: {expected}" if expected else message, position, token)


# ---------------------------------------------------------------------------------------
# Tokens


@dataclass(frozen=True)
class _Token:
    """One token: ``kind`` is word, string, symbol or end; ``text`` is as written."""

    kind: str
    text: str
    position: int
    string_value: str = ""  # the decoded contents of a string literal

    @property
    def keyword(self) -> str | None:
        """The reserved word this token is, upper-cased, if the whole word is one."""
        upper = self.text.upper()
        return upper if self.kind == "word" and upper in RESERVED_WORDS else None


def _tokens(sql: str) -> Iterator[_Token]:
    """Cut ``sql`` into tokens lazily, so the first error in reading order is the one raised."""
    index = 0
    while True:
        while index < len(sql) and sql[index].isspace():
            index += 1
        if index == len(sql):
            yield _Token("end", END_OF_QUERY, index)
            return
        token = _read_token(sql, index)
        yield token
        index += len(token.text)


def _read_token(sql: str, start: int) -> _Token:
    """The token that starts at ``start`` (which is not whitespace)."""
    character = sql[start]
    if character in _WORD_CHARACTERS:
        end = start
        while end < len(sql) and sql[end] in _WORD_CHARACTERS:
            end += 1
        return _Token("word", sql[start:end], start)
    if character == "'":
        return _read_string(sql, start)
    for symbol in _COMPARISON_SYMBOLS:
        if sql.startswith(symbol, start):
            return _Token("symbol", symbol, start)
    if character in _PUNCTUATION:
        return _Token("symbol", character, start)
    raise _syntax_error(start, character, "unexpected character")


def _read_string(sql: str, start: int) -> _Token:
    """A single-quoted string literal; ``\\'`` and ``''`` are quotes, ``\\\\`` a backslash."""
    decoded: list[str] = []
    index = start + 1
    while index < len(sql):
        character = sql[index]
        following = sql[index + 1 : index + 2]
        if character == "\\" and following in ("'", "\\"):
            decoded.append(following)
            index += 2
        elif character == "'" and following == "'":
            decoded.append("'")
            index += 2
        elif character == "'":
            return _Token("string", sql[start : index + 1], start, "".join(decoded))
        else:
            decoded.append(character)
            index += 1
    raise _syntax_error(start, sql[start:], "unterminated string")


# ---------------------------------------------------------------------------------------
# Predicates


def _kind(value: Any) -> str | None:
    """The EnSQL type of a JSON or literal value; only values of the same kind compare."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return None


def _literal(value: Value) -> str:
    """``value`` written as an EnSQL literal that parses back to the same value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"
    if isinstance(value, float):
        text = format(Decimal(repr(value)), "f")  # positional: the grammar has no exponent
        return text if "." in text else text + ".0"
    return str(value)


@lru_cache(maxsize=256)
def _like_pattern(pattern: str, ignore_case: bool) -> re.Pattern[str]:
    """A compiled whole-string matcher for a LIKE pattern (``%``, ``_``, backslash escapes)."""
    parts: list[str] = []
    index = 0
    while index < len(pattern):
        character = pattern[index]
        if character == "\\" and index + 1 < len(pattern):
            index += 1
            parts.append(re.escape(pattern[index]))
        elif character == "%":
            parts.append(".*")
        elif character == "_":
            parts.append(".")
        else:
            parts.append(re.escape(character))
        index += 1
    flags = re.DOTALL | (re.IGNORECASE if ignore_case else 0)
    return re.compile("".join(parts), flags)


@dataclass(frozen=True)
class Comparison:
    """``field operator value``; ``operator`` is one of = != < <= > >= LIKE ILIKE (``<>`` reads as !=)."""

    field: str
    operator: str
    value: Value

    def matches(self, document: dict[str, Any]) -> bool:
        """Whether the JSON object ``document`` has ``field`` and it compares true with ``value``."""
        if self.field not in document:
            return False
        actual = document[self.field]
        if _kind(actual) != _kind(self.value):
            return False
        if self.operator in _PATTERN_OPERATORS:
            matcher = _like_pattern(self.value, self.operator == "ILIKE")
            return matcher.fullmatch(actual) is not None
        compare = _EQUALITY_OPERATORS.get(self.operator) or _ORDERING_OPERATORS[self.operator]
        return compare(actual, self.value)

    def __str__(self) -> str:
        return f"{self.field} {self.operator} {_literal(self.value)}"


@dataclass(frozen=True)
class And:
    """True when every operand is (two or more operands, none of them an ``And``)."""

    operands: tuple[Predicate, ...]

    def matches(self, document: dict[str, Any]) -> bool:
        """Whether every operand matches ``document``."""
        return all(operand.matches(document) for operand in self.operands)

    def __str__(self) -> str:
        return " AND ".join(f"({o})" if isinstance(o, Or) else str(o) for o in self.operands)


@dataclass(frozen=True)
class Or:
    """True when any operand is (two or more operands, none of them an ``Or``)."""

    operands: tuple[Predicate, ...]

    def matches(self, document: dict[str, Any]) -> bool:
        """Whether at least one operand matches ``document``."""
        return any(operand.matches(document) for operand in self.operands)

    def __str__(self) -> str:
        return " OR ".join(str(operand) for operand in self.operands)


Predicate = Comparison | And | Or


def _combine(kind: type[And] | type[Or], operands: list[Predicate]) -> Predicate:
    """One operand as is, or several joined by ``kind``, flattening nested joins of the same kind."""
    if len(operands) == 1:
        return operands[0]
    flat: list[Predicate] = []
    for operand in operands:
        flat.extend(operand.operands if isinstance(operand, kind) else (operand,))
    return kind(tuple(flat))


# ---------------------------------------------------------------------------------------
# Events


def _json_object(data: bytes) -> dict[str, Any] | None:
    """The event data parsed as JSON if it is a JSON object, else None."""
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):  # not UTF-8, not JSON, or absurdly nested
        return None
    return value if isinstance(value, dict) else None


def _parse_version(text: str) -> int | None:
    """A major version written ``1`` or ``v1`` (``V1``), or None if ``text`` is neither."""
    digits = text[1:] if text[:1] in ("v", "V") else text
    if digits and set(digits) <= _DIGITS:
        return int(digits)
    return None


@dataclass(frozen=True)
class TopicTarget:
    """What a FROM reference resolved to: a topic and, optionally, the event type to keep."""

    topic: str
    schema: str | None = None
    major_version: int | None = None

    @property
    def filters_type(self) -> bool:
        """Whether events are kept by their type (a schema was named)."""
        return self.schema is not None

    def accepts(self, event_type: event_pb2.Type) -> bool:
        """Whether an event of ``event_type`` belongs to this target's schema and version."""
        if self.schema is not None and event_type.name != self.schema:
            return False
        return self.major_version is None or event_type.major_version == self.major_version

    def describe_type(self) -> str:
        """The kept type in words, e.g. ``Review v1``."""
        version = "" if self.major_version is None else f" v{self.major_version}"
        return f"{self.schema}{version}"


# ---------------------------------------------------------------------------------------
# Queries


@dataclass(frozen=True)
class Query:
    """A parsed EnSQL query.

    ``fields`` holds ``(field, alias)`` pairs (alias None when not given), or is None
    for ``*``. ``topic_parts`` is the FROM reference split at its dots; pass a resolver
    to ``resolve`` to decide which parts name the topic. ``topic_position`` is where the
    reference starts in the query text, for error messages.
    """

    fields: tuple[tuple[str, str | None], ...] | None
    topic_parts: tuple[str, ...]
    where: Predicate | None = None
    offset: int = 0
    limit: int | None = None
    topic_position: int = field(default=0, compare=False, repr=False)

    @property
    def selects_all(self) -> bool:
        """True for ``SELECT *``: results are the stored event bytes, untouched."""
        return self.fields is None

    @property
    def topic_reference(self) -> str:
        """The FROM reference as written."""
        return ".".join(self.topic_parts)

    def resolve(self, topic_exists: Callable[[str], bool]) -> TopicTarget | None:
        """The topic this query reads, or None if no reading of the reference names one.

        The whole dotted reference is tried as a topic name first, then shorter prefixes
        with the rest read as ``schema`` or ``schema.version``. Raises QueryError if the
        topic exists but the version is neither ``N`` nor ``vN``.
        """
        parts = self.topic_parts
        for topic_length in range(len(parts), max(len(parts) - 3, 0), -1):
            topic = ".".join(parts[:topic_length])
            if topic_exists(topic):
                return self._target(topic, parts[topic_length:])
        return None

    def _target(self, topic: str, type_parts: tuple[str, ...]) -> TopicTarget:
        """A target for ``topic`` with the optional schema and version parts after it."""
        if not type_parts:
            return TopicTarget(topic)
        if len(type_parts) == 1:
            return TopicTarget(topic, type_parts[0])
        schema, version_text = type_parts
        version = _parse_version(version_text)
        if version is None:
            position = self.topic_position + len(self.topic_reference) - len(version_text)
            raise _syntax_error(position, version_text, "expected a schema version such as 1 or v1")
        return TopicTarget(topic, schema, version)

    def matches(self, event: event_pb2.Event, target: TopicTarget | None = None) -> bool:
        """Whether ``event`` passes the target's type filter and the WHERE clause."""
        if target is not None and not target.accepts(event.type):
            return False
        if self.where is None:
            return True
        document = _json_object(event.data)
        return document is not None and self.where.matches(document)

    def select(self, event_bytes: bytes, target: TopicTarget | None = None) -> bytes | None:
        """The serialized event to return for a stored serialized Event, or None to skip it.

        For ``SELECT *`` the very ``event_bytes`` object is returned when the event
        matches, so the caller can send the stored bytes without re-encoding them.
        Otherwise the result is a new Event whose data is the projected JSON object.
        Parses the Event only when a filter or projection needs it, and its data once.
        """
        type_filter = target if target is not None and target.filters_type else None
        if self.fields is None and self.where is None and type_filter is None:
            return event_bytes
        event = event_pb2.Event.FromString(event_bytes)
        if type_filter is not None and not type_filter.accepts(event.type):
            return None
        if self.fields is None and self.where is None:
            return event_bytes
        document = _json_object(event.data)
        if document is None or (self.where is not None and not self.where.matches(document)):
            return None
        return event_bytes if self.fields is None else self._projected(event, document).SerializeToString()

    def _projected(self, event: event_pb2.Event, document: dict[str, Any]) -> event_pb2.Event:
        """A copy of ``event`` whose data holds only the selected fields, as JSON."""
        selected = {alias or name: document[name] for name, alias in self.fields or () if name in document}
        projected = event_pb2.Event()
        projected.CopyFrom(event)
        projected.data = json.dumps(selected, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        projected.mimetype = mimetype_pb2.MIME.APPLICATION_JSON
        return projected


def explain(query: Query, target: TopicTarget | None = None) -> str:
    """A one-paragraph plan of what ``query`` reads and returns, in execution order.

    Give the ``target`` from ``Query.resolve`` to name the topic and type filter it
    chose; without it the FROM reference is described as written.
    """
    if target is not None:
        steps = [f"scan topic {target.topic}, every event in commit order"]
        if target.filters_type:
            steps.append(f"keep events of type {target.describe_type()}")
    else:
        reading = " (a topic name, or topic.schema[.version])" if len(query.topic_parts) > 1 else ""
        steps = [f"scan {query.topic_reference}{reading}, every event in commit order"]
    if query.where is not None:
        steps.append(f"keep events whose JSON data matches {query.where}")
    if query.offset:
        steps.append(f"skip the first {query.offset} matching events")
    if query.limit is not None:
        steps.append(f"return at most {query.limit}")
    steps.append(_describe_projection(query))
    return "; ".join(steps)


def _describe_projection(query: Query) -> str:
    """What each returned event holds, for ``explain``."""
    if query.fields is None:
        return "return whole events"
    columns = ", ".join(name if alias is None else f"{name} AS {alias}" for name, alias in query.fields)
    return f"project {columns}"


# ---------------------------------------------------------------------------------------
# Parser


def parse(sql: str) -> Query:
    """Parse an EnSQL query; raises QueryError ("invalid query" when it is blank)."""
    if not sql.strip():
        raise QueryError("invalid query", len(sql), END_OF_QUERY)
    return _Parser(sql).query()


class _Parser:
    """A recursive-descent parser over the lazy token stream, one token of lookahead."""

    def __init__(self, sql: str) -> None:
        self._tokens = _tokens(sql)
        self.current = next(self._tokens)
        self._depth = 0

    def advance(self) -> _Token:
        """Consume the current token and return it."""
        token = self.current
        if token.kind != "end":
            self.current = next(self._tokens)
        return token

    def error(self, expected: str) -> QueryError:
        """A syntax error at the current token."""
        return _syntax_error(self.current.position, self.current.text, expected)

    def at_keyword(self, *keywords: str) -> bool:
        """Whether the current token is one of ``keywords`` (as a whole word)."""
        return self.current.keyword in keywords

    def at_symbol(self, symbol: str) -> bool:
        """Whether the current token is the punctuation or operator ``symbol``."""
        return self.current.kind == "symbol" and self.current.text == symbol

    def expect_keyword(self, keyword: str, expected: str) -> None:
        """Consume ``keyword`` or fail saying what was ``expected``."""
        if not self.at_keyword(keyword):
            raise self.error(expected)
        self.advance()

    def name(self, what: str) -> _Token:
        """Consume a field or alias name (not a reserved word, no dots)."""
        token = self.current
        if token.kind != "word" or token.keyword or not set(token.text) <= _NAME_CHARACTERS:
            raise self.error(f"expected {what}")
        return self.advance()

    # Clauses -----------------------------------------------------------------------

    def query(self) -> Query:
        """``SELECT columns FROM reference [WHERE …] [OFFSET n] [LIMIT n] [;]`` and nothing after."""
        self.expect_keyword("SELECT", "expected SELECT")
        fields = self.columns()
        topic_position = self.current.position
        topic_parts = self.reference()
        where = None
        if self.at_keyword("WHERE"):
            self.advance()
            where = self.disjunction()
        offset, limit = self.paging(after_where=where is not None)
        if self.at_symbol(";"):
            self.advance()
        if self.current.kind != "end":
            raise self.error("expected end of query")
        return Query(fields, topic_parts, where, offset, limit, topic_position)

    def columns(self) -> tuple[tuple[str, str | None], ...] | None:
        """``*`` (None) or the projected fields with their aliases, up to and including FROM."""
        if self.at_symbol("*"):
            self.advance()
            self.expect_keyword("FROM", "expected FROM")
            return None
        columns: list[tuple[str, str | None]] = []
        output_names: set[str] = set()
        while True:
            field_token = self.name("* or a field name" if not columns else "a field name")
            alias_token = None
            if self.at_keyword("AS"):
                self.advance()
                alias_token = self.name("an alias")
            output_token = alias_token or field_token
            if output_token.text in output_names:
                raise _syntax_error(output_token.position, output_token.text, "duplicate result field")
            output_names.add(output_token.text)
            columns.append((field_token.text, alias_token.text if alias_token else None))
            if self.at_symbol(","):
                self.advance()
                continue
            self.expect_keyword("FROM", "expected ',' or FROM" if alias_token else "expected ',', AS or FROM")
            return tuple(columns)

    def reference(self) -> tuple[str, ...]:
        """The FROM reference: one or more names joined by dots."""
        token = self.current
        parts = tuple(token.text.split(".")) if token.kind == "word" and not token.keyword else ()
        if not parts or not all(part and set(part) <= _NAME_CHARACTERS for part in parts):
            raise self.error("expected a topic name")
        self.advance()
        return parts

    def paging(self, after_where: bool) -> tuple[int, int | None]:
        """OFFSET and LIMIT, in either order, each at most once."""
        values: dict[str, int] = {}
        while self.at_keyword("OFFSET", "LIMIT"):
            keyword_token = self.advance()
            keyword = keyword_token.text.upper()
            if keyword in values:
                raise _syntax_error(keyword_token.position, keyword_token.text, f"{keyword} given twice")
            values[keyword] = self.count(keyword)
        if self.current.kind != "end" and not self.at_symbol(";"):
            raise self.error(self.expected_after_reference(after_where, set(values)))
        return values.get("OFFSET", 0), values.get("LIMIT")

    def expected_after_reference(self, after_where: bool, seen: set[str]) -> str:
        """What may follow the FROM reference or WHERE clause, given the clauses already read."""
        options = [] if after_where or seen else ["WHERE"]
        if after_where and not seen:
            options += ["AND", "OR"]
        options += [keyword for keyword in ("OFFSET", "LIMIT") if keyword not in seen]
        return "expected " + ", ".join(options) + " or end of query" if options else "expected end of query"

    def count(self, keyword: str) -> int:
        """The non-negative integer after OFFSET or LIMIT."""
        token = self.current
        if token.kind != "word" or not set(token.text) <= _DIGITS:
            raise self.error(f"expected a non-negative integer after {keyword}")
        self.advance()
        return self.integer(token)

    def integer(self, token: _Token) -> int:
        """The integer written in ``token``, or an error if it has too many digits for Python."""
        try:
            return int(token.text)
        except ValueError:
            raise _syntax_error(token.position, token.text, "number out of range") from None

    # Predicates --------------------------------------------------------------------

    def disjunction(self) -> Predicate:
        """Conjunctions joined by OR."""
        operands = [self.conjunction()]
        while self.at_keyword("OR"):
            self.advance()
            operands.append(self.conjunction())
        return _combine(Or, operands)

    def conjunction(self) -> Predicate:
        """Primaries joined by AND, which binds tighter than OR."""
        operands = [self.primary()]
        while self.at_keyword("AND"):
            self.advance()
            operands.append(self.primary())
        return _combine(And, operands)

    def primary(self) -> Predicate:
        """A parenthesised predicate or a comparison."""
        if not self.at_symbol("("):
            return self.comparison()
        opening = self.advance()
        if self._depth >= MAX_NESTING:
            raise _syntax_error(opening.position, opening.text, "parentheses nested too deeply")
        self._depth += 1
        inner = self.disjunction()
        self._depth -= 1
        if not self.at_symbol(")"):
            raise self.error("expected ')', AND or OR")
        self.advance()
        return inner

    def comparison(self) -> Comparison:
        """``field operator value``, checking that the operator suits the value's type."""
        field_name = self.name("a field name or '('").text
        operator_token = self.current
        comparison_operator = self.comparison_operator()
        value_token = self.current
        value = self.value()
        if comparison_operator in _PATTERN_OPERATORS and not isinstance(value, str):
            expected = f"expected a 'string' pattern after {comparison_operator}"
            raise _syntax_error(value_token.position, value_token.text, expected)
        if comparison_operator in _ORDERING_OPERATORS and isinstance(value, bool):
            expected = "expected = or != before a boolean"
            raise _syntax_error(operator_token.position, operator_token.text, expected)
        return Comparison(field_name, comparison_operator, value)

    def comparison_operator(self) -> str:
        """One of the comparison operators, normalised (``<>`` to ``!=``, keywords upper-case)."""
        token = self.current
        if token.kind == "symbol" and token.text in _COMPARISON_SYMBOLS:
            self.advance()
            return "!=" if token.text == "<>" else token.text
        if token.keyword in _PATTERN_OPERATORS:
            self.advance()
            return token.keyword
        raise self.error("expected a comparison operator (= != <> < <= > >= LIKE ILIKE)")

    def value(self) -> Value:
        """A string, number or boolean literal."""
        token = self.current
        if token.kind == "string":
            self.advance()
            return token.string_value
        if token.kind == "word" and token.text.lower() in ("true", "false"):
            self.advance()
            return token.text.lower() == "true"
        if token.kind == "word" and _NUMBER.fullmatch(token.text):
            self.advance()
            return self.number(token)
        raise self.error("expected a value (a 'string', a number, true or false)")

    def number(self, token: _Token) -> int | float:
        """The integer or finite decimal written in ``token``."""
        if "." not in token.text:
            return self.integer(token)
        value = float(token.text)
        if value in (float("inf"), float("-inf")):
            raise _syntax_error(token.position, token.text, "number out of range")
        return value
