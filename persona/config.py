"""persona.yaml: the workspace configuration, validated once at the entry point.

Every model forbids unknown keys, so a typo is an error naming the key and the file rather than a setting
silently ignored. Paths in the file are relative to the workspace that holds it.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

CONFIG_NAME = "persona.yaml"

Kind = Literal["profile", "transactions", "events", "interactions"]
Channel = Literal["crm", "online", "store", "app", "web", "social", "other"]

# Canonical fields each kind of source may map, with their type. `required` fields must be mapped and present.
CANONICAL_FIELDS: dict[str, dict[str, str]] = {
    "profile": {
        "gender": "code", "birth_date": "date", "city": "code", "signup_at": "timestamp",
        "opt_out_enrichment": "bool", "opt_out_marketing": "bool",
    },
    "transactions": {
        "order_id": "id", "amount": "number", "quantity": "number", "category": "code", "discount": "number",
        "status": "code", "is_return": "bool", "store_id": "id", "city": "code",
    },
    "events": {"event_type": "code", "category": "code", "platform": "code"},
    "interactions": {"action": "code", "category": "code"},
}
REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    "profile": (),
    "transactions": ("amount",),
    "events": ("event_type",),
    "interactions": ("action",),
}
# Profile attributes that any source may carry (an order's shipping city is evidence of a customer's city).
PROFILE_ATTRIBUTES = ("gender", "birth_date", "city", "opt_out_enrichment", "opt_out_marketing")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {value!r} (expected an IANA name such as 'Asia/Shanghai')") from exc
    return value


class TimestampSpec(Strict):
    """Where a source keeps its event time and how to read it."""

    column: str
    format: str = Field("iso", description="iso | epoch_s | epoch_ms | date | a strftime pattern")
    timezone: str | None = Field(None, description="for naive values; default: the workspace time zone")

    _tz = field_validator("timezone")(lambda cls, v: v if v is None else _check_timezone(v))


class CsvOptions(Strict):
    delimiter: str = ","
    encoding: str = "utf-8"


class SourceSpec(Strict):
    """One raw source: a CSV or Parquet file (or glob of files) and how its columns map to canonical fields."""

    channel: Channel
    kind: Kind
    path: str = Field(..., description="relative to the workspace; a glob such as raw/orders/*.csv appends new files")
    format: Literal["csv", "parquet"] | None = None
    csv: CsvOptions = CsvOptions()
    key: list[str] = Field(default_factory=list, description="source columns that identify a row; repeats are duplicates")
    timestamp: TimestampSpec | None = None
    identifiers: dict[str, str] = Field(..., description="identifier type -> source column")
    fields: dict[str, str] = Field(default_factory=dict, description="canonical field -> source column")

    @property
    def file_format(self) -> str:
        if self.format:
            return self.format
        return "parquet" if self.path.lower().endswith((".parquet", ".pq")) else "csv"

    @model_validator(mode="after")
    def _fields_fit_kind(self) -> SourceSpec:
        allowed = CANONICAL_FIELDS[self.kind]
        unknown = sorted(set(self.fields) - set(allowed))
        if unknown:
            raise ValueError(
                f"fields {unknown} are not canonical fields of a {self.kind} source (expected some of {sorted(allowed)})"
            )
        missing = [f for f in REQUIRED_FIELDS[self.kind] if f not in self.fields]
        if missing:
            raise ValueError(f"a {self.kind} source must map {missing} under 'fields'")
        if self.kind != "profile" and self.timestamp is None:
            raise ValueError(f"a {self.kind} source needs 'timestamp' (its event time column)")
        if not self.identifiers:
            raise ValueError("a source needs at least one identifier column under 'identifiers'")
        return self


class IdentifierType(Strict):
    """How one identifier type is normalised and whether (and how far) it may link records."""

    normalise: Literal["phone", "email", "id"] = "id"
    account: bool = Field(False, description="an account of a person (member, shop account): counted by max_accounts")
    max_accounts: int | None = Field(
        None, ge=1, description="a value seen with more than this many accounts of one type is shared and links nothing"
    )
    blocked: list[str] = Field(default_factory=list, description="values that never link (test numbers, placeholders)")
    link: bool = True


class IdentityConfig(Strict):
    identifiers: dict[str, IdentifierType] = Field(..., description="in priority order: earlier types are stronger")
    max_component_size: int = Field(50, ge=2, description="identifiers in one persona before it is reported and split")
    max_identifier_length: int = Field(256, ge=8, le=4096,
                                       description="an identifier value longer than this quarantines its row")

    @property
    def priority(self) -> list[str]:
        return list(self.identifiers)


class AttributeRule(Strict):
    rule: Literal["most_recent", "most_trusted", "most_frequent"]
    sources: list[str] = Field(default_factory=list, description="trust order (most trusted first); empty: all")


class ProfileConfig(Strict):
    attributes: dict[str, AttributeRule] = Field(
        default_factory=lambda: {
            "gender": AttributeRule(rule="most_trusted"),
            "birth_date": AttributeRule(rule="most_trusted"),
            "city": AttributeRule(rule="most_frequent"),
            "opt_out_enrichment": AttributeRule(rule="most_recent"),
            "opt_out_marketing": AttributeRule(rule="most_recent"),
        }
    )

    @field_validator("attributes")
    @classmethod
    def _known(cls, value: dict[str, AttributeRule]) -> dict[str, AttributeRule]:
        unknown = sorted(set(value) - set(PROFILE_ATTRIBUTES))
        if unknown:
            raise ValueError(f"unknown profile attributes {unknown} (expected some of {list(PROFILE_ATTRIBUTES)})")
        return value


class ConsentConfig(Strict):
    missing: Literal["granted", "denied"] = Field(
        "granted", description="consent of a persona with no opt-in/opt-out record"
    )


class EnrichmentKey(Strict):
    column: str
    type: Literal["phone_sha256", "email_sha256", "city"]


class AsOf(Strict):
    column: str | None = None
    date: dt.date | None = None

    @model_validator(mode="after")
    def _one(self) -> AsOf:
        if (self.column is None) == (self.date is None):
            raise ValueError("as_of needs exactly one of 'column' or 'date'")
        return self


class EnrichmentSpec(Strict):
    """An external source joined onto profiles by a key, with provenance and consent."""

    provider: Literal["third_party", "partner", "public"]
    path: str
    format: Literal["csv", "parquet"] | None = None
    key: EnrichmentKey
    as_of: AsOf
    fields: dict[str, str] = Field(..., min_length=1, description="profile attribute -> source column")
    requires_consent: bool | None = Field(None, description="default: true for third_party and partner, false for public")
    prefer: Literal["internal", "external"] = Field("internal", description="who wins when both have a value")

    @property
    def needs_consent(self) -> bool:
        return self.provider != "public" if self.requires_consent is None else self.requires_consent

    @property
    def file_format(self) -> str:
        if self.format:
            return self.format
        return "parquet" if self.path.lower().endswith((".parquet", ".pq")) else "csv"


class StoreConfig(Strict):
    """Where Feast keeps features. Embedded: local files + SQLite, no server. Production: Redis + PostgreSQL."""

    profile: Literal["embedded", "production"] = "embedded"
    project: str = Field("persona", pattern=r"^[a-z][a-z0-9_]*$", description="Feast project name")
    redis: str = Field("127.0.0.1:6379", description="production online store; $PERSONA_REDIS overrides")
    registry_url: str = Field(
        "postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
        description="production SQL registry (SQLAlchemy URL); $PERSONA_REGISTRY_URL overrides",
    )
    key_ttl_seconds: int | None = Field(None, ge=60, description="Redis key expiry for online features")


class TrackingConfig(Strict):
    """MLflow tracking and model registry."""

    uri: str | None = Field(
        None, description="default: sqlite:///<workspace>/mlflow.db; $PERSONA_TRACKING_URI overrides"
    )
    experiment: str = "persona"


class LabelConfig(Strict):
    churn_horizon_days: int = Field(90, ge=7, description="churn_risk: no purchase in this many days after the "
                                                          "snapshot date")
    value_horizon_days: int = Field(180, ge=7, description="high_value: spend in this many days after the snapshot "
                                                           "date")
    value_top_percent: float = Field(20.0, gt=0, lt=100)
    interest_horizon_days: int = Field(30, ge=7, description="interest: a purchase in the category within this "
                                                             "many days")


class TrainingConfig(Strict):
    cutoff_every_days: int | None = Field(
        None, ge=7, description="spacing of the historical snapshot dates; default by the data's span: 7 days "
                                "under 120 days of data, 14 under 360, else 30")
    cutoffs: int = Field(6, ge=2, description="how many fully labelled snapshot dates to train and test on")
    min_positives: int = Field(50, ge=1, description="a tag trains only with at least this many positive labels")
    min_negatives: int = Field(50, ge=1, description="a tag trains only with at least this many negative labels")
    min_history_days: int | None = Field(
        None, ge=7, description="data needed before the first snapshot date; default by the data's span: 30 days "
                                "under 360 days of data, 90 under 720, else 180")
    seed: int = Field(7, description="random seed of sampling and models")
    split: Literal["auto", "time", "customers"] = Field(
        "auto", description="held-out protocol: time (every training window ends by the held-out date), customers "
                            "(a short log: the held-out date's customers are set apart instead), auto (time when "
                            "the data allows it)")
    def grid(self, span_days: float) -> tuple[int, int]:
        """(cutoff_every_days, min_history_days) for data spanning `span_days`: the settings, or defaults that fit
        the span. In steps, not in proportion, so a nightly run's growing span keeps the same snapshot grid (a step
        changes the grid once: every snapshot is recomputed that night)."""
        every = self.cutoff_every_days or (7 if span_days < 120 else 14 if span_days < 360 else 30)
        history = self.min_history_days or (30 if span_days < 360 else 90 if span_days < 720 else 180)
        return every, history

    blend: bool = Field(
        True, description="also try a stacked blend of the candidate models (fitted on the validation date); it "
                          "serves only when it beats every single model on the held-out date")
    refit: bool = Field(
        True, description="after the held-out comparison, refit the chosen model on every labelled date up to the "
                          "held-out one, so scoring learns from the newest behaviour (the comparison is unchanged)")
    promotion_margin: float = Field(
        0.005, ge=0, description="a challenger replaces the champion only if its held-out metric (AUC, Spearman) is "
                                 "higher by at least this much, on the same rows")
    promotion_bootstrap: bool = Field(
        True, description="also require the paired bootstrap's 95% lower bound of that difference to be above 0")


class TruthSpec(Strict):
    path: str = "truth"


class TagsConfig(Strict):
    """Where rule tags and segments are declared."""

    defaults: bool = Field(True, description="load the default tag set shipped with persona (rules/default)")
    paths: list[str] = Field(default_factory=lambda: ["rules"],
                             description="workspace folders or files of tag and segment YAML (missing ones are skipped)")
    keep_snapshots: int = Field(400, ge=1, description="dated tag snapshots kept by rescoring")


class ServingConfig(Strict):
    """The online service."""

    port: int = Field(3000, ge=1, le=65535)
    api_key_env: str = Field("PERSONA_API_KEY",
                             description="environment variable holding the API key; unset means no key is required")
    reload_seconds: float = Field(10.0, gt=0, description="how often the service checks for a new champion")
    recommend_exclude_days: int = Field(30, ge=0, description="leave out categories bought in the last N days")
    max_batch: int = Field(1000, ge=1, description="most customers in one /v1/score call")
    access_log: bool = Field(False, description="log every request (BentoML's access log); off by default: at "
                                                "hundreds of requests/s it costs ~0.6 ms of CPU per request, and "
                                                "/metrics already counts requests by path, status and latency")
    workers: int = Field(2, ge=1, le=64, description="server processes sharing the port (one per core)")
    max_body_bytes: int = Field(1_048_576, ge=1024, description="largest request body; larger is a 413")
    max_id_length: int = Field(128, ge=8, le=4096, description="longest persona_id or identifier value; longer is a 422")
    event_max_age_days: float = Field(7.0, gt=0, description="an event older than this is refused (422)")
    event_future_seconds: float = Field(300.0, ge=0, description="client clock slack: a later event is refused (422)")
    store_timeout_seconds: float = Field(1.0, gt=0, description="an online store call slower than this is a 503")
    event_log_url: str | None = Field(
        None, description="where accepted events are kept before the 200: default SQLite in <workspace>/events/ "
                          "(embedded) or the registry's PostgreSQL (production); $PERSONA_EVENT_LOG_URL overrides")
    auto_rebuild: bool = Field(True, description="rebuild an empty or stale online store from the offline snapshot "
                                                 "and the event log without a restart")
    docs: bool = Field(True, description="serve the interactive API docs at /docs (behind the API key when set)")
    feature_log_sample_rate: float = Field(
        0.0, ge=0, le=1, description="share of the personas answered whose served features are logged through "
                                      "Feast's feature logging (<workspace>/features/feature_logs/) for skew checks; "
                                      "0 = off")


class ScheduleConfig(Strict):
    """`persona schedule`: batch rescoring (and optional retraining) on a cron expression."""

    cron: str = "0 2 * * *"
    retrain_cron: str | None = Field(None, description="retrain with the promotion gate on this cron, if set")
    timezone: str = "UTC"

    _tz = field_validator("timezone")(lambda cls, v: _check_timezone(v))


class SparkConfig(Strict):
    """`engine: spark`: the Spark cluster the batch work runs on (pyspark 4 and Java 17+, the `persona[spark]` extra)."""

    master: str = Field("local[*]", description="local[N], spark://host:7077, k8s://https://host:443, or yarn")
    app_name: str = Field("persona", description="the Spark application name")
    conf: dict[str, str] = Field(default_factory=dict,
                                 description="Spark settings passed as they are (spark.executor.memory: 8g, ...)")

    @field_validator("conf", mode="before")
    @classmethod
    def _text_values(cls, value: object) -> object:
        # YAML reads `spark.executor.instances: 4` as a number; Spark settings are text
        if isinstance(value, dict):
            return {str(k): str(v).lower() if isinstance(v, bool) else str(v) for k, v in value.items()}
        return value


class PersonaConfig(Strict):
    """The whole persona.yaml."""

    version: Literal[1] = 1
    name: str = "persona"
    timezone: str = "UTC"
    phone_region: str = "CN"
    sources: dict[str, SourceSpec] = Field(..., min_length=1)
    identity: IdentityConfig
    mappings: dict[str, dict[str, str | None]] = Field(default_factory=dict)
    profile: ProfileConfig = ProfileConfig()
    consent: ConsentConfig = ConsentConfig()
    enrichment: dict[str, EnrichmentSpec] = Field(default_factory=dict)
    store: StoreConfig = StoreConfig()
    tracking: TrackingConfig = TrackingConfig()
    labels: LabelConfig = LabelConfig()
    training: TrainingConfig = TrainingConfig()
    truth: TruthSpec | None = None
    tags: TagsConfig = TagsConfig()
    serving: ServingConfig = ServingConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    engine: Literal["duckdb", "spark"] = Field(
        "duckdb", description="duckdb: embedded, nothing to install; spark: the batch work on the `spark` cluster")
    spark: SparkConfig = SparkConfig()

    _tz = field_validator("timezone")(lambda cls, v: _check_timezone(v))

    @field_validator("mappings", mode="before")
    @classmethod
    def _stringify_keys(cls, value: object) -> object:
        # YAML reads `1: male` as an int key; codes are text.
        if isinstance(value, dict):
            return {f: ({str(k): v for k, v in m.items()} if isinstance(m, dict) else m) for f, m in value.items()}
        return value

    @model_validator(mode="after")
    def _cross_checks(self) -> PersonaConfig:
        known = set(self.identity.identifiers)
        for name, src in self.sources.items():
            unknown = sorted(set(src.identifiers) - known)
            if unknown:
                raise ValueError(
                    f"sources.{name}.identifiers: {unknown} not declared under identity.identifiers "
                    f"(declared: {sorted(known)})"
                )
        for attr, rule in self.profile.attributes.items():
            bad = sorted(set(rule.sources) - set(self.sources))
            if bad:
                raise ValueError(f"profile.attributes.{attr}.sources: {bad} are not sources of this workspace")
        return self


class ConfigError(ValueError):
    """persona.yaml is missing, unreadable or invalid; the message names the file, the key and what was expected."""


def _format_errors(path: Path, exc: ValidationError) -> str:
    """One line for one problem; a header and one bullet per problem otherwise."""
    problems = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            problems.append(f"{where}: unknown key (check the spelling; it is not a persona.yaml setting)")
        elif err["type"] == "missing":
            problems.append(f"{where}: required key is missing")
        else:
            found = err.get("input")
            shown = "" if isinstance(found, dict | list) else f" (found {found!r})"
            problems.append(f"{where}: {err['msg']}{shown}")
    if len(problems) == 1:
        return f"{path}: {problems[0]}"
    return "\n".join([f"{path}: {len(problems)} problems", *(f"  - {p}" for p in problems)])


def parse_config(data: object, *, path: Path | str = CONFIG_NAME) -> PersonaConfig:
    """Validate a parsed persona.yaml; raise ConfigError naming the file and every bad key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level, found {type(data).__name__}")
    try:
        return PersonaConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(Path(path), exc)) from None


def load_config(workspace: Path) -> PersonaConfig:
    """Read and validate `workspace/persona.yaml`."""
    path = Path(workspace) / CONFIG_NAME
    if not path.is_file():
        raise ConfigError(
            f"{path}: no persona.yaml in workspace {workspace} "
            "(run `persona generate` for demo data or `persona init` to start from your own files)"
        )
    return parse_text(path.read_bytes(), path)


def parse_text(text: bytes, path: Path) -> PersonaConfig:
    """Validate the bytes of a persona.yaml read from `path` (named in every message)."""
    try:
        data = yaml.safe_load(text.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    return parse_config(data, path=path)
