"""Rule tags: YAML tag definitions validated into typed objects and evaluated by one small vectorised engine.

    from rules import DEFAULT_DIR, column_types, load_tagset
    tagset = load_tagset([DEFAULT_DIR], columns=column_types(frame))
    stats = tagset.fit(frame)                 # batch: population statistics (JSON-serialisable)
    tags = tagset.evaluate(frame, stats)      # one column per tag; online: the same call on a few rows

Expressions (`parse`, `evaluate`) are a real tokenizer, parser and evaluator over numpy arrays: no `eval` of strings.

    errors    ExprError, RuleError and the helpers of their messages
    expr/     the expression language (tree, parser, type check, values, evaluation, boxes)
    tagdef    the tag file format (pydantic models) and the validated TagDef
    loading   YAML files -> TagDefs (`load_tagset`, `column_types`)
    resolve   TagDefs -> TagSet: names, availability, dependency order, types, exclusivity
    tags      TagSet: fit, evaluate, catalog
    segments, history, catalog   audiences, tag snapshots, the workspace's tag catalog
"""

from rules.errors import ExprError, RuleError
from rules.expr import Expr, evaluate, parse, typecheck
from rules.loading import DEFAULT_DIR, column_types, load_tagset
from rules.tagdef import CATEGORIES, SegmentSource, TagDef
from rules.tags import TagSet

__all__ = ["CATEGORIES", "DEFAULT_DIR", "Expr", "ExprError", "RuleError", "SegmentSource", "TagDef", "TagSet",
           "column_types", "evaluate", "load_tagset", "parse", "typecheck"]
