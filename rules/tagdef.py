"""What a tag is: the file format as pydantic models (unknown keys forbidden) and the validated `TagDef` it becomes.

    tags:
      - id: age_band                        # snake_case, unique across all files
        name: {zh: 年龄段, en: Age band}
        category: basic                     # basic | consumption | behaviour | predictive | enrichment
        kind: enum                          # flag | enum | bucket | rfm | score | value | top
        exclusive: true
        values:
          - {value: under_18, name: {zh: 18岁以下, en: Under 18}, when: attr_age < 18}
          - {value: adult, name: {zh: 成年, en: Adult}, when: attr_age >= 18}

Both the loader (`rules.loading`, which builds TagDefs) and the engine (`rules.tags`, which evaluates them) read these
types; neither needs the other.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from rules.errors import RuleError
from rules.expr.tree import BOOL, FUNCTIONS, KEYWORDS, LIST, NUMBER, STRING, Expr

CATEGORIES = {"basic": "基础属性", "consumption": "消费特征", "behaviour": "行为偏好", "predictive": "预测标签",
              "enrichment": "外部增补"}
KINDS = ("flag", "enum", "bucket", "rfm", "score", "value", "top")
DEFAULT_TYPE = {"score": "model", "value": "statistic"}
VALUE_TYPE = {"flag": "bool", "enum": "category", "bucket": "category", "rfm": "category", "score": "number",
              "value": "number", "top": "list"}
LANG_TYPE = {"bool": BOOL, "category": STRING, "number": NUMBER, "list": LIST}
# (value, zh, en) in the classic order; the code is (M low) * 4 + (R low) * 2 + (F low)
RFM_SEGMENTS = (
    ("important_value", "重要价值客户", "Important value customer"),
    ("important_develop", "重要发展客户", "Important develop customer"),
    ("important_keep", "重要保持客户", "Important keep customer"),
    ("important_retain", "重要挽留客户", "Important retain customer"),
    ("general_value", "一般价值客户", "General value customer"),
    ("general_develop", "一般发展客户", "General develop customer"),
    ("general_keep", "一般保持客户", "General keep customer"),
    ("general_retain", "一般挽留客户", "General retain customer"),
)
_ID = re.compile(r"[a-z][a-z0-9_]*\Z")


# ---------------------------------------------------------------------------------------------------------------
# the file format, as pydantic models (unknown keys forbidden)
# ---------------------------------------------------------------------------------------------------------------

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Names(_Strict):
    """A display name in Chinese and English."""
    zh: str
    en: str


class EnumValueSpec(_Strict):
    value: str
    name: Names | None = None
    when: str


class ElseSpec(_Strict):
    value: str
    name: Names | None = None


class TagSpec(_Strict):
    """The fields every tag has."""
    id: str
    name: Names
    category: Literal["basic", "consumption", "behaviour", "predictive", "enrichment"]
    kind: Literal["flag", "enum", "bucket", "rfm", "score", "value", "top"]
    type: Literal["rule", "model", "statistic", "enrichment"] | None = None
    owner: str = ""
    description: str | Names = ""
    cadence: str = "daily"
    version: int = Field(1, ge=1)

    @field_validator("id")
    @classmethod
    def _snake_case(cls, v: str) -> str:
        if not _ID.match(v):
            raise ValueError(f"{v!r} is not snake_case (lower-case letters, digits and _, starting with a letter)")
        if v in KEYWORDS or v in FUNCTIONS:
            raise ValueError(f"{v!r} is a word of the expression language; choose another id")
        return v


class FlagSpec(TagSpec):
    when: str


class EnumSpec(TagSpec):
    values: list[EnumValueSpec] = Field(min_length=1)
    else_: str | ElseSpec | None = Field(None, alias="else")
    exclusive: bool = False


class BucketSpec(TagSpec):
    input: str
    edges: list[float] | None = None
    quantiles: list[float] | None = None
    labels: list[str] = Field(min_length=2)
    population: str | None = None


class RfmSpec(TagSpec):
    recency: str
    frequency: str
    monetary: str
    split: Literal["mean", "median"] = "mean"
    population: str | None = None


class ScoreSpec(TagSpec):
    input: str


class ValueSpec(TagSpec):
    input: str


class TopSpec(TagSpec):
    pattern: str
    n: int = Field(3, ge=1)
    min: float | None = None


SPECS: dict[str, type[TagSpec]] = {"flag": FlagSpec, "enum": EnumSpec, "bucket": BucketSpec, "rfm": RfmSpec,
                                   "score": ScoreSpec, "value": ValueSpec, "top": TopSpec}

# ---------------------------------------------------------------------------------------------------------------
# the typed result
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Located:
    """A parsed expression with where it was written."""
    role: str            # "when", "values[2].when", "input", "population", "recency", ...
    text: str
    expr: Expr
    line: int


@dataclass
class TagDef:
    """One validated tag: its spec, parsed expressions, references and output shape."""
    spec: TagSpec
    path: Path
    line: int
    lines: dict[str, int]                          # role -> line of the expression / field
    exprs: dict[str, Located] = field(default_factory=dict)
    values: tuple[tuple[str, str, str], ...] = ()  # (value, zh, en) in category order, for category / list kinds
    tag_refs: tuple[str, ...] = ()                 # tags read
    columns: tuple[str, ...] = ()                  # input columns read directly
    top_columns: tuple[tuple[str, str], ...] = ()  # (category, column), sorted by category, for `top`
    optional: bool = False                         # from a file with optional_inputs: true
    static_exclusive: bool = True                  # every value of an exclusive enum is a box (no data check needed)
    dtype: pd.CategoricalDtype | None = field(default=None, repr=False)   # of a category tag, set at load

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def type(self) -> str:
        return self.spec.type or DEFAULT_TYPE.get(self.kind, "enrichment" if self.spec.category == "enrichment"
                                                   else "rule")

    @property
    def value_type(self) -> str:
        return VALUE_TYPE[self.kind]

    @property
    def source(self) -> str:
        return f"{self.path}:{self.line}"

    @property
    def needs_fit(self) -> bool:
        """Whether evaluation needs statistics learnt by `TagSet.fit`."""
        return self.kind == "rfm" or (self.kind == "bucket" and self.spec.quantiles is not None)

    def error(self, message: str, line: int | None = None) -> RuleError:
        return RuleError(f"{self.path}:{line or self.line}: tag {self.id!r}: {message}")


@dataclass(frozen=True)
class SegmentSource:
    """The raw `segments:` node of one file (not interpreted here); nodes keep their `start_mark` lines."""
    path: Path
    line: int
    node: yaml.Node

