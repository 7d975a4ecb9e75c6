"""Demo data generator: a synthetic, messy, multi-channel customer world with ground truth.

``generate(workspace, customers)`` writes, into ``workspace``:

* ``raw/``       the five raw sources (CRM members, online orders and store POS month by month, app events month by
                 month as Parquet, social interactions), with the mess real exports have: mixed phone / e-mail / city /
                 gender spellings, duplicate and corrupt rows, late arrivals, placeholder identifiers;
* ``external/``  enrichment sources keyed by hashed phone / hashed e-mail / city;
* ``truth/``     the latent traits of every person (``persons.parquet``) and, for every raw file ``F``, which person
                 produced each data row (``records/F.parquet``: ``row`` 1-based, header excluded; ``person_id``);
* ``persona.yaml`` (``default_config()``) and ``secrets.env`` (a random salt, written only when missing).

Everything is drawn from ``numpy.random.default_rng`` streams derived from ``seed`` (one per stage and month), so
the same seed gives the same bytes whatever the date or machine; nothing global is touched. The work is vectorised
over people and rows (Python loops only run over months, categories, files or formats) and memory is bounded by
one month of events, so a million customers fit in a couple of GB.

The world, in short: people with demographics, an income band, a purchase rate (Gamma), a log-normal order value,
a channel mix (store-only / online-only / omni), discount and return habits and concentrated category preferences
(Dirichlet). Some acquire a new interest mid-span, visible in browsing two to six weeks before the first purchase.
People join over time; a share churn, with purchases fading over the 30-120 days before churn and app engagement
fading earlier still. Latents are written to ``truth/`` only; the sources carry noisy evidence of them.

The package, by what it makes (imports point down this list):

* ``run``         ``generate()``: the people, then every month of every source, then enrichment and truth;
* ``external``    the enrichment sources (vendor profiles, partner spend, city statistics);
* ``sources``     the per-channel records: CRM, online orders, store tills, app/web events, social interactions;
* ``mess``        the mess injected into them: phone, e-mail and city spellings, typos, duplicate rows;
* ``people``      the synthetic population (``make_world``) and its ground truth (``write_persons``);
* ``files``       writing the files: CSV lines, atomic writes, truth records, persona.yaml, the summary;
* ``config``      ``default_config()``, the persona.yaml that matches the files;
* ``strings``     vectorised formatting of ids, times, amounts, phones and hashes;
* ``vocabulary``  the world's categories, cities, spellings, hours, seasons and calendar.
"""

from __future__ import annotations

from features.generate.config import default_config
from features.generate.run import generate
from features.generate.vocabulary import CATEGORIES, CATEGORY_CODES, CATEGORY_ZH, CITIES

__all__ = ["generate", "default_config", "CATEGORIES", "CATEGORY_ZH", "CATEGORY_CODES", "CITIES"]
