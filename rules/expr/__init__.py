"""The tag expression language: tokenizer, recursive-descent parser, AST, type check and vectorised evaluation.

Expressions are parsed into a tree once (at load) and evaluated over whole columns: every node is one or a few numpy
operations over all rows, never a Python loop over rows. There is no `eval` of strings anywhere.

Grammar (keywords and function names case-insensitive; identifiers case-sensitive):

    expr  := or ;  or := and ("or" and)* ;  and := not ("and" not)* ;  not := "not" not | test
    test  := sum [ ("=="|"!="|"<"|"<="|">"|">=") sum | "between" sum "and" sum | ["not"] "in" "[" literal ("," literal)* "]"
                 | "contains" literal | "is" ["not"] "null" ]
    sum   := term (("+"|"-") term)* ;  term := unary (("*"|"/") unary)* ;  unary := "-" unary | atom
    atom  := NUMBER | STRING | "true" | "false" | NAME | "(" expr ")" | FUNC "(" expr ("," expr)* ")"
    FUNC  := coalesce | abs | min | max

Types: every name has one of four types, checked before evaluation (`typecheck`), so a string compared with a number is
an error at load time, not a surprise at evaluation:

    number  float64 array, NaN = null
    string  integer codes into a tuple of categories, -1 = null (a pandas Categorical's layout)
    bool    two bool arrays (value, known); value is False wherever known is False
    list    a (rows x width) array of category codes, -1 padding, plus `known` (null list); from tuples or lists

Semantics: a comparison involving a null is null; `and` / `or` / `not` follow Kleene's three-valued logic; `is null`
is never null; division by zero is null; `min` / `max` are null when any argument is; `coalesce` takes the first
non-null argument. `between` is inclusive at both ends.

One module per stage, each importing only the ones before it:

    tree        the types, keywords and functions; the AST nodes
    parser      tokenizer and parser (`parse`)
    check       the type check (`typecheck`)
    values      the evaluated values and their conversions from and to pandas columns
    evaluation  the vectorised evaluator (`evaluate`, and `evaluate_value` for the tag engine)
    boxes       the static overlap check of exclusive conditions
"""

from rules.errors import ExprError
from rules.expr.check import typecheck
from rules.expr.evaluation import evaluate
from rules.expr.parser import parse
from rules.expr.tree import BOOL, LIST, NUMBER, STRING, TYPES, Expr

__all__ = ["BOOL", "LIST", "NUMBER", "STRING", "TYPES", "Expr", "ExprError", "evaluate", "parse", "typecheck"]
