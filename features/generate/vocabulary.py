"""The generated world's vocabulary and calendar: categories, cities, names, phone spellings, hours and seasons.

Every part of the generator (the people, the sources, the config contract) spells the world with these tables, so
they sit below all of them. Times are local wall-clock seconds since the epoch (Asia/Shanghai has no DST, so ``TZ``
turns them into UTC); ``Span`` cuts the generated period into the calendar months the month files follow.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np

# ----------------------------------------------------------------------------------------------------------------
# categories, cities, people's names and phones, hours and seasons
# ----------------------------------------------------------------------------------------------------------------


CATEGORIES = ("apparel", "shoes", "beauty", "skincare", "electronics", "home",
              "food", "baby", "sports", "books", "jewelry", "pets")
CATEGORY_ZH = ("服装", "鞋靴", "彩妆", "护肤", "数码", "家居", "食品", "母婴", "运动", "图书", "珠宝", "宠物")
CATEGORY_CODES = tuple(f"C{i + 1:02d}" for i in range(len(CATEGORIES)))
NCAT = len(CATEGORIES)
# popularity, price level (log multiplier of a person's typical order value), return-rate multiplier
CAT_POP = np.array([.16, .09, .10, .10, .10, .10, .10, .05, .06, .05, .03, .06])
CAT_LOGP = np.log(np.array([1.0, 1.2, 0.8, 1.0, 2.6, 1.3, 0.5, 0.9, 1.0, 0.4, 3.0, 0.7]))
CAT_RET = np.array([1.8, 1.7, 0.8, 0.7, 1.0, 0.9, 0.3, 0.8, 1.2, 0.4, 0.9, 0.6])

# (canonical pinyin, Chinese, English, abbreviation or None, tier, population in thousands, income index)
CITIES = (
    ("shanghai", "上海", "Shanghai", "SH", 1, 24870, 182), ("beijing", "北京", "Beijing", "BJ", 1, 21890, 178),
    ("guangzhou", "广州", "Guangzhou", "GZ", 1, 18730, 151), ("shenzhen", "深圳", "Shenzhen", "SZ", 1, 17560, 169),
    ("chengdu", "成都", "Chengdu", None, 2, 21190, 112), ("chongqing", "重庆", "Chongqing", None, 2, 32050, 96),
    ("hangzhou", "杭州", "Hangzhou", None, 2, 12370, 146), ("wuhan", "武汉", "Wuhan", None, 2, 13650, 117),
    ("xian", "西安", "Xi'an", None, 2, 12950, 101), ("suzhou", "苏州", "Suzhou", None, 2, 12910, 141),
    ("nanjing", "南京", "Nanjing", None, 2, 9420, 137), ("tianjin", "天津", "Tianjin", None, 2, 13730, 116),
    ("changsha", "长沙", "Changsha", None, 2, 10420, 121), ("zhengzhou", "郑州", "Zhengzhou", None, 2, 12820, 99),
    ("qingdao", "青岛", "Qingdao", None, 3, 10250, 114), ("ningbo", "宁波", "Ningbo", None, 3, 9620, 131),
    ("xiamen", "厦门", "Xiamen", None, 3, 5300, 126), ("hefei", "合肥", "Hefei", None, 3, 9630, 108),
    ("kunming", "昆明", "Kunming", None, 3, 8500, 94), ("shenyang", "沈阳", "Shenyang", None, 3, 9140, 93),
    ("dalian", "大连", "Dalian", None, 3, 7450, 104), ("nanning", "南宁", "Nanning", None, 4, 8890, 84),
    ("wenzhou", "温州", "Wenzhou", None, 4, 9670, 109), ("luoyang", "洛阳", "Luoyang", None, 4, 7070, 79),
    ("guilin", "桂林", "Guilin", None, 4, 4930, 76), ("yangzhou", "扬州", "Yangzhou", None, 4, 4580, 101),
    ("sanya", "三亚", "Sanya", None, 5, 1030, 93), ("lijiang", "丽江", "Lijiang", None, 5, 1250, 71),
    ("zunyi", "遵义", "Zunyi", None, 5, 6600, 69), ("ganzhou", "赣州", "Ganzhou", None, 5, 8970, 64),
    ("qujing", "曲靖", "Qujing", None, 5, 5760, 66),
)
NCITY = len(CITIES)
CITY_TIER = np.array([c[4] for c in CITIES])
CITY_W = np.array([c[5] for c in CITIES], float) * np.array([0, 2.2, 1.3, 1.0, 0.7, 0.5])[CITY_TIER]
CITY_W /= CITY_W.sum()
STORES_PER_TIER = np.array([0, 24, 12, 8, 5, 3])


def city_variants(city: tuple) -> list[str]:
    """The five spellings a city is written in, in a fixed order (see CITY_VARIANT_P)."""
    slug, zh, en, abbr = city[:4]
    return [zh, zh + "市", en, slug + " ", abbr if abbr else en.upper()]


CITY_VARIANT_P = np.array([.45, .20, .15, .10, .10])
INCOME_BANDS = ("low", "middle", "upper_middle", "high")
SPEND_LEVELS = ("low", "medium", "high", "vip")
CHANNELS = ("store_only", "online_only", "omni")

SURNAMES = ("wang li zhang liu chen yang huang zhao wu zhou xu sun ma zhu hu guo he lin gao luo zheng liang xie "
            "song tang han feng deng cao peng zeng xiao tian dong pan yuan cai jiang yu du ye cheng wei su lu ding "
            "ren shen yao").split()
GIVEN_NAMES = ("wei fang na min jing li qiang lei jun yang yong yan jie tao ming chao xiuying xia ping gang hua hui "
               "dan ling kai xin yu hao yi jia qian ting fei bo lin peng xue mei qing rui chen long hong bin zhen "
               "han lu ning xuan zihan yuxuan haoran yichen zixuan xinyi").split()
DOMAINS = ("qq", "163", "126", "gmail", "outlook", "hotmail", "sina", "foxmail", "139", "icloud")
DOMAIN_P = np.array([.20, .22, .10, .10, .08, .06, .08, .06, .05, .05])
PHONE_PREFIXES = np.array([130, 131, 132, 133, 134, 135, 136, 137, 138, 139, 145, 147, 150, 151, 152, 153, 155, 156,
                           157, 158, 159, 166, 170, 171, 173, 175, 176, 177, 178, 180, 181, 182, 183, 184, 185, 186,
                           187, 188, 189, 191, 198, 199])
PLACEHOLDER_PHONES = ("13800000000", "00000000000")
PLACEHOLDER_EMAILS = ("test@test.com", "noemail@none.com")
RESERVED_PHONES = np.array([13800000000, 13888888888, 13900000000])

# Phone spellings: 0 13812345678, 1 +86 138 1234 5678, 2 +86-138-1234-5678, 3 0086 13812345678, 4 86-13812345678,
# 5 (+86)138 1234 5678, 6 013812345678, 7 138-1234-5678, 8 " 138 1234 5678 ", 9 +8613812345678;
# invalid: 10 12345 (cut short), 11 1381234567x.
PHONE_FMT = {
    "crm": np.array([.52, .08, .05, .05, .04, .04, .04, .08, .04, .06]),
    "online": np.array([.58, .10, .04, .03, .03, .03, .02, .06, .03, .08]),
    "pos": np.array([.74, 0, 0, 0, 0, 0, .05, .16, .05, 0]),
    "social": np.array([.55, .15, .05, .05, .05, .05, 0, .03, 0, .07]),
}

HOURS_ONLINE = np.array([3, 2, 1, .5, .3, .3, .5, 1, 2, 3, 4, 4, 5, 4, 3, 3, 3, 4, 5, 6, 8, 9, 8, 5], float)
HOURS_POS = np.array([0] * 10 + [3, 4, 5, 5, 5, 6, 6, 6, 7, 8, 7, 5] + [0, 0], float)
HOURS_APP = np.array([3, 2, 1, .5, .3, .4, 1, 2, 3, 3, 3, 4, 5, 4, 3, 3, 3, 4, 5, 6, 7, 8, 7, 5], float)
WEEKDAY_POS = np.array([0.9, 0.85, 0.9, 0.95, 1.1, 1.6, 1.5])      # Monday .. Sunday
# calendar-month seasonality (618 in June, Double 11 in November, Spring Festival dip)
SEASON_ONLINE = np.array([1.0, .8, .95, .95, 1.0, 1.3, .95, .95, 1.0, 1.05, 1.6, 1.15])
SEASON_POS = np.array([1.15, 1.05, .95, .95, 1.0, 1.05, 1.0, 1.0, 1.0, 1.1, 1.1, 1.15])
SEASON_APP = np.array([1.0, .9, 1.0, 1.0, 1.0, 1.15, 1.0, 1.0, 1.0, 1.05, 1.3, 1.1])

DAY = 86400
TZ = 8 * 3600                      # Asia/Shanghai, no DST
INF = np.int64(2 ** 61)
EPOCH = date(1970, 1, 1)

# stream ids for np.random.default_rng([seed, stream, month])
S_WORLD, S_CRM, S_ONLINE, S_POS, S_APP, S_SOCIAL, S_VENDOR, S_PARTNER = range(1, 9)


# ----------------------------------------------------------------------------------------------------------------
# the span
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Span:
    """The generated period and its calendar months."""

    start: int                                   # local wall-clock seconds since the epoch, inclusive
    end: int                                     # exclusive
    months: list[tuple[str, int, int, int]]      # (YYYY-MM, calendar month 1..12, start, end)


def month_span(end: date, months: int) -> Span:
    """The ``months`` calendar months up to the one holding ``end``, the last one cut after ``end``: the month files
    and every source's windows follow them, so the data depend on ``end`` and never on today."""
    y, m = end.year, end.month
    first_y, first_m = divmod(y * 12 + m - 1 - (months - 1), 12)
    out = []
    for i in range(months):
        yy, mm = divmod(first_y * 12 + first_m + i, 12)
        ms = date(yy, mm + 1, 1)
        ny, nm = divmod(yy * 12 + mm + 1, 12)
        me = min(date(ny, nm + 1, 1), end + timedelta(days=1))
        out.append((f"{yy:04d}-{mm + 1:02d}", mm + 1, date_secs(ms), date_secs(me)))
    return Span(out[0][2], out[-1][3], out)


def date_secs(d: date) -> int:
    """Local midnight at the start of ``d``, in seconds since the epoch."""
    return (d - EPOCH).days * DAY
