"""OneID resolution: linking, over-merge guards, stable ids across re-runs, audit log, pairwise scoring."""

import pandas as pd
import pytest

from features.integration.oneid import pairwise_scores, resolve
from persona.config import IdentityConfig


def config(max_component_size: int = 50, **overrides) -> IdentityConfig:
    identifiers = {
        "member_id": {"account": True},
        "account_id": {"account": True},
        "phone": {"normalise": "phone", "max_accounts": 2},
        "email": {"normalise": "email", "max_accounts": 2},
        "device_id": {"max_accounts": 1},
    }
    identifiers.update(overrides)
    return IdentityConfig.model_validate({"max_component_size": max_component_size, "identifiers": identifiers})


def mentions(*rows: tuple) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["mention_key", "id_type", "value"]).astype({"mention_key": "uint64"})


def persona_of(res, id_type: str, value: str):
    row = res.nodes[(res.nodes["id_type"] == id_type) & (res.nodes["value"] == value)]
    return row["persona_id"].iloc[0]


def test_records_sharing_an_identifier_become_one_persona():
    m = mentions((1, "member_id", "M1"), (1, "phone", "+8613800138001"),
                 (2, "account_id", "A1"), (2, "phone", "+8613800138001"),
                 (3, "account_id", "A9"), (3, "email", "other@x.com"))
    res = resolve(m, config(), blocked={})
    assert persona_of(res, "member_id", "M1") == persona_of(res, "account_id", "A1")
    assert persona_of(res, "account_id", "A9") != persona_of(res, "member_id", "M1")
    assert res.stats["personas"] == 2
    assert set(res.mention_persona["mention_key"]) == {1, 2, 3}


def test_blocked_value_links_nothing():
    m = mentions((1, "member_id", "M1"), (1, "phone", "+8613800000000"),
                 (2, "member_id", "M2"), (2, "phone", "+8613800000000"))
    res = resolve(m, config(), blocked={"phone": {"+8613800000000"}})
    assert persona_of(res, "member_id", "M1") != persona_of(res, "member_id", "M2")
    blocked = res.nodes[res.nodes["value"] == "+8613800000000"]
    assert blocked["status"].iloc[0] == "blocked" and blocked["persona_id"].isna().all()


def test_value_seen_with_more_than_k_accounts_is_shared():
    # Device D1 is used by two different shop accounts (a family): with max_accounts 1 it must not merge them.
    m = mentions((1, "device_id", "D1"), (1, "account_id", "A1"),
                 (2, "device_id", "D1"), (2, "account_id", "A2"),
                 (3, "device_id", "D2"), (3, "account_id", "A3"))
    res = resolve(m, config(), blocked={})
    assert persona_of(res, "account_id", "A1") != persona_of(res, "account_id", "A2")
    assert res.nodes.set_index("value").loc["D1", "status"] == "shared"
    assert persona_of(res, "device_id", "D2") == persona_of(res, "account_id", "A3")  # one account: still links
    assert res.stats["shared_values"] == {"device_id": 1}


def test_phone_within_limit_still_links_two_memberships_of_one_person():
    m = mentions((1, "member_id", "M1"), (1, "phone", "+8613800138001"),
                 (2, "member_id", "M2"), (2, "phone", "+8613800138001"))
    res = resolve(m, config(), blocked={})
    assert persona_of(res, "member_id", "M1") == persona_of(res, "member_id", "M2")


def test_oversized_component_is_reported_and_split_by_priority():
    # Five accounts chained only through emails: with a limit of 4 identifiers, emails stop linking.
    rows = []
    for i in range(5):
        rows += [(i, "account_id", f"A{i}"), (i, "email", f"e{i}@x.com"), (i, "email", f"e{i + 1}@x.com")]
    res = resolve(mentions(*rows), config(max_component_size=4, email={"normalise": "email"}), blocked={})
    assert res.stats["oversized_components"][0]["size"] == 11
    assert res.stats["oversized_components"][0]["by_type"] == {"account_id": 5, "email": 6}
    assert res.nodes.loc[res.nodes["id_type"] == "account_id", "persona_id"].nunique() == 5
    assert (res.nodes.loc[res.nodes["id_type"] == "email", "status"] == "split").all()


def test_rerun_on_same_data_changes_nothing():
    m = mentions((1, "member_id", "M1"), (1, "phone", "+8613800138001"), (2, "account_id", "A2"))
    first = resolve(m, config(), blocked={})
    again = resolve(m, config(), blocked={}, previous=first.nodes, previous_aliases=first.aliases,
                    next_seq=first.next_seq)
    pd.testing.assert_frame_equal(first.nodes, again.nodes)
    assert again.next_seq == first.next_seq
    assert again.audit.empty


def test_new_data_keeps_ids_and_logs_merge_with_bridging_identifier():
    m = mentions((1, "member_id", "M1"), (1, "phone", "+8613800138001"),
                 (2, "account_id", "A2"), (2, "email", "b@x.com"),
                 (3, "account_id", "A3"))
    first = resolve(m, config(), blocked={})
    p1, p2, p3 = (persona_of(first, t, v) for t, v in [("member_id", "M1"), ("account_id", "A2"), ("account_id", "A3")])
    more = pd.concat([m, mentions((9, "account_id", "A2"), (9, "phone", "+8613800138001"),
                                  (10, "account_id", "A4"))])
    second = resolve(more, config(), blocked={}, previous=first.nodes, next_seq=first.next_seq)
    survivor = min(p1, p2)
    assert persona_of(second, "member_id", "M1") == survivor == persona_of(second, "account_id", "A2")
    assert persona_of(second, "account_id", "A3") == p3  # untouched persona keeps its id
    new = persona_of(second, "account_id", "A4")
    assert new not in {p1, p2, p3} and new > max(p1, p2, p3)
    merge = second.audit[second.audit["event"] == "merge"].iloc[0]
    assert (merge["persona_id"], merge["other_persona_id"]) == (survivor, max(p1, p2))
    assert merge["id_type"] in {"phone", "account_id"}
    assert second.aliases.set_index("persona_id").loc[max(p1, p2), "alias_of"] == survivor


def test_split_keeps_id_on_largest_part_and_logs_it():
    m = mentions((1, "member_id", "M1"), (1, "phone", "+8613800138001"), (1, "email", "a@x.com"),
                 (2, "member_id", "M2"), (2, "phone", "+8613800138001"))
    first = resolve(m, config(), blocked={})
    pid = persona_of(first, "member_id", "M1")
    assert persona_of(first, "member_id", "M2") == pid
    # The phone turns out to be a placeholder: blocking it splits the persona.
    second = resolve(m, config(), blocked={"phone": {"+8613800138001"}}, previous=first.nodes,
                     next_seq=first.next_seq)
    assert persona_of(second, "member_id", "M1") == pid  # M1 + email: the larger part
    assert persona_of(second, "member_id", "M2") != pid
    split = second.audit[second.audit["event"] == "split"]
    assert split["persona_id"].tolist() == [pid]


def test_device_reclassified_as_shared_dissolves_its_persona_with_a_retirement_record():
    # Run 1: D1 is an anonymous device (its own persona); A1 logs in on D2. Run 2: D1 is seen logged into two
    # accounts, so (max_accounts 1) it is shared and links nothing: its persona is left with no identifier.
    m = mentions((1, "device_id", "D1"), (2, "account_id", "A1"), (2, "device_id", "D2"))
    first = resolve(m, config(), blocked={})
    gone, kept = persona_of(first, "device_id", "D1"), persona_of(first, "account_id", "A1")
    more = pd.concat([m, mentions((3, "device_id", "D1"), (3, "account_id", "A7"),
                                  (4, "device_id", "D1"), (4, "account_id", "A8"))])
    second = resolve(more, config(), blocked={}, previous=first.nodes, previous_aliases=first.aliases,
                     next_seq=first.next_seq)
    assert pd.isna(persona_of(second, "device_id", "D1")) and persona_of(second, "account_id", "A1") == kept
    assert gone not in set(second.nodes["persona_id"].dropna())
    events = second.audit.set_index("event")
    assert set(events.index) == {"unlink", "dissolve"}
    for event in ("unlink", "dissolve"):
        assert (events.loc[event, "persona_id"], events.loc[event, "reason"]) == (gone, "shared")
        assert (events.loc[event, "id_type"], events.loc[event, "value"]) == ("device_id", "D1")
    record = second.aliases.set_index("persona_id").loc[gone]
    assert pd.isna(record["alias_of"]) and record["reason"] == "dissolved: its device_id became shared"
    assert second.stats["dissolved"] == 1 and second.stats["unlinked"] == 1
    # The retired id is never handed out again, and a re-run keeps the record without logging it twice.
    assert gone not in {persona_of(second, "account_id", a) for a in ("A7", "A8")}
    again = resolve(more, config(), blocked={}, previous=second.nodes, previous_aliases=second.aliases,
                    next_seq=second.next_seq)
    assert again.audit.empty
    pd.testing.assert_frame_equal(again.aliases, second.aliases)


def test_device_turned_shared_splits_a_persona_and_the_audit_names_it():
    # D1 (max_accounts 2) joined A1 and A2 into one persona; a third account makes it shared and the persona splits.
    cfg = config(device_id={"max_accounts": 2})
    m = mentions((1, "device_id", "D1"), (1, "account_id", "A1"), (2, "device_id", "D1"), (2, "account_id", "A2"))
    first = resolve(m, cfg, blocked={})
    pid = persona_of(first, "account_id", "A1")
    assert persona_of(first, "account_id", "A2") == pid
    second = resolve(pd.concat([m, mentions((3, "device_id", "D1"), (3, "account_id", "A3"))]), cfg, blocked={},
                     previous=first.nodes, next_seq=first.next_seq)
    parts = {persona_of(second, "account_id", a) for a in ("A1", "A2")}
    assert pid in parts and len(parts) == 2  # one part keeps the id: nothing dissolved, nothing retired
    unlink = second.audit[second.audit["event"] == "unlink"]
    assert unlink[["persona_id", "reason", "id_type", "value"]].values.tolist() == [[pid, "shared", "device_id",
                                                                                    "D1"]]
    split = second.audit[second.audit["event"] == "split"]
    assert split[["persona_id", "other_persona_id"]].values.tolist() == [[pid, (parts - {pid}).pop()]]
    assert second.aliases.empty


def test_id_absorbed_into_a_persona_that_later_dissolves_is_retired_too():
    # Run 1: D1 and D2 are two anonymous devices; run 2: one mention carries both (merge, alias);
    # run 3: the device joining them is blocked, then the survivor (D1 only) is left with nothing.
    m = mentions((1, "device_id", "D1"), (2, "device_id", "D2"))
    first = resolve(m, config(), blocked={})
    p1, p2 = persona_of(first, "device_id", "D1"), persona_of(first, "device_id", "D2")
    joined = pd.concat([m, mentions((3, "device_id", "D1"), (3, "device_id", "D2"))])
    second = resolve(joined, config(), blocked={}, previous=first.nodes, previous_aliases=first.aliases,
                     next_seq=first.next_seq)
    assert second.aliases.values.tolist() == [[max(p1, p2), min(p1, p2), "merged"]]
    third = resolve(joined, config(), blocked={"device_id": {"D1", "D2"}}, previous=second.nodes,
                    previous_aliases=second.aliases, next_seq=second.next_seq)
    records = third.aliases.set_index("persona_id")
    assert records["alias_of"].isna().all() and set(records.index) == {p1, p2}
    assert set(records["reason"]) == {"dissolved: its device_id became blocked"}


@pytest.mark.parametrize("truth,pred,precision,recall", [
    ([1, 1, 2, 2], ["a", "a", "b", "b"], 1.0, 1.0),
    ([1, 1, 2, 2], ["a", "a", "a", "a"], 2 / 6, 1.0),
    ([1, 1, 1, 2], ["a", "a", "b", None], 1.0, 1 / 3),
])
def test_pairwise_scores(truth, pred, precision, recall):
    s = pairwise_scores(pd.Series(truth), pd.Series(pred, dtype="object"))
    assert s["precision"] == pytest.approx(precision)
    assert s["recall"] == pytest.approx(recall)
