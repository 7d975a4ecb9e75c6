"""The config contract: the persona.yaml that matches the files the generator writes.

``default_config()`` names every source, identifier, code mapping and enrichment file the way the generated files
spell them (every city, category and event-type variant the sources use included), so a generated workspace
integrates with no hand-written configuration. docs/persona.example.yaml documents the same contract with every
other key.
"""

from __future__ import annotations

from features.generate.vocabulary import CATEGORIES, CATEGORY_CODES, CATEGORY_ZH, CITIES, city_variants


def default_config(name: str = "demo") -> dict:
    """The persona.yaml content (a plain dict) that matches the files generate() writes."""
    city_map: dict[str, str] = {}
    for city in CITIES:
        for variant in city_variants(city) + [city[0]]:
            city_map[variant.strip().casefold()] = city[0]
    category_map: dict[str, str] = {}
    for slug, zh, code in zip(CATEGORIES, CATEGORY_ZH, CATEGORY_CODES):
        category_map[zh] = slug
        category_map[code.casefold()] = slug
        category_map[slug] = slug
    return {
        "version": 1,
        "name": name,
        "timezone": "Asia/Shanghai",
        "phone_region": "CN",
        "sources": {
            "crm_members": {
                "channel": "crm", "kind": "profile", "path": "raw/crm_members.csv", "key": ["member_id"],
                "timestamp": {"column": "updated_at", "format": "%Y-%m-%d %H:%M:%S"},
                "identifiers": {"member_id": "member_id", "phone": "mobile", "email": "email"},
                "fields": {"gender": "gender", "birth_date": "birthday", "city": "city", "signup_at": "register_time",
                           "opt_out_enrichment": "opt_out_enrichment", "opt_out_marketing": "opt_out_marketing"},
            },
            "online_orders": {
                "channel": "online", "kind": "transactions", "path": "raw/online_orders/*.csv", "key": ["order_id"],
                "timestamp": {"column": "order_time", "format": "iso"},
                "identifiers": {"account_id": "account_id", "email": "buyer_email", "phone": "buyer_phone"},
                "fields": {"order_id": "order_id", "amount": "amount", "quantity": "quantity", "category": "category",
                           "discount": "discount_amount", "status": "status", "city": "ship_city"},
            },
            "store_pos": {
                "channel": "store", "kind": "transactions", "path": "raw/pos/*.csv", "key": ["txn_id"],
                "timestamp": {"column": "txn_time", "format": "%Y/%m/%d %H:%M"},
                "identifiers": {"member_id": "member_card", "phone": "phone"},
                "fields": {"order_id": "txn_id", "store_id": "store_id", "amount": "amount", "quantity": "qty",
                           "category": "category", "discount": "discount", "is_return": "is_return"},
            },
            "app_events": {
                "channel": "app", "kind": "events", "path": "raw/app_events/*.parquet", "key": ["event_id"],
                "timestamp": {"column": "event_time", "format": "epoch_ms"},
                "identifiers": {"device_id": "device_id", "account_id": "user_id"},
                "fields": {"event_type": "event_type", "category": "category", "platform": "platform"},
            },
            "social": {
                "channel": "social", "kind": "interactions", "path": "raw/social_interactions.csv",
                "key": ["interaction_id"],
                "timestamp": {"column": "interaction_time", "format": "iso"},
                "identifiers": {"social_id": "social_id", "phone": "bound_phone", "member_id": "member_id"},
                "fields": {"action": "action", "category": "topic"},
            },
        },
        "identity": {
            "max_component_size": 40,
            "identifiers": {
                "member_id": {"normalise": "id", "account": True},
                "account_id": {"normalise": "id", "account": True},
                "social_id": {"normalise": "id", "account": True},
                "phone": {"normalise": "phone", "max_accounts": 2,
                          "blocked": ["13800000000", "13888888888", "13900000000"]},
                "email": {"normalise": "email", "max_accounts": 2,
                          "blocked": ["test@test.com", "noemail@none.com", "a@a.com"]},
                "device_id": {"normalise": "id", "max_accounts": 1},
            },
        },
        "mappings": {
            "gender": {"m": "male", "male": "male", "男": "male", "1": "male",
                       "f": "female", "female": "female", "女": "female", "2": "female",
                       "u": None, "unknown": None},
            "city": city_map,
            "category": category_map,
            "event_type": {"pv": "product_view", "view": "product_view", "add_to_cart": "cart_add",
                           "session_start": "session_start", "product_view": "product_view",
                           "search": "search", "cart_add": "cart_add"},
        },
        "profile": {
            "attributes": {
                "gender": {"rule": "most_trusted", "sources": ["crm_members"]},
                "birth_date": {"rule": "most_trusted", "sources": ["crm_members"]},
                "city": {"rule": "most_frequent"},
                "opt_out_enrichment": {"rule": "most_recent"},
                "opt_out_marketing": {"rule": "most_recent"},
            },
        },
        "consent": {"missing": "granted"},
        "enrichment": {
            "vendor": {
                "provider": "third_party", "path": "external/vendor_profiles.csv",
                "key": {"column": "phone_sha256", "type": "phone_sha256"},
                "as_of": {"column": "as_of_date"},
                "fields": {"income_band": "income_band", "vendor_interests": "interests"},
            },
            "partner": {
                "provider": "partner", "path": "external/partner_spend.csv",
                "key": {"column": "email_sha256", "type": "email_sha256"},
                "as_of": {"column": "as_of_date"},
                "fields": {f"partner_spend_{c}": f"spend_{c}" for c in CATEGORIES},
            },
            "city_stats": {
                "provider": "public", "path": "external/city_stats.csv",
                "key": {"column": "city", "type": "city"},
                "as_of": {"date": "2026-06-30"},
                "fields": {"city_population": "population", "city_income_index": "income_index",
                           "city_tier": "city_tier"},
            },
        },
        "truth": {"path": "truth"},
    }
