"""The expression language: parsing (precedence, errors with positions), types, and vectorised three-valued evaluation."""

import numpy as np
import pandas as pd
import pytest

from rules.errors import ExprError
from rules.expr import evaluate, parse, typecheck
from rules.expr.boxes import Interval, box_of, box_overlap, describe_box
from rules.expr.parser import tokenize

NA = pd.NA


def ev(text: str, **columns) -> list:
    """Evaluate over the given columns and return a plain list (pd.NA for null booleans, nan for numbers)."""
    return evaluate(parse(text), pd.DataFrame(columns)).tolist()


# --- parsing ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, tree", [
    ("a or b and c", "(a or (b and c))"),
    ("a and b or c", "((a and b) or c)"),
    ("not a and b", "((not a) and b)"),
    ("not not a", "(not (not a))"),
    ("a or b or c", "(a or b or c)"),
    ("x + y * z > 3", "((x + (y * z)) > 3)"),
    ("(x + y) * z", "((x + y) * z)"),
    ("x - y - z", "((x - y) - z)"),
    ("x / y / z", "((x / y) / z)"),
    ("-x * 2", "(-(x) * 2)"),
    ("- - x", "-(-(x))"),
    ("x >= -1.5", "(x >= -1.5)"),
    ("x between 1 and 2 and y", "((x between 1 and 2) and y)"),
    ("x between a + 1 and b * 2", "(x between (a + 1) and (b * 2))"),
    ("x in [1, 2.5, -3]", "(x in [1, 2.5, -3])"),
    ("s not in ['a', \"b\"]", "(s not in ['a', 'b'])"),
    ("not s in ['a']", "(not (s in ['a']))"),
    ("l contains '美妆'", "(l contains '美妆')"),
    ("x is null or y is not null", "((x is null) or (y is not null))"),
    ("coalesce(x, 0) + ABS(y) > MAX(a, b, 1)", "((coalesce(x, 0) + abs(y)) > max(a, b, 1))"),
    ("A AND NOT B OR TRUE", "((A and (not B)) or true)"),
    ("x == 1e3", "(x == 1000)"),
    ("flag == false", "(flag == false)"),
])
def test_precedence_and_forms(text, tree):
    assert str(parse(text)) == tree


def test_names_lists_every_identifier_once():
    assert parse("a > 1 and coalesce(b, c) < d or e is null or f contains 'x' or g in [1]").names() == \
        {"a", "b", "c", "d", "e", "f", "g"}
    assert parse("1 + 2 > 3").names() == set()


def test_strings_may_hold_chinese_quotes_and_escapes():
    assert [t.value for t in tokenize("'中文' \"it's\" 'a\\'b'")[:-1]] == ["中文", "it's", "a'b"]


@pytest.mark.parametrize("text, message, position", [
    ("attr_age > 30 and and x", "unexpected 'and' at column 19", 18),
    ("a = 3", "unexpected character '=' at column 3 ('=' is not an operator: use '==' to compare)", 2),
    ("a > 1 && b", "unexpected character '&' at column 7 (use 'and')", 6),
    ("a between 1 or 2", "expected 'and' (between LOW and HIGH) at column 13, found 'or'", 12),
    ("a < b < c", "unexpected '<' at column 7", 6),
    ("(a > 1", "expected ')' at column 7, found end of expression", 6),
    ("a > ", "unexpected end of expression at column 5", 4),
    ("x in []", "expected a number, a quoted string, true or false at column 7, found ']'", 6),
    ("x in [y]", "expected a number, a quoted string, true or false at column 7, found 'y'", 6),
    ("x is nul", "expected 'null' (is null / is not null) at column 6, found 'nul'", 5),
    ("'open", "unterminated string starting at column 1", 0),
    ("", "empty expression", 0),
    ("foo(x)", "unknown function 'foo' at column 1 (functions: abs, coalesce, max, min)", 0),
    ("abs(x, y)", "abs() takes exactly 1 argument, found 2 (column 1)", 0),
    ("min(x)", "min() takes at least 2 arguments, found 1 (column 1)", 0),
    ("a > 1 b", "unexpected 'b' at column 7", 6),
    ("30d > 1", "unexpected 'd' at column 3", 2),
])
def test_parse_errors_say_where(text, message, position):
    with pytest.raises(ExprError) as info:
        parse(text)
    err = info.value
    assert err.message == message
    assert err.position == position
    lines = str(err).splitlines()
    assert lines[0] == message
    assert lines[1].strip() == text.strip() or text == ""
    assert lines[2].index("^") - 4 == position        # the caret sits under the offending character


def test_keywords_cannot_be_names():
    with pytest.raises(ExprError, match="unexpected 'between'"):
        parse("between > 1")


# --- types --------------------------------------------------------------------------------------------------------

TYPES = {"n": "number", "s": "string", "b": "bool", "l": "list"}


@pytest.mark.parametrize("text, kind", [
    ("n + 1", "number"), ("s", "string"), ("n > 1 and b", "bool"), ("coalesce(s, 'x')", "string"),
    ("coalesce(b, false)", "bool"), ("l contains 'x'", "bool"), ("s is null", "bool"), ("l is null", "bool"),
    ("s in ['a', 'b']", "bool"), ("b == true", "bool"), ("-abs(n)", "number"),
])
def test_typecheck_accepts(text, kind):
    assert typecheck(parse(text), TYPES) == kind


@pytest.mark.parametrize("text, message", [
    ("s > 1", "'>' orders numbers, but 's' is a string"),
    ("s == 1", "cannot compare a string 's' with a number 1"),
    ("n == 'x'", "cannot compare a number 'n' with a string 'x'"),
    ("n in ['a']", "list value 'a' is a string but 'n' is a number"),
    ("s + 1", "'+' needs a number, but 's' is a string"),
    ("n and b", "'and' needs a bool, but 'n' is a number"),
    ("not n", "'not' needs a bool"),
    ("s contains 'x'", "'contains' needs a list, but 's' is a string (use '==' or 'in')"),
    ("l in ['x']", "'in' tests one value, but 'l' is a list (use 'contains')"),
    ("l contains 1", "'contains' looks for a quoted string"),
    ("coalesce(n, 'x')", "coalesce() needs arguments of one type"),
    ("max(n, s)", "max() needs numbers, but 's' is a string"),
    ("n between 's' and 2", "'between' needs a number"),
    ("nn > 1", "unknown column 'nn' (did you mean 'n'?)"),
])
def test_type_errors_are_found_before_evaluation(text, message):
    with pytest.raises(ExprError) as info:
        typecheck(parse(text), TYPES)
    assert message in info.value.message


def test_domains_catch_values_a_name_never_takes():
    with pytest.raises(ExprError, match=r"'s' has no value 'hihg' \(did you mean 'high'\?\)"):
        typecheck(parse("s == 'hihg'"), TYPES, domains={"s": ["low", "high"]})
    with pytest.raises(ExprError, match="'l' has no value 'beuaty'"):
        typecheck(parse("l contains 'beuaty'"), TYPES, domains={"l": ["beauty", "books"]})
    assert typecheck(parse("s in ['low', 'high']"), TYPES, domains={"s": ["low", "high"]}) == "bool"


def test_evaluate_rejects_a_string_column_compared_with_a_number():
    frame = pd.DataFrame({"city": pd.Categorical(["sh", "bj"])})
    with pytest.raises(ExprError, match="cannot compare a string 'city' with a number 1"):
        evaluate(parse("city == 1"), frame)
    with pytest.raises(ExprError, match="unknown column 'cty' \\(did you mean 'city'\\?\\)"):
        evaluate(parse("cty == 'sh'"), frame)


# --- evaluation: numbers ------------------------------------------------------------------------------------------

def test_arithmetic_and_division_by_zero_is_null():
    x = [6.0, 1.0, np.nan, 0.0, -4.0]
    y = [3.0, 0.0, 1.0, 0.0, 2.0]
    out = evaluate(parse("x / y"), pd.DataFrame({"x": x, "y": y}))
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out.to_numpy(), [2.0, np.nan, np.nan, np.nan, -2.0])
    np.testing.assert_array_equal(ev("x + y * 2 - 1", x=x, y=y), [11.0, 0.0, np.nan, -1.0, -1.0])
    np.testing.assert_array_equal(ev("-x", x=x), [-6.0, -1.0, np.nan, -0.0, 4.0])
    np.testing.assert_array_equal(ev("x / 0", x=x), [np.nan] * 5)
    np.testing.assert_array_equal(ev("(x + 1) / (y - y)", x=x, y=y), [np.nan] * 5)


def test_functions_are_elementwise():
    x = [1.0, np.nan, -3.0]
    y = [2.0, 5.0, np.nan]
    np.testing.assert_array_equal(ev("coalesce(x, y, 0)", x=x, y=y), [1.0, 5.0, -3.0])
    np.testing.assert_array_equal(ev("coalesce(x, 7)", x=[np.nan, np.nan, 1.0]), [7.0, 7.0, 1.0])
    np.testing.assert_array_equal(ev("abs(x)", x=x), [1.0, np.nan, 3.0])
    np.testing.assert_array_equal(ev("min(x, y)", x=x, y=y), [1.0, np.nan, np.nan])     # null if any is null
    np.testing.assert_array_equal(ev("max(x, y, 0)", x=x, y=y), [2.0, np.nan, np.nan])


@pytest.mark.parametrize("op, expected", [
    ("==", [False, True, False, NA]), ("!=", [True, False, True, NA]), ("<", [True, False, False, NA]),
    ("<=", [True, True, False, NA]), (">", [False, False, True, NA]), (">=", [False, True, True, NA]),
])
def test_comparisons_with_nulls(op, expected):
    out = evaluate(parse(f"x {op} 2"), pd.DataFrame({"x": [1.0, 2.0, 3.0, np.nan]}))
    assert out.dtype == "boolean"
    assert out.tolist() == expected


def test_comparing_two_columns_is_null_where_either_is():
    assert ev("x < y", x=[1.0, np.nan, 1.0, 3.0], y=[2.0, 1.0, np.nan, 2.0]) == [True, NA, NA, False]


def test_between_is_inclusive_and_null_aware():
    assert ev("x between 18 and 24", x=[17.9, 18.0, 24.0, 24.1, np.nan]) == [False, True, True, False, NA]
    assert ev("x between lo and 5", x=[3.0, 3.0], lo=[1.0, np.nan]) == [True, NA]


def test_in_and_not_in():
    x = [1.0, 2.0, 3.0, np.nan]
    assert ev("x in [1, 3]", x=x) == [True, False, True, NA]
    assert ev("x not in [1, 3]", x=x) == [False, True, False, NA]
    s = pd.Categorical(["a", "b", None, "c"])
    assert ev("s in ['a', 'c', 'zzz']", s=s) == [True, False, NA, True]
    assert ev("s not in ['a']", s=s) == [False, True, NA, True]
    assert ev("s in ['zzz']", s=s) == [False, False, NA, False]


def test_is_null_is_never_null():
    x = [1.0, np.nan]
    assert ev("x is null", x=x) == [False, True]
    assert ev("x is not null", x=x) == [True, False]
    assert ev("s is null", s=pd.Categorical(["a", None])) == [False, True]
    assert ev("b is null", b=pd.array([True, None], dtype="boolean")) == [False, True]
    assert ev("l is null", l=[("a",), None]) == [False, True]


# --- evaluation: Kleene logic -------------------------------------------------------------------------------------

T, F = True, False
# every combination of (a, b) over {true, false, null}
A = [T, T, T, F, F, F, NA, NA, NA]
B = [T, F, NA, T, F, NA, T, F, NA]


def _bools(values):
    return pd.array(values, dtype="boolean")


def test_kleene_and():
    assert ev("a and b", a=_bools(A), b=_bools(B)) == [T, F, NA, F, F, F, NA, F, NA]


def test_kleene_or():
    assert ev("a or b", a=_bools(A), b=_bools(B)) == [T, T, T, T, F, NA, T, NA, NA]


def test_kleene_not_and_compound():
    assert ev("not a", a=_bools([T, F, NA])) == [F, T, NA]
    # null and false is false; so `not (x > 1 and y > 1)` is true where y <= 1 even when x is unknown
    assert ev("not (x > 1 and y > 1)", x=[np.nan, np.nan, 2.0], y=[0.0, 2.0, 2.0]) == [T, NA, F]
    assert ev("x > 1 or y > 1", x=[np.nan, np.nan], y=[2.0, 0.0]) == [T, NA]


def test_boolean_equality_and_literals():
    b = _bools([T, F, NA])
    assert ev("b == true", b=b) == [T, F, NA]
    assert ev("b != true", b=b) == [F, T, NA]
    assert ev("b in [false]", b=b) == [F, T, NA]
    assert ev("true and b", b=b) == [T, F, NA]
    assert ev("false and b", b=b) == [F, F, F]
    assert ev("coalesce(b, false)", b=b) == [T, F, F]


def test_a_constant_expression_fills_every_row():
    out = evaluate(parse("1 + 1 == 2"), pd.DataFrame({"x": [1.0, 2.0, 3.0]}))
    assert out.tolist() == [True, True, True]
    assert list(out.index) == [0, 1, 2]


# --- evaluation: strings and lists --------------------------------------------------------------------------------

def test_strings_from_categorical_and_object_columns():
    frame = pd.DataFrame({"s": pd.Categorical(["高", "低", None]), "o": ["a", None, "b"]})
    assert evaluate(parse("s == '高'"), frame).tolist() == [True, False, NA]
    assert evaluate(parse("s != '高'"), frame).tolist() == [False, True, NA]
    assert evaluate(parse("o == 'b'"), frame).tolist() == [False, NA, True]
    assert evaluate(parse("'b' == o"), frame).tolist() == [False, NA, True]
    assert evaluate(parse("s == o"), frame).tolist() == [False, NA, NA]
    out = evaluate(parse("coalesce(o, 'none')"), frame)
    assert isinstance(out.dtype, pd.CategoricalDtype)
    assert out.tolist() == ["a", "none", "b"]


def test_contains_on_tuples_and_lists():
    tuples = [("beauty", "books"), (), None, ("books",)]
    assert ev("l contains 'books'", l=tuples) == [True, False, NA, True]
    assert ev("l contains 'beauty'", l=tuples) == [True, False, NA, False]
    assert ev("l contains 'nothing'", l=tuples) == [False, False, NA, False]
    lists = pd.Series([["a"], ["b", "a"], np.nan], dtype=object)
    assert ev("l contains 'a' and not (l contains 'b')", l=lists) == [True, False, NA]


def test_index_is_kept():
    frame = pd.DataFrame({"x": [1.0, 5.0]}, index=pd.Index(["P1", "P2"], name="persona_id"))
    out = evaluate(parse("x > 2"), frame)
    assert list(out.index) == ["P1", "P2"] and out.tolist() == [False, True]


def test_float32_inputs_compare_as_float64():
    x = np.array([0.3, 0.6], dtype=np.float32)
    assert ev("x >= 0.6", x=x) == [False, True]        # float32 0.6 is 0.6000000238 > 0.6


def test_vectorised_over_a_million_rows_quickly():
    rng = np.random.default_rng(0)
    x = rng.random(1_000_000)
    x[::7] = np.nan
    out = evaluate(parse("(x > 0.5 and x < 0.9) or x is null"), {"x": x})
    assert out.sum() == ((x > 0.5) & (x < 0.9) | np.isnan(x)).sum()


# --- boxes (static overlap of exclusive values) -------------------------------------------------------------------

def test_boxes_and_overlaps():
    adult = box_of(parse("attr_age >= 18 and attr_age < 55"))
    senior = box_of(parse("attr_age between 50 and 90"))
    assert adult == {"attr_age": Interval(18, True, 55, False)}
    assert describe_box(box_overlap(adult, senior)) == "attr_age is in [50, 55)"
    assert box_overlap(box_of(parse("x < 18")), box_of(parse("x >= 18"))) is None
    assert box_overlap(box_of(parse("x <= 18")), box_of(parse("18 <= x"))) == {"x": Interval(18, True, 18, True)}
    assert describe_box(box_overlap(box_of(parse("tier in [1, 2]")), box_of(parse("tier == 2")))) == "tier = 2"
    assert box_overlap(box_of(parse("s == 'a'")), box_of(parse("s in ['b', 'c']"))) is None
    both = box_overlap(box_of(parse("x > 1")), box_of(parse("y <= 3")))
    assert describe_box(both) == "x > 1 and y <= 3"
    assert box_overlap(box_of(parse("x > 5 and x < 3")), box_of(parse("y > 0"))) is None   # an empty box
    assert box_of(parse("x > 1 or y > 1")) is None
    assert box_of(parse("x != 1")) is None
    assert box_of(parse("x / 2 > 1")) is None
