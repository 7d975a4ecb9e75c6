"""The console's words in Chinese and English. Tag, value and segment names come from the catalog's own zh / en
names; this holds only the console's chrome."""

from __future__ import annotations

from collections.abc import Callable, Mapping

LANGUAGES = ("zh", "en")
DEFAULT = "zh"

WORDS: dict[str, tuple[str, str]] = {  # key: (zh, en)
    "title": ("用户画像标签平台", "persona console"),
    "overview": ("概览", "Overview"), "profile": ("用户360", "Profile 360"), "catalog": ("标签目录", "Tag catalog"),
    "segments": ("人群圈选", "Segments"), "models": ("模型", "Models"), "campaigns": ("营销活动", "Campaigns"),
    "personas": ("用户数", "Personas"), "sources": ("数据源", "Sources"), "freshness": ("最新数据", "Latest data"),
    "read": ("读取", "Read"), "accepted": ("接收", "Accepted"), "quarantined": ("隔离", "Quarantined"),
    "stages": ("最近运行", "Last runs"), "stage": ("阶段", "Stage"), "run": ("批次", "Run"), "engine": ("引擎", "Engine"),
    "seconds": ("耗时(秒)", "Seconds"), "detail": ("说明", "Detail"), "snapshot": ("标签快照", "Tag snapshot"),
    "model_quality": ("模型质量", "Model quality"), "search": ("查询", "Search"),
    "lookup_hint": ("手机号、邮箱、会员号或用户ID", "phone, e-mail, member id or persona id"),
    "tags": ("标签", "Tags"), "scores": ("模型分", "Model scores"), "reasons": ("主要因素", "Top reasons"),
    "timeline": ("行为时间线", "Timeline"), "identity_graph": ("身份图谱", "Identity graph"),
    "identifiers": ("标识", "Identifiers"), "lineage": ("属性来源", "Where attributes came from"),
    "audit": ("合并记录", "Audit history"), "no_audit": ("无合并或拆分记录", "no merges or splits"),
    "category": ("分类", "Category"), "tag": ("标签", "Tag"), "type": ("类型", "Type"), "owner": ("负责人", "Owner"),
    "cadence": ("更新频率", "Cadence"), "coverage": ("覆盖率", "Coverage"), "definition": ("定义", "Definition"),
    "distribution": ("取值分布", "Value distribution"), "coverage_history": ("覆盖率变化", "Coverage over snapshots"),
    "expression": ("圈选条件", "Expression"), "count": ("人数", "Count"), "of": ("共", "of"),
    "save": ("保存", "Save"), "export": ("导出CSV", "Export CSV"), "segment_id": ("人群ID", "Segment id"),
    "saved_segments": ("已保存人群", "Saved segments"), "profile_chart": ("人群特征", "Segment profile"),
    "index": ("指数", "Index"), "value": ("取值", "Value"), "overlap": ("重叠", "Overlap"),
    "champion": ("冠军", "Champion"), "challenger": ("挑战者", "Challenger"), "metric": ("指标", "Metric"),
    "baseline": ("基线", "Baseline"), "history": ("版本历史", "History"), "version": ("版本", "Version"),
    "heldout": ("留出期评估", "Held-out evaluation"), "importance": ("特征重要性", "Feature importance"),
    "roc": ("ROC曲线", "ROC"), "lift": ("提升度", "Lift"), "calibration": ("校准", "Calibration"),
    "campaign": ("活动", "Campaign"), "window": ("活动期", "Window"), "treatment": ("触达组", "Treatment"),
    "holdout": ("对照组", "Holdout"), "conversion": ("转化率", "Conversion"),
    "revenue_per_customer": ("人均收入", "Revenue per customer"), "incremental": ("增量", "Incremental"),
    "roi": ("投资回报率", "ROI"), "by_tag": ("按标签", "By tag value"), "members": ("成员", "Members"),
    "not_found": ("未找到", "Not found"), "none_yet": ("暂无", "none yet"), "language": ("English", "中文"),
    "customers": ("用户", "Customers"), "converted": ("转化", "Converted"), "interval": ("95%区间", "95% interval"),
    "cost": ("成本", "Cost"), "gate": ("晋升闸门", "Promotion gate"), "created": ("创建时间", "Created"),
    "figures": ("图", "Figures"), "segment": ("人群", "Segment"), "warning": ("注意", "Warning"),
    "when": ("时间", "When"), "kind": ("类别", "Kind"), "what": ("内容", "What"), "source": ("来源", "Source"),
    "status": ("状态", "Status"), "grade": ("等级", "Grade"), "population": ("总人数", "Population"),
}


def translator(lang: str) -> Callable[[str], str]:
    i = LANGUAGES.index(lang) if lang in LANGUAGES else 0
    return lambda key: WORDS[key][i] if key in WORDS else key


def name_of(lang: str) -> Callable[[Mapping | None, str], str]:
    """The catalog's name of a tag (name_zh / name_en) or value ({value, zh, en}) in the page's language."""
    def pick(item: Mapping | None, fallback: str = "") -> str:
        if not item:
            return fallback
        return (item.get(f"name_{lang}") or item.get(lang) or item.get("name_en") or item.get("en")
                or fallback or str(item.get("id") or item.get("value") or ""))
    return pick
