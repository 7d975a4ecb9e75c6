"""Tests for features.integration.standardise: good and bad values side by side."""

from __future__ import annotations

import hashlib
import random
import re

import numpy as np
import pandas as pd
import phonenumbers
import pytest

from features.integration import standardise as std
from features.integration.standardise import (
    map_codes,
    normalise_emails,
    normalise_ids,
    normalise_phones,
    parse_bools,
    parse_numbers,
    parse_timestamps,
    phone_reachable,
    salted_hash,
    sha256_hex,
)

NA = None  # expected-missing marker in the tables below


def as_list(series: pd.Series) -> list:
    """Series -> list with every missing value as None."""
    return [None if pd.isna(v) else v for v in series.tolist()]


def assert_string(series: pd.Series) -> None:
    assert isinstance(series.dtype, pd.StringDtype)


# ---------------------------------------------------------------- phones

CN = "+8613812345678"
PHONES_GOOD = [
    ("13812345678", CN),
    ("+86 138 1234 5678", CN),
    ("+86-138-1234-5678", CN),
    ("0086 13812345678", CN),
    ("86-13812345678", CN),
    ("(+86)138 1234 5678", CN),
    ("013812345678", CN),
    ("138-1234-5678", CN),
    (" 138 1234 5678 ", CN),
    ("13812345678.0", CN),
    ("+86 10 1234 5678", "+861012345678"),  # Beijing fixed line
    ("010-1234 5678", "+861012345678"),
    ("+1 650 253 0000", "+16502530000"),
    ("+44 20 7946 0958", "+442079460958"),
]
PHONES_BAD = ["12345", "1381234567x", "00000000000", "", "   ", "abc", "138 1234 567八", "+86 138", "0000000",
              "99999999999999", "+44 0000000000"]
# Could exist (a possible length for the country) but outside every assigned range: linked, flagged not reachable.
PHONES_UNASSIGNED = [
    ("23812345678", "+8623812345678"),
    ("1381234567", "+861381234567"),  # a mobile missing a digit is still a possible CN length
    ("+1 555 010 0000", "+15550100000"),
]


@pytest.mark.parametrize(("raw", "expected"), PHONES_GOOD)
def test_phones_good(raw: str, expected: str) -> None:
    assert as_list(normalise_phones(pd.Series([raw]))) == [expected]


@pytest.mark.parametrize("raw", PHONES_BAD)
def test_phones_bad(raw: str) -> None:
    assert as_list(normalise_phones(pd.Series([raw]))) == [NA]
    assert as_list(phone_reachable(pd.Series([raw]))) == [NA]


@pytest.mark.parametrize(("raw", "expected"), PHONES_UNASSIGNED)
def test_phones_possible_but_unassigned_are_kept_and_not_reachable(raw: str, expected: str) -> None:
    assert as_list(normalise_phones(pd.Series([raw]))) == [expected]
    assert as_list(phone_reachable(pd.Series([raw]))) == [False]
    assert as_list(phone_reachable(pd.Series([expected]))) == [False]  # the E.164 spelling says the same


def test_phone_reachable_values_index_and_dtype() -> None:
    raw = pd.Series(["13812345678", "23812345678", "12345", None, "+44 20 7946 0958", "13812345678"],
                    index=[5, 4, 3, 2, 1, 0], name="mobile")
    out = phone_reachable(raw)
    assert as_list(out) == [True, False, NA, NA, True, True]
    assert out.dtype == "boolean" and out.index.equals(raw.index) and out.name == "mobile"
    assert phone_reachable(pd.Series([], dtype="string")).dtype == "boolean"


def test_phones_missing_and_numeric_inputs() -> None:
    assert as_list(normalise_phones(pd.Series([None, np.nan, pd.NA], dtype=object))) == [NA, NA, NA]
    assert as_list(normalise_phones(pd.Series([13812345678.0, np.nan]))) == [CN, NA]
    assert as_list(normalise_phones(pd.Series([13812345678, 12345]))) == [CN, NA]
    mixed = pd.Series([13812345678, "13812345678", 13812345678.0, None], dtype=object)
    assert as_list(normalise_phones(mixed)) == [CN, CN, CN, NA]


def test_phones_letters_never_accepted() -> None:
    # phonenumbers alone would read vanity letters or drop an "ext"; we refuse both.
    out = normalise_phones(pd.Series(["1381234567x", "138 1234 5678 ext 12", "tel 13812345678", "+1 800 FLOWERS"]))
    assert as_list(out) == [NA, NA, NA, NA]


def test_phones_other_region_and_unknown_region() -> None:
    assert as_list(normalise_phones(pd.Series(["(650) 253-0000", "+86 138 1234 5678"]), region="US")) == [
        "+16502530000",
        CN,
    ]
    # A CN mobile read as a German number has a possible German length but no German range: kept, not reachable.
    de = pd.Series(["030 1234567", "13812345678", "12"])
    assert as_list(normalise_phones(de, region="de")) == ["+49301234567", "+4913812345678", NA]
    assert as_list(phone_reachable(de, region="de")) == [True, False, NA]
    with pytest.raises(ValueError):
        normalise_phones(pd.Series(["13812345678"]), region="XX")


def _reference_phone(value: object, region: str) -> tuple[str | None, bool | None]:
    """The library, one value at a time, with the module's documented rules: (E.164 when the number is possible,
    whether it is valid). Letters are refused, spreadsheet floats read; possible means IS_POSSIBLE (a local-only
    length is not) with a national number other than zero."""
    if value is None:
        return None, None
    text = str(value).strip()
    if re.search(r"[^\W\d_]", text):  # letters refused
        return None, None
    text = re.sub(r"^([+-]?[0-9]+)\.0+$", r"\1", text)  # spreadsheet float
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None, None
    if (number.national_number == 0
            or phonenumbers.is_possible_number_with_reason(number) != phonenumbers.ValidationResult.IS_POSSIBLE):
        return None, None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164), phonenumbers.is_valid_number(number)


def _phone_mix(rng: random.Random, n: int) -> list[str]:
    prefixes = ["", "", "", "+86", "+86 ", "0086", "86", "86-", "(+86)", "0", "+860", "8686", "17951",
                "1795100", "+1 ", "+44 ", "001", "+", "00", "11", "0086 0", "8600", "860", "4900", "+490"]
    seps = ["", " ", "-", ".", "/", "  "]

    def digits(k: int) -> str:
        return "".join(rng.choice("0123456789") for _ in range(k))

    out = []
    for _ in range(n):
        r = rng.random()
        if r < 0.5:  # mobiles
            body = "1" + rng.choice("3456789") + digits(9)
        elif r < 0.7:  # fixed lines and service numbers
            body = rng.choice(["10", "20", "21", "755", "400", "800", "95", "2", "5", "6"]) + digits(rng.randint(5, 9))
        else:  # anything
            body = digits(rng.randint(0, 15))
        s = rng.choice(prefixes) + body
        if len(s) > 1 and rng.random() < 0.4:
            sep = rng.choice(seps)
            cuts = sorted(rng.sample(range(len(s) + 1), 2))
            s = s[: cuts[0]] + sep + s[cuts[0] : cuts[1]] + sep + s[cuts[1] :]
        if rng.random() < 0.05:
            s += ".0"
        if rng.random() < 0.05:
            s = f" {s} "
        out.append(s)
    return out


@pytest.mark.parametrize("region", ["CN", "DE"])
def test_phones_fast_path_matches_phonenumbers(region: str) -> None:
    rng = random.Random(20250101)
    distinct = list(dict.fromkeys(_phone_mix(rng, 2500)))
    raw = [rng.choice(distinct) for _ in range(10_000)]
    series = pd.Series(raw, index=pd.RangeIndex(10_000, 0, -1), name="phone")
    out = normalise_phones(series, region=region)
    reachable = phone_reachable(series, region=region)
    reference = {v: _reference_phone(v, region) for v in distinct}
    assert as_list(out) == [reference[v][0] for v in raw]
    assert as_list(reachable) == [reference[v][1] for v in raw]
    assert out.index.equals(series.index) and reachable.index.equals(series.index)
    n_possible = sum(e is not None for e, _ in reference.values())
    n_valid = sum(bool(v) for _, v in reference.values())
    assert 0.2 * len(distinct) < n_valid < n_possible < 0.9 * len(distinct)  # valid, unassigned and impossible


def test_phones_fast_path_skips_phonenumbers_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real_parse = phonenumbers.parse

    def counting_parse(number: str, region: str | None = None, *args: object, **kwargs: object):
        calls.append(number)
        return real_parse(number, region, *args, **kwargs)

    monkeypatch.setattr(std.phonenumbers, "parse", counting_parse)
    plain = pd.Series(["13812345678", "+86 139 1234 5678", "0086 15012345678", "12345", "23812345678",
                       "+1 650 253 0000"])
    out = normalise_phones(plain)
    assert as_list(out) == [CN, "+8613912345678", "+8615012345678", NA, "+8623812345678", "+16502530000"]
    assert as_list(phone_reachable(plain)) == [True, True, True, NA, False, True]
    assert calls == ["+1 650 253 0000"] * 2  # only the foreign number needed the library (once per call)


# ---------------------------------------------------------------- e-mails

EMAILS_GOOD = [
    (" Alice.Smith@Example.COM ", "alice.smith@example.com"),
    ("bob+tag@mail.example.cn", "bob+tag@mail.example.cn"),
    ("GROß@Example.de", "gross@example.de"),
    ("\u3000x@y.io\t", "x@y.io"),
]
EMAILS_BAD = ["a b@c.com", "no-at.example.com", "a@b", "a@b.", "a@b.c.", "@b.com", "a@@b.com", "a@b .com", "", "  "]


@pytest.mark.parametrize(("raw", "expected"), EMAILS_GOOD)
def test_emails_good(raw: str, expected: str) -> None:
    assert as_list(normalise_emails(pd.Series([raw]))) == [expected]


@pytest.mark.parametrize("raw", EMAILS_BAD)
def test_emails_bad(raw: str) -> None:
    assert as_list(normalise_emails(pd.Series([raw]))) == [NA]


# ---------------------------------------------------------------- ids


def test_ids() -> None:
    raw = pd.Series([" ABC-123 ", "123.0", 123.0, 42, "AbC", "1.5", "007", "-5.00", "nan", "NULL", " None ", "", None, np.nan],
                    dtype=object)
    expected = ["ABC-123", "123", "123", "42", "AbC", "1.5", "007", "-5", NA, NA, NA, NA, NA, NA]
    assert as_list(normalise_ids(raw)) == expected
    assert as_list(normalise_ids(pd.Series([1.0, 2.5, np.nan]))) == ["1", "2.5", NA]
    assert as_list(normalise_ids(pd.Series(["x", None, " y "], dtype="string[pyarrow]"))) == ["x", NA, "y"]


# ---------------------------------------------------------------- timestamps


def utc(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


def test_timestamps_iso_mixed_offsets_and_naive() -> None:
    raw = pd.Series([
        "2025-01-02T03:04:05Z",
        "2025-01-02T11:04:05+08:00",
        "2025-01-01T22:04:05-05:00",
        "20250102T110405+0800",
        "2025-01-02 11:04:05",  # naive: Asia/Shanghai wall time
        "2025-01-02T11:04:05.250",
        "2025-01-02",
        " 2025-01-02T03:04:05z ",
        "2025-13-45 99:00:00",
        "abc",
        "",
        None,
    ])
    out = parse_timestamps(raw, "iso", "Asia/Shanghai")
    assert str(out.dtype) == "datetime64[ns, UTC]"
    t = utc("2025-01-02 03:04:05")
    assert as_list(out) == [t, t, t, t, t, t + pd.Timedelta("250ms"), utc("2025-01-01 16:00"), t, NA, NA, NA, NA]


def test_timestamps_epochs() -> None:
    t = utc("2025-01-02 03:04:05")
    secs = int(t.timestamp())
    raw_s = pd.Series([secs, str(secs), f" {secs}.5 ", "x", None, "1e30"], dtype=object)
    out = parse_timestamps(raw_s, "epoch_s", "Asia/Shanghai")
    assert str(out.dtype) == "datetime64[ns, UTC]"
    assert as_list(out) == [t, t, t + pd.Timedelta("500ms"), NA, NA, NA]
    out_ms = parse_timestamps(pd.Series([secs * 1000 + 7, np.nan, 1e30]), "epoch_ms", "UTC")
    assert as_list(out_ms) == [t + pd.Timedelta("7ms"), NA, NA]


def test_timestamps_date_and_strftime() -> None:
    out = parse_timestamps(pd.Series(["2025-01-02", "2025/01/02", "2025-02-30", ""]), "date", "Asia/Shanghai")
    assert as_list(out) == [utc("2025-01-01 16:00"), NA, NA, NA]
    out = parse_timestamps(pd.Series(["02/01/2025 11:04", "31/02/2025 11:04", "x"]), "%d/%m/%Y %H:%M", "Asia/Shanghai")
    assert as_list(out) == [utc("2025-01-02 03:04"), NA, NA]
    out = parse_timestamps(pd.Series(["02/01/2025 11:04 +0800", "02/01/2025 03:04 +0000"]), "%d/%m/%Y %H:%M %z", "UTC")
    assert as_list(out) == [utc("2025-01-02 03:04")] * 2


def test_timestamps_dst_edges_do_not_raise() -> None:
    raw = pd.Series(["2025-03-30 02:30:00", "2025-10-26 02:30:00"])  # Berlin: gap, then fold
    out = parse_timestamps(raw, "iso", "Europe/Berlin")
    assert as_list(out) == [utc("2025-03-30 01:00"), utc("2025-10-26 01:30")]


def test_timestamps_datetime_inputs_and_bad_format() -> None:
    naive = pd.Series(pd.to_datetime(["2025-01-02 11:04:05", None]))
    assert as_list(parse_timestamps(naive, "iso", "Asia/Shanghai")) == [utc("2025-01-02 03:04:05"), NA]
    aware = naive.dt.tz_localize("Asia/Shanghai")
    assert as_list(parse_timestamps(aware, "iso", "UTC")) == [utc("2025-01-02 03:04:05"), NA]
    with pytest.raises(ValueError):
        parse_timestamps(naive, "nonsense", "UTC")


# ---------------------------------------------------------------- numbers

NUMBERS_GOOD = [(12, 12.0), (12.5, 12.5), (" 12.5 ", 12.5), ("¥1,299.00", 1299.0), ("￥12", 12.0), ("1,299", 1299.0),
                ("-3.5", -3.5), ("RMB 10", 10.0), ("-¥12", -12.0), (".5", 0.5), ("1,234,567.5", 1234567.5)]
NUMBERS_BAD = ["N/A", "12..3", "abc", "1,29", "12,3456", "", "¥", "+-3", None]


@pytest.mark.parametrize(("raw", "expected"), NUMBERS_GOOD)
def test_numbers_good(raw: object, expected: float) -> None:
    assert parse_numbers(pd.Series([raw], dtype=object)).tolist() == [expected]


@pytest.mark.parametrize("raw", NUMBERS_BAD)
def test_numbers_bad(raw: object) -> None:
    out = parse_numbers(pd.Series([raw], dtype=object))
    assert out.dtype == np.float64
    assert np.isnan(out.iloc[0])


def test_numbers_numeric_dtypes() -> None:
    assert parse_numbers(pd.Series([1, 2])).tolist() == [1.0, 2.0]
    out = parse_numbers(pd.Series([1, None], dtype="Int64"))
    assert out.dtype == np.float64 and out.iloc[0] == 1.0 and np.isnan(out.iloc[1])


# ---------------------------------------------------------------- booleans


def test_bools() -> None:
    raw = pd.Series(["y", " YES ", "True", "t", "1", 1, 1.0, True, "是",
                     "n", "No", "FALSE", "f", "0", 0, False, "否",
                     "maybe", "", "2", None], dtype=object)
    out = parse_bools(raw)
    assert out.dtype == "boolean"
    assert as_list(out) == [True] * 9 + [False] * 8 + [NA] * 4


# ---------------------------------------------------------------- codes

GENDER = {"M": "male", " f ": "female", "Unknown": None, "男": "male", "女": "female"}


def test_map_codes() -> None:
    raw = pd.Series([" m", "F", "unknown", "男", "X", "x ", "", "  ", None, "X"])
    out, unmapped = map_codes(raw, GENDER)
    assert_string(out)
    assert as_list(out) == ["male", "female", NA, "male", "x", "x", NA, NA, NA, "x"]
    assert unmapped == 3  # "X", "x ", "X": rows, not distinct values


def test_map_codes_colliding_keys() -> None:
    with pytest.raises(ValueError):
        map_codes(pd.Series(["m"]), {"M": "male", " m": "female"})
    out, unmapped = map_codes(pd.Series(["m"]), {"M": "male", "m": "male"})  # same target: fine
    assert as_list(out) == ["male"] and unmapped == 0


# ---------------------------------------------------------------- hashes


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def test_hashes() -> None:
    raw = pd.Series(["abc", None, "abc", "客户", 123.0])
    assert as_list(salted_hash(raw, "pepper")) == [sha("pepper|abc"), NA, sha("pepper|abc"), sha("pepper|客户"), sha("pepper|123")]
    assert as_list(sha256_hex(raw)) == [sha("abc"), NA, sha("abc"), sha("客户"), sha("123")]
    assert sha256_hex(pd.Series(["abc"])).iloc[0] == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    with pytest.raises(ValueError):
        salted_hash(raw, "")


# ---------------------------------------------------------------- common contract

CASES = [
    (lambda s: normalise_phones(s), ["13812345678", None, "x"], "string"),
    (normalise_emails, ["A@B.co", None, "x"], "string"),
    (normalise_ids, ["A1", None, ""], "string"),
    (lambda s: parse_timestamps(s, "iso", "Asia/Shanghai"), ["2025-01-02T03:04:05Z", None, "x"], "datetime64[ns, UTC]"),
    (parse_numbers, ["1", None, "x"], "float64"),
    (parse_bools, ["y", None, "x"], "boolean"),
    (lambda s: map_codes(s, GENDER)[0], ["M", None, "x"], "string"),
    (lambda s: salted_hash(s, "pepper"), ["a", None, "b"], "string"),
    (sha256_hex, ["a", None, "b"], "string"),
]


@pytest.mark.parametrize(("func", "data", "dtype"), CASES)
@pytest.mark.parametrize("input_dtype", [object, "string[pyarrow]"])
def test_index_name_dtype_preserved_and_input_untouched(func, data: list, dtype: str, input_dtype: object) -> None:
    series = pd.Series(data, index=["k", "a", "z"], name="col", dtype=input_dtype)
    before = series.copy()
    out = func(series)
    pd.testing.assert_series_equal(series, before)
    assert out is not series
    assert out.index.equals(series.index) and out.name == "col"
    assert str(out.dtype) == dtype or (dtype == "string" and isinstance(out.dtype, pd.StringDtype))
    assert pd.isna(out.iloc[1])
    empty = func(series.iloc[:0])
    assert len(empty) == 0 and (str(empty.dtype) == dtype or isinstance(empty.dtype, pd.StringDtype))
