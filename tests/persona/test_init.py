"""`persona init` writes every labels: and training: key with a comment, generated from the config models; and
docs/persona.example.yaml validates and documents every key of persona.yaml."""

import typing
from pathlib import Path

import pydantic
import pytest
import yaml
from pydantic import BaseModel, Field
from typer.testing import CliRunner

from persona.cli import app, commented_section
from persona.config import LabelConfig, PersonaConfig, TrainingConfig, parse_config

run = CliRunner()
EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "persona.example.yaml"


def _init(root: Path) -> str:
    root.mkdir()
    (root / "orders.csv").write_text("cust,paid_at,total\nc1,2026-01-01,10\n", encoding="utf-8")
    result = run.invoke(app, ["init", "-w", str(root), "--transactions", str(root / "orders.csv"),
                              "--customer-id", "cust", "--timestamp", "paid_at", "--amount", "total"])
    assert result.exit_code == 0, result.output
    return (root / "persona.yaml").read_text(encoding="utf-8")


def test_init_writes_every_label_and_training_key_with_a_comment(tmp_path, salt):
    text = _init(tmp_path / "shop")
    cfg = parse_config(yaml.safe_load(text))
    lines = text.splitlines()
    for section, model in (("labels", LabelConfig), ("training", TrainingConfig)):
        start = lines.index(f"{section}:")
        for key, field in model.model_fields.items():
            at = next(i for i in range(start + 1, len(lines)) if lines[i].startswith(f"  {key}: "))
            above = at
            while lines[above - 1].startswith("  # "):
                above -= 1
            comment = " ".join(line[4:] for line in lines[above:at])
            assert above < at and len(comment) > 3, key  # a comment right above
            if field.description:
                assert comment == " ".join(field.description.split()) or comment.startswith(
                    " ".join(field.description.split()) + ";"), key
            assert getattr(getattr(cfg, section), key) == field.get_default(call_default_factory=True), key
    # the rest of the file is what init always wrote
    assert cfg.sources["transactions"].fields == {"amount": "total"}
    result = run.invoke(app, ["init", "-w", str(tmp_path / "shop"), "--transactions", "x.csv"])
    assert result.exit_code == 2 and "already exists" in result.output


class _Later(BaseModel):
    """A settings model as the lead may extend it: a key without a description, an optional one, a list."""

    horizon_days: int = Field(30, ge=7, description="days to look ahead")
    shrink: float = Field(0.5, gt=0, lt=1)
    adaptive: int | None = Field(None, description="null: chosen from the data")
    grid: list[int] = Field(default_factory=lambda: [30, 60])
    seed: int = 7


def test_sections_are_generated_from_the_model():
    text = commented_section("training", _Later)
    assert text == (
        "training:\n"
        "  # days to look ahead; at least 7\n  horizon_days: 30\n"
        "  # more than 0, less than 1\n  shrink: 0.5\n"
        "  # null: chosen from the data\n  adaptive: null\n"
        "  # default [30, 60]\n  grid: [30, 60]\n"
        "  # default 7\n  seed: 7\n")
    assert _Later.model_validate(yaml.safe_load(text)["training"]) == _Later()


# --- docs/persona.example.yaml -----------------------------------------------------------------------------------
def _model_in(annotation) -> tuple[type[BaseModel] | None, bool]:
    """The settings model inside a field's type (through Optional and dict values), and whether it is a dict's."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is dict:
        inner, _ = _model_in(args[1])
        return inner, inner is not None
    for arg in args:
        inner, keyed = _model_in(arg)
        if inner is not None:
            return inner, keyed
    return None, False


def _schema_paths(model: type[BaseModel], prefix: tuple = ()) -> set[tuple]:
    paths = set()
    for name, field in model.model_fields.items():
        path = (*prefix, name)
        paths.add(path)
        inner, keyed = _model_in(field.annotation)
        if inner is not None:
            paths |= _schema_paths(inner, (*path, "*") if keyed else path)
    return paths


def _document_paths(data: dict, model: type[BaseModel], prefix: tuple = ()) -> set[tuple]:
    paths = set()
    for key, value in data.items():
        path = (*prefix, key)
        paths.add(path)
        inner, keyed = _model_in(model.model_fields[key].annotation)
        if inner is not None and keyed:
            for item in value.values():
                paths |= _document_paths(item, inner, (*path, "*"))
        elif inner is not None and isinstance(value, dict):
            paths |= _document_paths(value, inner, path)
    return paths


def test_the_example_validates_and_documents_every_key():
    data = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    parse_config(data, path=EXAMPLE)
    missing = _schema_paths(PersonaConfig) - _document_paths(data, PersonaConfig)
    assert not missing, "docs/persona.example.yaml does not show: " + ", ".join(
        sorted(".".join(p) for p in missing))


def test_the_key_walk_finds_a_missing_key():
    data = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    del data["training"]["seed"]
    assert ("training", "seed") in _schema_paths(PersonaConfig) - _document_paths(data, PersonaConfig)
    with pytest.raises(pydantic.ValidationError):
        PersonaConfig.model_validate({**data, "trainng": {}})
