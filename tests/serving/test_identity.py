"""Identifier lookup: a raw phone or e-mail in any common format, a salted hash, or a retired persona id, to the
current persona."""

import pandas as pd
import pytest
import yaml

from features.integration import standardise as std
from persona.workspace import SECRETS_FILE, Workspace, publishing, write_parquet_atomic
from serving.identity import IdentityIndex, UnknownIdentifierType

CONFIG = {
    "version": 1,
    "sources": {"crm": {"channel": "crm", "kind": "profile", "path": "raw/crm.csv",
                        "identifiers": {"member_id": "member_id", "phone": "mobile", "email": "email"}}},
    "identity": {"identifiers": {"member_id": {"account": True}, "phone": {"normalise": "phone"},
                                 "email": {"normalise": "email"}}},
}
SALT = "identity-test-salt"


def _hash(values, salt=SALT) -> list[str]:
    return list(std.salted_hash(pd.Series(values, dtype="string"), salt))


@pytest.fixture
def ws(tmp_path) -> Workspace:
    """Two live personas (P1, P2); P0 was merged into P1 and P9 into P0 (a chain); the salt in secrets.env."""
    (tmp_path / "persona.yaml").write_text(yaml.safe_dump(CONFIG), encoding="utf-8")
    (tmp_path / SECRETS_FILE).write_text(f"PERSONA_SALT={SALT}\n", encoding="utf-8")
    ws = Workspace.open(tmp_path)
    phone1, phone2 = _hash(["+8613812345678", "+8613900001111"])
    email1, = _hash(["ann@example.com"])
    member2, = _hash(["M-002"])
    with publishing(ws, "integrated", "run-1") as out:
        write_parquet_atomic(out / "identity_hashed.parquet", pd.DataFrame({
            "id_type": ["phone", "phone", "email", "member_id", "wechat"],
            "value_hash": [phone1, phone2, email1, member2, phone1],
            "persona_id": ["P1", "P2", "P0", "P2", "P2"],  # email still points at the retired P0
        }))
        write_parquet_atomic(out / "aliases.parquet", pd.DataFrame({"persona_id": ["P0", "P9"],
                                                                    "alias_of": ["P1", "P0"]}))
        write_parquet_atomic(out / "profiles.parquet", pd.DataFrame({"persona_id": ["P1", "P2"]}))
    return ws


@pytest.fixture
def index(ws) -> IdentityIndex:
    return IdentityIndex.load(ws, ws.config())  # no $PERSONA_SALT: the workspace's secrets.env is used


@pytest.mark.parametrize("raw", ["+86 138 1234 5678", "138-1234-5678", "13812345678", " 8613812345678 ",
                                 "+86-138-1234-5678", "13812345678.0"])
def test_a_raw_phone_in_any_format_finds_the_persona_of_its_stored_hash(index, raw):
    hashes = index.hash_values("phone", [raw])
    assert hashes == _hash(["+8613812345678"])
    assert index.lookup("phone", hashes) == ["P1"]


def test_an_invalid_or_unknown_phone_finds_no_one(index):
    hashes = index.hash_values("phone", ["not a phone", "+86 137 0000 0000", ""])
    assert hashes[0] is None and hashes[2] is None and hashes[1] is not None
    assert index.lookup("phone", hashes) == [None, None, None]


def test_a_hashed_value_is_looked_up_as_it_is(index):
    stored, = _hash(["+8613900001111"])
    hashes = index.hash_values("phone", [stored.upper(), "abc", "+8613900001111"], hashed=[True, True, False])
    assert hashes == [stored, None, stored]  # a 'hash' that is not 64 hex digits is not hashed again either
    assert index.lookup("phone", hashes) == ["P2", None, "P2"]


def test_the_same_hash_under_another_type_does_not_match(index):
    phone1, = _hash(["+8613812345678"])
    assert index.lookup("member_id", [phone1]) == [None]
    assert index.lookup("member_id", index.hash_values("member_id", [" M-002 "])) == ["P2"]


def test_a_hash_made_with_another_salt_finds_no_one(index):
    assert index.lookup("phone", _hash(["+8613812345678"], salt="other")) == [None]


def test_emails_are_casefolded_and_trimmed_before_hashing(index):
    hashes = index.hash_values("email", ["  Ann@Example.COM ", "not-an-email"])
    assert hashes[1] is None
    assert index.lookup("email", hashes) == ["P1", None]  # stored under the retired P0, resolved to P1


def test_an_unknown_identifier_type_names_the_known_ones(index):
    with pytest.raises(UnknownIdentifierType, match="'wechat'.*email, member_id, phone"):
        index.hash_values("wechat", ["x"])


def test_retired_ids_resolve_to_the_survivor_and_unknown_ids_to_none(index):
    assert index.resolve_persona("P1") == "P1"
    assert index.resolve_persona("P0") == "P1"
    assert index.resolve_persona("P9") == "P1"  # P9 -> P0 -> P1
    assert index.resolve_persona("P7") is None


def test_a_dissolved_persona_id_resolves_to_nothing_and_says_why(ws):
    with publishing(ws, "integrated", "run-2") as out:
        for name in ("identity_hashed.parquet", "profiles.parquet"):
            (out / name).write_bytes((ws.require_current("integrated", "") / name).read_bytes())
        write_parquet_atomic(out / "aliases.parquet", pd.DataFrame({
            "persona_id": ["P0", "P5", "P6"], "alias_of": ["P1", None, "P5"],
            "reason": ["merge", "dissolve: shared_device", "merge"]}, dtype="string"))
    index = IdentityIndex.load(ws, ws.config())
    assert index.resolve_persona("P5") is None and index.resolve_persona("P6") is None
    assert index.retirement("P5") == "dissolve: shared_device"
    assert index.retirement("P6") == "dissolve: shared_device"  # absorbed into P5, which later dissolved
    assert index.retirement("P0") is None and index.retirement("P1") is None  # live through the alias, and live
    assert index.retirement("P7") is None and index.retirement("P5" * 1000) is None  # never known


def test_without_a_salt_the_index_says_where_to_put_one(ws):
    (ws.root / SECRETS_FILE).unlink()
    with pytest.raises(Exception, match="PERSONA_SALT"):
        IdentityIndex.load(ws, ws.config())


def test_the_environment_salt_wins_over_secrets_env(ws, monkeypatch):
    monkeypatch.setenv("PERSONA_SALT", "other")
    index = IdentityIndex.load(ws, ws.config())
    assert index.lookup("phone", index.hash_values("phone", ["13812345678"])) == [None]
