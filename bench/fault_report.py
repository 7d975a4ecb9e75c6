"""The analysis and report of the fault benchmark (bench/fault_bench.py): each fault's window summarised from the
recorded requests, the table, the per-fault details and the goals, and bench/out/fault.json and fault_records.json.

Apart from the runner so that what is measured (fault_load.py) and how it is judged (here) can be read separately.
"""

from __future__ import annotations

import json

from fault_load import CLIENT_TIMEOUT_S, EVENT_PERSONAS
from fault_setup import OUT

HANG_GOAL_S = 2.0


# --- the analysis ------------------------------------------------------------------------------------------------
def summarise(phase: dict, records: list[tuple]) -> dict:
    import numpy as np

    lo, hi, end = phase["window"][0], phase["window"][1], phase["fault_end"]
    mine = [r for r in records if lo <= r[1] < hi]
    by: dict = {}
    for ep, _, _, status, _, _ in mine:
        by.setdefault(ep, {}).setdefault(status, 0)
        by[ep][status] += 1
    lat = {ep: np.array([r[2] for r in mine if r[0] == ep] or [0.0]) for ep in ("profile", "events", "readyz")}
    longest = {ep: float(v.max()) for ep, v in lat.items()}
    p99 = {ep: float(np.percentile(v, 99)) for ep, v in lat.items()}
    over = {ep: int((v > HANG_GOAL_S).sum()) for ep, v in lat.items()}
    slow = sorted((r for r in mine if r[2] > HANG_GOAL_S), key=lambda r: -r[2])
    compared = [r for r in mine if r[0] == "profile" and r[3] == 200 and r[5] is not None]
    made_up = sum(1 for r in compared if r[5] is False)
    accepted = {(r[4], r[5]) for r in mine if r[0] == "events" and r[3] == 200}
    refused = {(r[4], r[5]) for r in mine if r[0] == "events" and r[3] != 200}
    kept = phase.get("kept_keys", set())
    rec = {}
    for name, ep, ok in (("readyz", "readyz", None), ("profile", "profile", None), ("correct", "profile", True)):
        after = sorted((r for r in records if r[0] == ep and r[1] >= end and r[3] == 200
                        and (ok is None or r[5] is ok)), key=lambda r: r[1])
        rec[name] = (after[0][1] + after[0][2] - end) if after else None
    errors_after = [r[1] + r[2] for r in mine if r[3] != 200 and r[1] + r[2] >= end]
    wrong_after = [r[1] + r[2] for r in mine if r[0] == "profile" and r[5] is False and r[1] + r[2] >= end]
    return {"statuses": by, "longest": longest, "p99": p99, "over_goal": over,
            "slowest": [{"endpoint": r[0], "sent_after_fault_start_s": round(r[1] - phase["fault_start"], 2),
                         "latency_s": round(r[2], 2), "status": r[3]} for r in slow[:5]],
            "made_up": made_up, "compared": len(compared),
            "made_up_event_personas": sum(1 for r in compared if r[5] is False and r[4] in phase["event_ids"]),
            "accepted": len(accepted), "refused": len(refused), "kept_rows": phase.get("rows_added"),
            "lost": len(accepted - kept), "kept_though_refused": len(refused & kept),
            "recovery": rec, "last_error": (max(errors_after) - end) if errors_after else 0.0,
            "last_made_up": (max(wrong_after) - end) if wrong_after else None, "requests": len(mine)}


def fmt_status(by: dict) -> str:
    names = {0: "timeout", -1: "conn"}
    return " ".join(f"{names.get(s, s)}:{n}" for s, n in sorted(by.items(), key=lambda kv: (kv[0] != 200, kv[0])))


def fmt_s(v: float | None) -> str:
    return "never" if v is None else f"{v:.2f} s"


def report(args, info: dict, phases: list[dict], loaded: dict, pids_start: list[int], pids_end: list[int]) -> int:
    records = loaded["records"]
    rows = [(ph, summarise(ph, records)) for ph in phases]

    print("\n=== fault benchmark: online service, production profile (private Redis + PostgreSQL) ===")
    ws = info["workspace"]
    print(f"workspace: {ws['customers']:,} customers generated; {info['personas']:,} personas served "
          f"({info['listed']:,} in profiles.parquet, the others have no features); "
          f"{'reused' if ws['reused'] else 'built'} (build {ws.get('build_seconds', '?')} s); champion set from "
          f"challenger: {', '.join(ws.get('champions_forced') or []) or 'none (the gate promoted every model)'}")
    print(f"load: {args.clients} client threads ({args.clients // 2 + args.clients % 2} on /v1/profile of random "
          f"served personas, {args.clients // 2} on /v1/events for {EVENT_PERSONAS} personas) + /readyz every 0.1 s; "
          f"client timeout {CLIENT_TIMEOUT_S:.0f} s; {args.workers} server workers; faults last "
          f"{args.fault_seconds:g} s; {args.quiet:g} s of load after each recovery")
    print(f"compared with the pre-fault capture: {info['baseline']['stable']:,} personas "
          f"({info['baseline']['unstable']} left out: they differed between two captures); the "
          f"{EVENT_PERSONAS} event personas on {', '.join(info['rt_free_scores']) or 'nothing'} only; "
          f"Redis held {info['redis_keys_before']:,} keys before the faults\n")

    head = (f"{'fault':<26} | {'req':>5} | {'longest':>7} | {'>2s':>4} | {'made-up':>7} | "
            f"{'events 200/kept/lost':>20} | {'ready in':>8} | {'profile in':>10} | {'correct in':>10} | "
            f"{'served after':>12} | {'load':>4}")
    print(head)
    print("-" * len(head))
    for ph, s in rows:
        base = ph["name"] == "(no fault)"
        rec = s["recovery"]
        chk = ph["check"]
        print(f"{ph['name']:<26} | {s['requests']:>5} | {max(s['longest'].values()):>6.2f}s | "
              f"{sum(s['over_goal'].values()):>4} | {s['made_up']:>7} | "
              f"{s['accepted']:>6}/{s['kept_rows']:>5}/{s['lost']:>5}     | "
              f"{'-' if base else fmt_s(rec['readyz']):>8} | {'-' if base else fmt_s(rec['profile']):>10} | "
              f"{'-' if base else fmt_s(rec['correct']):>10} | {chk['same']:>5}/{chk['personas']:<6} | "
              f"{ph['load_average'][0]:>4.1f}")
    print("\nreq: requests sent in the window (fault start to the end of the load after recovery); longest: the "
          "longest request, any endpoint (a client timeout counts 10 s); >2s: requests over 2 s; made-up: 200 profiles "
          "that differ from the persona's pre-fault capture; events 200/kept/lost: /v1/events answered 200, rows the "
          "event log gained, 200s whose event is not in the log; ready in / profile in / correct in: from the end of "
          "the fault to the first 200 of /readyz, the first 200 of /v1/profile, the first 200 profile equal to its "
          "capture; served after: personas /v1/score answers with their pre-fault data at the end of the window; "
          "load: 1-minute load average when the fault began")

    print("\nper fault:")
    for ph, s in rows:
        chk, rt = ph["check"], ph["realtime"]
        print(f"  {ph['name']}: window {ph['window'][1] - ph['window'][0]:.1f} s, fault "
              f"{ph['fault_end'] - ph['fault_start']:.1f} s")
        for ep in ("profile", "events", "readyz"):
            print(f"    {ep:<8} {fmt_status(s['statuses'].get(ep, {})):<44} p99 {s['p99'][ep]:5.2f} s, "
                  f"longest {s['longest'][ep]:5.2f} s, {s['over_goal'][ep]} over {HANG_GOAL_S:g} s")
        if s["slowest"]:
            print("    slowest: " + "; ".join(f"{x['endpoint']} {x['status']} {x['latency_s']} s sent at "
                                           f"{x['sent_after_fault_start_s']:+.2f} s" for x in s["slowest"][:3])
                  + " (relative to the fault's start)")
        print(f"    profiles: {s['compared']} 200s compared, {s['made_up']} differ from the capture "
              f"({s['made_up_event_personas']} of them event personas)"
              + (f", the last ending {s['last_made_up']:.1f} s after the fault's end" if s["last_made_up"] else ""))
        print(f"    events: {s['accepted']} accepted (200), {s['kept_rows']} rows added to the log, {s['lost']} "
              f"accepted but not in the log, {s['kept_though_refused']} refused but kept anyway")
        if ph["name"] != "(no fault)":
            print(f"    recovery: /readyz {fmt_s(s['recovery']['readyz'])}, first profile 200 "
                  f"{fmt_s(s['recovery']['profile'])}, first correct one {fmt_s(s['recovery']['correct'])}, last "
                  f"error answer {s['last_error']:.2f} s after the fault's end")
        print(f"    at the window's end: {chk['served']}/{chk['personas']} personas served, {chk['same']} with their "
              f"pre-fault data, {chk['not_served']} not served (404/503), {chk['different']} different; Redis "
              f"{ph['redis_keys']:,} keys (before the faults {info['redis_keys_before']:,})")
        print(f"    real-time features served vs the event log's saved state ({rt.get('checked', 0)} event personas): "
              f"{rt.get('mismatched', 0)} differ" + (f", e.g. {rt['examples'][0]}" if rt.get("examples") else ""))
        if ph["server_pids"] != pids_start:
            print(f"    server processes changed: {pids_start} -> {ph['server_pids']}")

    print("\ngoals, per fault:")
    for ph, s in rows:
        if ph["name"] == "(no fault)":
            continue
        longest = max(s["longest"].values())
        same = ph["server_pids"] == pids_start
        chk = ph["check"]
        recovered = ph["recovered"] is not None and chk["same"] == chk["personas"]
        rt_bad = ph["realtime"].get("mismatched", 0)
        goals = [("no 200 with made-up data", s["made_up"] == 0, f"{s['made_up']} of {s['compared']} 200 profiles"),
                 (f"no hang over {HANG_GOAL_S:g} s", longest <= HANG_GOAL_S,
                  f"longest {longest:.2f} s, {sum(s['over_goal'].values())} requests over"),
                 ("no accepted event lost", s["lost"] == 0, f"{s['lost']} of {s['accepted']} lost"),
                 ("recovery without a restart", recovered and same,
                  f"readyz {fmt_s(s['recovery']['readyz'])}, correct profile {fmt_s(ph['recovered'])}, "
                  f"{chk['same']}/{chk['personas']} personas served with their data at the end, server processes "
                  f"{'unchanged' if same else 'CHANGED'}"),
                 ("(extra) real-time features online = event log", rt_bad == 0,
                  f"{rt_bad} of {ph['realtime'].get('checked', 0)} event personas differ")]
        print(f"  {ph['name']}")
        for name, ok, detail in goals:
            print(f"    {name:<48} {'met   ' if ok else 'MISSED'}  ({detail})")
    if loaded["made_up"]:
        ex = loaded["made_up"][0]
        diff = {k: {"served": ex["got"].get(k), "before": ex["expected"].get(k)} for k in ex["expected"]
                if ex["got"].get(k) != ex["expected"].get(k)}
        print(f"\nfirst made-up 200: persona {ex['persona_id']}{' (event persona)' if ex['event_persona'] else ''} "
              f"at +{ex['t'] - phases[0]['window'][0]:.1f} s: {json.dumps(diff)[:1200]}")

    la0, la1 = info["load_average_start"], info.get("load_average_end", (float("nan"),) * 3)
    print(f"\nmachine: {info['cores']} cores; load average {la0[0]:.2f} / {la0[1]:.2f} / {la0[2]:.2f} at the start, "
          f"{la1[0]:.2f} / {la1[1]:.2f} / {la1[2]:.2f} at the end (other jobs share the machine); server processes "
          f"{pids_start} at the start, {pids_end} at the end; {len(records):,} requests recorded; {info['code']}")
    out = {"info": info, "args": {**vars(args), "workspace": str(args.workspace)},
           "faults": [{"name": ph["name"], "fault_seconds": ph["fault_end"] - ph["fault_start"],
                       "load_average": ph["load_average"], "realtime": ph["realtime"], "check": ph["check"],
                       "redis_keys": ph["redis_keys"], "recovered": ph["recovered"],
                       **{k: v for k, v in s.items() if k != "statuses"},
                       "statuses": {ep: {str(k): n for k, n in by.items()} for ep, by in s["statuses"].items()}}
                      for ph, s in rows],
           "made_up_examples": loaded["made_up"][:5]}
    (OUT / "fault.json").write_text(json.dumps(out, indent=1, default=str))
    t0 = phases[0]["window"][0] if phases else 0.0
    marks = [{"name": ph["name"], "fault_start_s": round(ph["fault_start"] - t0, 3),
              "fault_end_s": round(ph["fault_end"] - t0, 3)} for ph in phases]
    raw = [[r[0], round(r[1] - t0, 4), round(r[2], 4), r[3], r[4]] for r in records]
    (OUT / "fault_records.json").write_text(json.dumps({"faults": marks, "columns": ["endpoint", "sent_s",
                                                         "latency_s", "status", "persona"], "records": raw}))
    print(f"wrote {OUT / 'fault.json'}, every request in {OUT / 'fault_records.json'}; server log "
          f"{OUT / 'fault_server.log'}")
    return 0
