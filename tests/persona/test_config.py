"""persona.yaml validation: a good file loads; every bad one is a ConfigError naming the file, the key and what was
expected."""

import copy
from pathlib import Path

import pytest
import yaml

from persona.config import CONFIG_NAME, ConfigError, load_config

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "persona.example.yaml"

VALID = {
    "version": 1,
    "name": "shop",
    "timezone": "Asia/Shanghai",
    "sources": {
        "crm": {
            "channel": "crm", "kind": "profile", "path": "raw/crm.csv", "key": ["member_id"],
            "identifiers": {"member_id": "member_id", "phone": "mobile"},
            "fields": {"gender": "gender"},
        },
        "orders": {
            "channel": "online", "kind": "transactions", "path": "raw/orders/*.csv", "key": ["order_id"],
            "timestamp": {"column": "order_time", "format": "iso"},
            "identifiers": {"phone": "buyer_phone"},
            "fields": {"order_id": "order_id", "amount": "amount"},
        },
    },
    "identity": {"identifiers": {"member_id": {"account": True}, "phone": {"normalise": "phone", "max_accounts": 2}}},
    "mappings": {"gender": {1: "male", "2": "female", "u": None}},
}


def write_config(root: Path, data: object) -> Path:
    path = root / CONFIG_NAME
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


def test_valid_config_loads_with_defaults(tmp_path):
    write_config(tmp_path, VALID)
    cfg = load_config(tmp_path)
    assert list(cfg.sources) == ["crm", "orders"]
    assert cfg.sources["orders"].file_format == "csv"
    assert cfg.identity.priority == ["member_id", "phone"]
    assert cfg.mappings["gender"] == {"1": "male", "2": "female", "u": None}  # YAML int keys become text codes
    assert cfg.consent.missing == "granted"
    assert cfg.profile.attributes["city"].rule == "most_frequent"


def test_documented_example_is_a_valid_config(tmp_path):
    write_config(tmp_path, EXAMPLE.read_text(encoding="utf-8"))
    cfg = load_config(tmp_path)
    assert cfg.enrichment["vendor"].needs_consent and not cfg.enrichment["city_stats"].needs_consent


def _set(data: dict, dotted: str, value: object) -> None:
    *parents, last = dotted.split(".")
    for p in parents:
        data = data[p]
    if value is _DELETE:
        del data[last]
    else:
        data[last] = value


_DELETE = object()


@pytest.mark.parametrize("change,key,expected", [
    pytest.param({"sources.orders.chanel": "online"}, "sources.orders.chanel", "unknown key", id="unknown-key"),
    pytest.param({"tiemzone": "UTC"}, "tiemzone", "unknown key", id="unknown-top-level-key"),
    pytest.param({"identity.max_component_size": "lots"}, "identity.max_component_size", "valid integer",
                 id="wrong-type"),
    pytest.param({"sources.crm.key": "member_id"}, "sources.crm.key", "valid list", id="wrong-type-list"),
    pytest.param({"sources.orders.channel": "fax"}, "sources.orders.channel", "'crm'", id="bad-choice"),
    pytest.param({"timezone": "Asia/Shangai"}, "timezone", "IANA name", id="bad-time-zone"),
    pytest.param({"sources.orders.timestamp.timezone": "Mars/Base"}, "sources.orders.timestamp.timezone",
                 "IANA name", id="bad-source-time-zone"),
    pytest.param({"sources.orders.identifiers.wechat": "openid"}, "sources.orders.identifiers",
                 "not declared under identity.identifiers", id="undeclared-identifier-type"),
    pytest.param({"sources.orders.fields.amount": _DELETE}, "sources.orders", "must map ['amount']",
                 id="transactions-without-amount"),
    pytest.param({"sources.orders.timestamp": _DELETE}, "sources.orders", "needs 'timestamp'",
                 id="transactions-without-timestamp"),
    pytest.param({"identity": _DELETE}, "identity", "required key is missing", id="missing-section"),
    pytest.param({"sources.crm.fields.amount": "amount"}, "sources.crm", "not canonical fields of a profile",
                 id="field-not-of-its-kind"),
])
def test_invalid_config_names_file_key_and_expectation(tmp_path, change, key, expected):
    data = copy.deepcopy(VALID)
    for dotted, value in change.items():
        _set(data, dotted, value)
    path = write_config(tmp_path, data)
    with pytest.raises(ConfigError) as exc:
        load_config(tmp_path)
    message = str(exc.value)
    assert str(path) in message
    assert f"{key}:" in message
    assert expected in message


def test_several_problems_are_all_reported(tmp_path):
    data = copy.deepcopy(VALID)
    data["sources"]["crm"]["chanel"] = "crm"
    data["timezone"] = "Nowhere/Town"
    write_config(tmp_path, data)
    with pytest.raises(ConfigError, match="2 problem") as exc:
        load_config(tmp_path)
    assert "sources.crm.chanel" in str(exc.value) and "timezone" in str(exc.value)


def test_invalid_yaml_names_file_and_line(tmp_path):
    path = write_config(tmp_path, "version: 1\nsources:\n  crm: {channel: crm, kind: [profile\n")
    with pytest.raises(ConfigError) as exc:
        load_config(tmp_path)
    message = str(exc.value)
    assert str(path) in message and "not valid YAML" in message and "line" in message


@pytest.mark.parametrize("text", ["", "- just\n- a list\n"])
def test_yaml_that_is_not_a_mapping_is_rejected(tmp_path, text):
    path = write_config(tmp_path, text)
    with pytest.raises(ConfigError, match="expected a mapping") as exc:
        load_config(tmp_path)
    assert str(path) in str(exc.value)


def test_missing_persona_yaml_names_file_and_what_to_do(tmp_path):
    with pytest.raises(ConfigError) as exc:
        load_config(tmp_path)
    message = str(exc.value)
    assert str(tmp_path / CONFIG_NAME) in message
    assert "persona init" in message and "persona generate" in message
