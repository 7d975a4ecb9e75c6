"""`persona console`: the marketer's web console over a workspace.

FastAPI + Jinja2, rendered on the server: pages are plain HTML that work without a build step or a front-end
toolchain, and the little that is live (the segment count as you type, the charts) is one small script of our own
(static/console.js) plus plotly.min.js from the installed plotly package, both served by the console itself: no CDN,
since users run it inside their own network. FastAPI, Jinja2 and uvicorn are already installed with Feast and
BentoML; the one addition is plotly, whose wheel carries its JavaScript.

Pages: overview, Profile 360, tag catalog, segment builder, models, campaigns; `?lang=en` / `?lang=zh` switches the
language (kept in a cookie). When the API key variable of persona.yaml (`serving.api_key_env`) is set, every page
needs the key: HTTP Basic (any user name, the key as password: the browser asks), or `X-API-Key`.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import os
import threading
from pathlib import Path

from fastapi import FastAPI, Form, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from persona.workspace import Workspace
from rules.catalog import CATEGORY_ZH
from rules.segments import SegmentError
from serving.console import i18n
from serving.console.data import ConsoleData, NotFoundError, display, jsonable, plotly_js

HERE = Path(__file__).parent
LANG_COOKIE = "persona_lang"


def _key(ws: Workspace) -> bytes | None:
    value = os.environ.get(ws.config().serving.api_key_env)
    return value.encode() if value else None


def create_app(ws: Workspace, *, warm: bool = False) -> FastAPI:
    """The console's ASGI app over `ws` (uvicorn serves it; tests call it through Starlette's TestClient). With
    `warm`, a background thread loads what first pages wait for while the server starts."""
    data = ConsoleData(ws)
    if warm:
        threading.Thread(target=data.warm, name="console-warm", daemon=True).start()
    key = _key(ws)
    app = FastAPI(title="persona console", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.data = data
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.filters["tojson_safe"] = lambda v: json.dumps(jsonable(v), ensure_ascii=False)
    templates.env.filters["show"] = display

    # before the mount of /static, which would otherwise answer this path (with a 404: the file is not in static/)
    @app.get("/static/plotly.min.js", include_in_schema=False)
    def _plotly() -> FileResponse:
        return FileResponse(plotly_js(), media_type="text/javascript", headers={"Cache-Control": "max-age=86400"})

    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    @app.middleware("http")
    async def _auth_and_language(request: Request, call_next):
        if key and not request.url.path.startswith("/static/") and not _authorised(request, key):
            return Response("API key required", status_code=401,
                            headers={"WWW-Authenticate": 'Basic realm="persona console"'})
        lang = request.query_params.get("lang")
        request.state.lang = lang if lang in i18n.LANGUAGES else request.cookies.get(LANG_COOKIE, i18n.DEFAULT)
        if request.state.lang not in i18n.LANGUAGES:
            request.state.lang = i18n.DEFAULT
        response = await call_next(request)
        if lang in i18n.LANGUAGES:
            response.set_cookie(LANG_COOKIE, lang, max_age=365 * 86400, samesite="lax")
        return response

    def page(request: Request, template: str, status: int = 200, **context) -> HTMLResponse:
        lang = request.state.lang
        return templates.TemplateResponse(request, template, {
            "t": i18n.translator(lang), "lang": lang, "name_of": i18n.name_of(lang), "path": request.url.path,
            "workspace": str(ws.root), **context}, status_code=status)

    @app.get("/", response_class=HTMLResponse)
    def overview(request: Request):
        return page(request, "overview.html", o=data.overview())

    @app.get("/profile", response_class=HTMLResponse)
    def lookup(request: Request, q: str = "", type: str = "phone"):
        if not q:
            return page(request, "profile.html", p=None, q=q, id_type=type, types=data.id_types(), error=None)
        try:
            pid = data.lookup(type, q)
        except NotFoundError as exc:
            return page(request, "profile.html", 404, p=None, q=q, id_type=type, types=data.id_types(),
                        error=str(exc))
        return RedirectResponse(f"/profile/{pid}", status_code=303)

    @app.get("/profile/{persona_id}", response_class=HTMLResponse)
    def profile(request: Request, persona_id: str):
        try:
            pid = data.lookup("persona_id", persona_id)
        except NotFoundError as exc:
            return page(request, "profile.html", 404, p=None, q=persona_id, id_type="persona_id",
                        types=data.id_types(), error=str(exc))
        return page(request, "profile.html", p=data.profile(pid), q=persona_id, id_type="persona_id",
                    types=data.id_types(), error=None, catalog={t["id"]: t for t in data.catalog()["tags"]},
                    categories=CATEGORY_ZH)

    @app.get("/api/profile/{persona_id}")
    def profile_json(persona_id: str):
        try:
            return JSONResponse(jsonable(data.profile(data.lookup("persona_id", persona_id))))
        except NotFoundError as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)

    @app.get("/catalog", response_class=HTMLResponse)
    def catalog(request: Request):
        return page(request, "catalog.html", c=data.catalog())

    @app.get("/catalog/{tag_id}", response_class=HTMLResponse)
    def tag(request: Request, tag_id: str):
        try:
            d = data.tag(tag_id)
            return page(request, "tag.html", d=d, charts=_tag_charts(d, request.state.lang))
        except NotFoundError as exc:
            return page(request, "error.html", 404, error=str(exc))

    @app.get("/segments", response_class=HTMLResponse)
    def segments(request: Request, expr: str = ""):
        aud = data.audience()
        return page(request, "segments.html", expr=expr, names=aud.known_names(), saved=data.segments(),
                    date=aud.date, population=aud.size)

    @app.get("/api/segments/count")
    def segment_count(expr: str = ""):
        return _segment_call(lambda: data.count(expr), expr)

    @app.get("/api/segments/profile")
    def segment_profile(expr: str = ""):
        return _segment_call(lambda: data.segment_profile(expr), expr)

    @app.get("/api/segments/overlap")
    def segment_overlap(names: str = ""):
        parts = [n.strip() for n in names.split(",") if n.strip()]
        if len(parts) < 2:
            return JSONResponse({"error": "name two or more segments, comma separated"}, status_code=400)
        return _segment_call(lambda: data.overlap(parts), names)

    @app.post("/segments/save")
    def segment_save(request: Request, segment_id: str = Form(...), expr: str = Form(...), zh: str = Form(""),
                     en: str = Form("")):
        try:
            saved = data.save_segment(segment_id.strip(), expr.strip(), zh=zh.strip(), en=en.strip())
        except SegmentError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse(saved)

    @app.get("/segments/export")
    def segment_export(expr: str = ""):
        try:
            name, body = data.export_csv(expr)
        except SegmentError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return Response(body, media_type="text/csv",
                        headers={"Content-Disposition": f'attachment; filename="{_safe(name)}"'})

    @app.get("/models", response_class=HTMLResponse)
    def models(request: Request):
        return page(request, "models.html", models=data.models())

    @app.get("/models/{tag}", response_class=HTMLResponse)
    def model(request: Request, tag: str, output: str = "", version: str = ""):
        from serving.console import models as model_data

        try:
            detail = model_data.model_detail(ws, tag, version or None)
        except (KeyError, ValueError) as exc:
            return page(request, "error.html", 404, error=str(exc.args[0] if exc.args else exc))
        outputs = {o["output"]: o for o in detail["outputs"]}
        shown = output if output in outputs else next(iter(outputs), None)
        charts = _model_charts(outputs[shown]) if shown else {}
        return page(request, "model.html", m=detail, tag=tag, shown=shown, charts=charts)

    @app.get("/models/{tag}/figure/{run_id}/{name}")
    def model_figure(tag: str, run_id: str, name: str):
        from serving.console import models as model_data

        if name not in ("feature_importance.png", "roc_calibration.png"):
            return JSONResponse({"error": "no such figure"}, status_code=404)
        path = model_data.figure(ws, run_id, name)
        return FileResponse(path, media_type="image/png") if path else JSONResponse({"error": "no figure"}, 404)

    @app.get("/campaigns", response_class=HTMLResponse)
    def campaigns(request: Request):
        return page(request, "campaigns.html", campaigns=data.campaigns())

    @app.get("/campaigns/{name}", response_class=HTMLResponse)
    def campaign(request: Request, name: str):
        try:
            r = data.campaign(name)
            return page(request, "campaign.html", r=r, chart=_by_tag_chart(r))
        except NotFoundError as exc:
            return page(request, "error.html", 404, error=str(exc))

    @app.get("/healthz")
    def healthz():
        return {"ok": True}

    return app


def _segment_call(fn, what: str) -> JSONResponse:
    if not what.strip():
        return JSONResponse({"error": "type an expression, such as churn_risk >= 0.6"}, status_code=400)
    if len(what) > 4000:
        return JSONResponse({"error": "the expression is longer than 4,000 characters"}, status_code=400)
    try:
        return JSONResponse(jsonable(fn()))
    except SegmentError as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)


def _model_charts(o: dict) -> dict:
    """ROC, cumulative gains / lift, calibration and importance of one output, as Plotly figures (from the curves
    training logged; none for versions logged before them: the page shows their PNG figures instead)."""
    c = o.get("curves")
    if not c:
        return {}
    small = {"height": 320, "margin": {"t": 10, "l": 50, "r": 50}}
    diag = {"type": "scatter", "mode": "lines", "x": [0, 1], "y": [0, 1], "line": {"dash": "dot", "color": "#999"},
            "showlegend": False}
    out = {}
    if c.get("roc"):
        r = c["roc"]
        out["roc"] = {"data": [{"type": "scatter", "mode": "lines", "x": r["fpr"], "y": r["tpr"],
                                "name": f"AUC {r['auc']:.3f}" if r.get("auc") is not None else "ROC"}, diag],
                      "layout": {**small, "xaxis": {"title": {"text": "false positive rate"}},
                                 "yaxis": {"title": {"text": "true positive rate"}}, "legend": {"x": 0.55, "y": 0.1}}}
    d = c.get("deciles")
    if d:
        out["lift"] = {"data": [{"type": "bar", "x": [round(100 * s) for s in d["share_customers"]], "y": d["lift"],
                                 "name": "lift"},
                                {"type": "scatter", "mode": "lines+markers", "x": [round(100 * s) for s in
                                                                                    d["share_customers"]],
                                 "y": d["share_captured"], "yaxis": "y2", "name": "captured"}],
                       "layout": {**small, "xaxis": {"title": {"text": "top % of customers by score"}},
                                  "yaxis": {"title": {"text": "lift"}}, "yaxis2": {"overlaying": "y", "side": "right",
                                                                         "tickformat": ".0%", "range": [0, 1]},
                                  "legend": {"x": 0.6, "y": 0.9}}}
    cal = c.get("calibration")
    if cal and cal.get("predicted"):
        out["calibration"] = {"data": [{"type": "scatter", "mode": "lines+markers", "x": cal["predicted"],
                                        "y": cal["observed"], "name": "observed"}, diag],
                              "layout": {**small, "xaxis": {"title": {"text": "predicted"}},
                                         "yaxis": {"title": {"text": "observed"}}}}
    imp = (c.get("importance") or [])[:20][::-1]
    if imp:
        out["importance"] = {"data": [{"type": "bar", "orientation": "h", "x": [i["gain"] for i in imp],
                                       "y": [i["feature"] for i in imp]}],
                             "layout": {**small, "height": 60 + 18 * len(imp), "margin": {"l": 200, "t": 10}}}
    return out


def _tag_charts(d: dict, lang: str) -> dict:
    names = {v["value"]: v.get(lang) or v["value"] for v in d["tag"].get("values") or []}
    dist = d["distribution"]
    hist = d["coverage_history"]
    return {
        "distribution": {"data": [{"type": "bar", "x": [names.get(v["value"], str(v["value"])) for v in dist],
                                   "y": [v["count"] for v in dist]}],
                         "layout": {"height": 300, "margin": {"t": 10}}},
        "coverage": {"data": [{"type": "scatter", "mode": "lines+markers", "x": [h["date"] for h in hist],
                               "y": [h["coverage"] for h in hist]}],
                     "layout": {"height": 300, "margin": {"t": 10}, "yaxis": {"tickformat": ".0%"}}},
    }


def _by_tag_chart(r: dict) -> dict:
    """Conversion lift per tag value with its interval, as a Plotly figure (values with too few held out left out)."""
    rows = [b for b in r["by_tag"] if b["lift"] and b["lift"]["estimate"] is not None]
    est = [b["lift"]["estimate"] for b in rows]
    return {"data": [{"type": "scatter", "mode": "markers", "x": est, "y": [f"{b['tag']} = {b['value']}" for b in rows],
                      "error_x": {"type": "data", "symmetric": False,
                                  "array": [b["lift"]["high"] - e for b, e in zip(rows, est)],
                                  "arrayminus": [e - b["lift"]["low"] for b, e in zip(rows, est)]}}],
            "layout": {"height": 80 + 22 * len(rows), "margin": {"l": 240, "t": 10},
                       "xaxis": {"tickformat": "+.1%", "zeroline": True}}}


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:100]


def _authorised(request: Request, key: bytes) -> bool:
    given = request.headers.get("x-api-key", "").encode()
    auth = request.headers.get("authorization", "")
    if not given and auth[:6].lower() == "basic ":
        try:
            given = base64.b64decode(auth[6:].strip(), validate=True).partition(b":")[2]
        except (binascii.Error, ValueError):
            given = b""
    return bool(given) and hmac.compare_digest(given, key)
