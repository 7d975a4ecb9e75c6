"""The mess real exports have, injected row by row: phone and e-mail spellings, typos, city variants, duplicates.

Each helper turns the world's clean values into what a source really holds, at the rates the source asks for and
from the source's own rng stream, so the mess is as reproducible as the data. ``at_least_one`` makes sure a rare
corruption still shows up in a small demo.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features.generate.files import Rows
from features.generate.people import World
from features.generate.strings import concat, from_matrix, null_where, take, to_matrix
from features.generate.vocabulary import CITIES, CITY_VARIANT_P, PHONE_FMT, city_variants


def phone_codes(rng: np.random.Generator, n: int, source: str, invalid: np.ndarray | None = None) -> np.ndarray:
    """Per-row phone spelling; rows in ``invalid`` get one of the two broken spellings."""
    codes = rng.choice(10, n, p=PHONE_FMT[source] / PHONE_FMT[source].sum())
    if invalid is not None:
        codes = np.where(invalid, 10 + rng.integers(0, 2, n), codes)
    return codes


def city_text(rng: np.random.Generator, city: np.ndarray) -> pa.Array:
    """Per-row city spelling: Chinese, with 市, English, slug with a trailing space, abbreviation (CITY_VARIANT_P)."""
    vocab = [v for c in CITIES for v in city_variants(c)]
    return take(vocab, city * 5 + rng.choice(5, city.size, p=CITY_VARIANT_P))


def email_text(rng: np.random.Generator, W: World, p: np.ndarray, show: np.ndarray, typo_ok: np.ndarray,
               typo_rate: float) -> tuple[pa.Array, np.ndarray]:
    """Per-row e-mail spelling (case / whitespace variants, rare typos where ``typo_ok``); null where not ``show``."""
    n = p.size
    ia = pa.array(p.astype(np.int64))
    local = W.email_local.take(ia)
    dom = W.email_dom.take(ia)
    case = rng.choice(4, n, p=[.86, .06, .05, .03])
    local_c = pc.choose(pa.array(case.astype(np.int8)), local, pc.utf8_title(local), pc.utf8_capitalize(local),
                        pc.utf8_upper(local))
    dom_c = pc.if_else(pa.array((case == 1) | (case == 3)), pc.utf8_upper(dom), dom)
    email = concat(local_c, "@", dom_c, ".", pc.if_else(pa.array(case == 3), pa.scalar("COM"), pa.scalar("com")))
    typo = show & typo_ok & (rng.random(n) < typo_rate)
    if typo.any():
        ti = np.nonzero(typo)[0]
        sub = email.take(pa.array(ti))
        mat, lens = to_matrix(sub)
        llen = pc.utf8_length(local.take(pa.array(ti))).to_numpy().astype(np.int64)
        kind = rng.integers(0, 3, ti.size)
        pos = (rng.random(ti.size) * (llen - 1)).astype(np.int64)
        width = mat.shape[1]
        cols = np.broadcast_to(np.arange(width), mat.shape)
        src = np.where((kind == 0)[:, None] & (cols >= pos[:, None]), cols + 1, cols)          # drop a letter
        swap = kind == 1                                                                       # swap two letters
        src = np.where(swap[:, None] & (cols == pos[:, None]), cols + 1, src)
        src = np.where(swap[:, None] & (cols == pos[:, None] + 1), cols - 1, src)
        mat2 = np.take_along_axis(mat, np.minimum(src, width - 1), axis=1)
        lens2 = lens - (kind == 0)
        mat2 = np.where(np.arange(width) < lens2[:, None], mat2, 0).astype(np.uint8)
        fixed = from_matrix(mat2, lens2)
        d = pc.replace_substring(sub, "gmail.", "gmial.")                                      # domain typos
        d = pc.replace_substring(d, "hotmail.", "hotmial.")
        d = pc.if_else(pc.equal(d, sub), pc.replace_substring_regex(sub, r"(?i)\.com$", ".con"), d)
        fixed = pc.if_else(pa.array(kind == 2), d, fixed)
        pos_all = np.full(n, -1, np.int64)
        pos_all[ti] = np.arange(ti.size)
        email = pc.if_else(pa.array(typo), fixed.take(pa.array(np.maximum(pos_all, 0))), email)
    ws = rng.random(n)
    email = pc.if_else(pa.array(ws < 0.02), concat(" ", email, " "),
                       pc.if_else(pa.array(ws < 0.04), concat(email, " "), email))
    return null_where(email, ~show), typo


def at_least_one(rng: np.random.Generator, mask: np.ndarray, force: bool) -> np.ndarray:
    """``mask`` with one row set when ``force`` and it has none."""
    if force and mask.size and not mask.any():
        mask = mask.copy()
        mask[rng.integers(0, mask.size)] = True
    return mask


def duplicate_rows(rng: np.random.Generator, rows: Rows, rate: float, jitter: int) -> Rows:
    """Append exact copies of about ``rate`` of the rows, placed a little later in the file."""
    dup = np.nonzero(rng.random(len(rows.pid)) < rate)[0]
    if dup.size == 0:
        return rows
    copy = rows.take(dup)
    copy.key = copy.key + rng.integers(1, jitter, dup.size)
    return Rows.concat([rows, copy])
