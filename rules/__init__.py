"""Rule tags: YAML tag definitions validated into typed objects and evaluated by one small vectorised engine.

    from rules import DEFAULT_DIR, column_types, load_tagset
    tagset = load_tagset([DEFAULT_DIR], columns=column_types(frame))
    stats = tagset.fit(frame)                 # batch: population statistics (JSON-serialisable)
    tags = tagset.evaluate(frame, stats)      # one column per tag; online: the same call on a few rows

Expressions (`parse`, `evaluate`) are a real tokenizer, parser and evaluator over numpy arrays: no `eval` of strings.
"""

from rules.errors import ExprError, RuleError
from rules.expr import Expr, evaluate, parse, typecheck
from rules.tags import CATEGORIES, DEFAULT_DIR, SegmentSource, TagDef, TagSet, column_types, load_tagset

__all__ = ["CATEGORIES", "DEFAULT_DIR", "Expr", "ExprError", "RuleError", "SegmentSource", "TagDef", "TagSet",
           "column_types", "evaluate", "load_tagset", "parse", "typecheck"]
