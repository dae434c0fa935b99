"""Grading tables and rules of the district plan (济南市历下区城镇燃气突发事件应急预案), pure functions.

Every number is configuration (`[grading]` table) with the plan's value as default. Boundary wording follows
the plan's Chinese convention (as in GB/T 1.1 and the national emergency plans): "N以上" includes N,
"N以下" excludes N. So "1万户以上3万户以下" is 10,000 ≤ n < 30,000 (level III), and "低于0.2MPa" is
strictly below 0.2 MPa.

Levels are 1..4 (I most severe, IV 一般); warnings are "blue" < "yellow" < "orange" < "red".
"""

from __future__ import annotations

import datetime as _dt
import difflib
import tomllib
from pathlib import Path

LEVEL_NAMES = {1: "I", 2: "II", 3: "III", 4: "IV"}
LEVEL_NAMES_ZH = {1: "特别重大（Ⅰ级）", 2: "重大（Ⅱ级）", 3: "较大（Ⅲ级）", 4: "一般（Ⅳ级）"}
WARNINGS = ("blue", "yellow", "orange", "red")           # ascending severity
WARNING_NAMES_ZH = {"blue": "蓝色", "yellow": "黄色", "orange": "橙色", "red": "红色"}
# plan 3.3: the four warning levels are "特别重大、重大、较大、一般 ... 依次用红色、橙色、黄色、蓝色表示"
LEVEL_WARNING = {1: "red", 2: "orange", 3: "yellow", 4: "blue"}
CATEGORIES = ("safety_accident", "supply_assurance")     # plan 1.6.1.1 / 1.6.1.2
CATEGORY_NAMES_ZH = {"safety_accident": "安全事故类", "supply_assurance": "供应保障类"}

# Level criteria of plan 1.6.2: the smallest value that reaches level I, II, III, IV (">= threshold").
LEVEL_CRITERIA = ("deaths", "serious_injuries", "direct_loss_cny", "households_cut_off", "evacuated")

DEFAULTS: dict = {
    # --- identity and routing ------------------------------------------------------------------
    "topic_root": "gasguard/v1",          # the topic tree's root (protocol/topics.py ROOT; the gateway's mqtt.topic_root)
    "district": "lixia",                  # topic segment of the district command
    "city_topic": "city",                 # topic segment of the city command
    "gateway_id": "gw-lixia-01",          # reporter (plan 4.1.3: 报告人 unit)
    "reporter_unit": "",                  # plan 4.1.3: 报告人的单位
    "reporter_name": "",                  # plan 4.1.3: 报告人的姓名
    "reporter_phone": "",                 # plan 4.1.3: 联系电话
    "timezone": "Asia/Shanghai",          # times in the Chinese text report
    "city_min_level": 3,                  # plan 1.7: 初判较大及以上 -> the city leads
    "city_min_warning": "yellow",         # plan 3.4-3.7: red/orange issued by the city, yellow+ adjusted with it
    # --- plan 1.6.2 level tables (I, II, III, IV: smallest value reaching the level) ---------
    "deaths_levels": [30, 10, 3, 1],                      # 30人以上 / 10-29 / 3-9 / 3人以下 (1-2)
    "serious_injuries_levels": [100, 50, 10, 1],          # 100人以上 / 50-99 / 10-49 / 10人以下
    "direct_loss_cny_levels": [100_000_000, 50_000_000, 10_000_000, 1],  # 1亿 / 5000万 / 1000万 / below
    "households_cut_off_levels": [50_000, 30_000, 10_000, 1_000],        # 1.6.2.x(2), cut off >= 24 h
    "evacuated_levels": [50_000, 5_000, 1_000, 1],        # 1.6.2.x(2), over-pressure evacuation
    "projection_hours": 24.0,             # 1.6.2.x(2) "连续停止供气24小时以上": until then a projection (初判)
    # --- plan 3.3 warning tables -------------------------------------------------------------
    "warning_households": {"red": 50_000, "orange": 30_000, "yellow": 10_000, "blue": 1},
    # 3.3.1-3.3.4(1) first half: next 3 days' daily load above the upstream daily supply plan, in %:
    # red "高于…50%" (> 50), orange "30%至50%" (30..50), yellow "10%至30%" (10..<30), blue up to 10 (> 0)
    "forecast_excess_pct": {"red": 50.0, "orange": 30.0, "yellow": 10.0},
    # 3.3.1(2): 次高压A类 < 0.2 MPa, 高压A类 < 0.8 MPa and still falling -> red
    "pressure_red_mpa": {"subhigh_a": 0.2, "high_a": 0.8},
    # 3.3.2(2): 次高压 (P > 0.4 MPa) < 0.4 MPa, 高压 < 1.6 MPa and still falling -> orange
    "pressure_orange_mpa": {"subhigh_a": 0.4, "subhigh_b": 0.4, "high_a": 1.6, "high_b": 1.6},
    "falling_window_s": 600.0,            # GRADING.md 5: "still falling" = downward trend over this window
    "falling_min_drop_kpa": 0.0,          # least drop over the window that counts as falling
    "key_area_raise": 1,                  # 3.3: 重点区域 -> warning raised this many steps
    "key_period_raise": 1,                # 3.3: 重大节日、重大活动期间 -> warning raised this many steps
    "key_periods": [],                    # [{"start": "2026-10-01", "end": "2026-10-07", "name": "国庆"}]
    # --- detection (not numbers of the plan: engineering choices, documented) --------------
    "station_outlet_lost_pa": 500,        # station outlet below this gauge pressure = supply stopped
    "leak_alarm_codes": ["gas_l2"],       # household shut-off alarm (plan 5.1.1.1 first response)
    "leak_level": 4,                      # a household shut-off on gas is a level IV safety incident
    "leak_cluster_radius_m": 200.0,       # leaks this close ...
    "leak_cluster_window_s": 1800.0,      # ... and this close in time are one incident
    "leak_cluster_count": 3,              # ... and from this many alarms its level rises one step
    # --- plan 4.1.2 reporting deadlines -------------------------------------------------------
    "phone_deadline_s": 1200.0,           # 20 分钟内以电话形式
    "written_deadline_s": 2700.0,         # 45 分钟内以书面形式
    "escalation_repeat_s": 300.0,         # while overdue and unacknowledged, re-publish this often (0 = once)
    "reack_on_upgrade": True,             # a higher level or warning needs a new acknowledgement
    "resolved_keep_s": 3600.0,            # a resolved incident answers sync requests this long
    "history_len": 64,                    # readings kept per incident (bounded; overflow counted)
    "state_path": "",                     # incident state file ("" = next to the registry, see the plugin)
}

_WARN_IDX = {w: i for i, w in enumerate(WARNINGS)}


class GradingConfigError(ValueError):
    """A [grading] configuration value that cannot be used; the message says how to fix it."""


def _check_levels(name: str, v) -> list:
    if (not isinstance(v, list) or len(v) != 4 or not all(isinstance(x, (int, float)) and x > 0 for x in v)
            or any(v[i] <= v[i + 1] for i in range(3))):
        raise GradingConfigError(f"{name} = {v!r}: give 4 positive thresholds for levels I, II, III, IV, "
                                 "strictly decreasing (e.g. [50000, 30000, 10000, 1000])")
    return list(v)


def load_config(source: dict | str | Path | None = None) -> dict:
    """Defaults merged with a [grading] table (a dict, or a TOML file holding [grading]); validated."""
    table: dict = {}
    if isinstance(source, (str, Path)):
        try:
            data = tomllib.loads(Path(source).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise GradingConfigError(f"cannot read grading config {source}: {e}") from None
        table = data.get("grading", {})
    elif source:
        table = dict(source.get("grading", source)) if isinstance(source.get("grading"), dict) else dict(source)
    cfg = {k: (dict(v) if isinstance(v, dict) else list(v) if isinstance(v, list) else v)
           for k, v in DEFAULTS.items()}
    for k, v in table.items():
        if k not in DEFAULTS:
            hint = difflib.get_close_matches(k, DEFAULTS, n=1)
            raise GradingConfigError(f"unknown [grading] key {k!r}"
                                     + (f": did you mean {hint[0]!r}?" if hint else "; see grading/README.md"))
        d = DEFAULTS[k]
        if isinstance(d, bool):
            ok = isinstance(v, bool)
        elif isinstance(d, (int, float)):
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0
        else:
            ok = isinstance(v, type(d))
        if not ok:
            raise GradingConfigError(f"[grading] {k} = {v!r}: expected {type(d).__name__} like {d!r}")
        cfg[k] = v
    for k in DEFAULTS:
        if k.endswith("_levels"):
            cfg[k] = _check_levels(k, cfg[k])
    for k in ("city_min_warning",):
        if cfg[k] not in WARNINGS:
            raise GradingConfigError(f"{k} = {cfg[k]!r}: choose one of {', '.join(WARNINGS)}")
    if cfg["city_min_level"] not in (1, 2, 3, 4) or cfg["leak_level"] not in (1, 2, 3, 4):
        raise GradingConfigError("city_min_level and leak_level are levels 1 (I) .. 4 (IV)")
    wh = cfg["warning_households"]
    if set(wh) != set(WARNINGS) or not (wh["red"] > wh["orange"] > wh["yellow"] > wh["blue"] > 0):
        raise GradingConfigError("warning_households needs red > orange > yellow > blue > 0 (households)")
    fe = cfg["forecast_excess_pct"]
    if set(fe) != {"red", "orange", "yellow"} or not (fe["red"] > fe["orange"] > fe["yellow"] > 0):
        raise GradingConfigError("forecast_excess_pct needs red > orange > yellow > 0 (percent)")
    if cfg["written_deadline_s"] <= cfg["phone_deadline_s"]:
        raise GradingConfigError("written_deadline_s must be later than phone_deadline_s (plan 4.1.2: 20/45 min)")
    for p in cfg["key_periods"]:
        try:
            if _dt.date.fromisoformat(p["start"]) > _dt.date.fromisoformat(p["end"]):
                raise ValueError("start after end")
        except (KeyError, TypeError, ValueError) as e:
            raise GradingConfigError(f"key_periods entry {p!r}: give start and end as YYYY-MM-DD ({e})") from None
    return cfg


# --- plan 1.6.2: event levels ----------------------------------------------------------------
def level_for(value: float | None, thresholds: list) -> int | None:
    """The most severe level whose threshold `value` reaches (">=": "以上" includes the number)."""
    if value is None:
        return None
    for level, t in zip((1, 2, 3, 4), thresholds):
        if value >= t:
            return level
    return None


def most_severe(*levels: int | None) -> int | None:
    real = [x for x in levels if x is not None]
    return min(real) if real else None


def grade_operator(cfg: dict, facts: dict) -> dict:
    """Level per criterion from operator facts (deaths, serious_injuries, direct_loss_cny, evacuated)."""
    return {k: level_for(facts.get(k), cfg[f"{k}_levels"])
            for k in ("deaths", "serious_injuries", "direct_loss_cny", "evacuated") if facts.get(k) is not None}


def households_level(cfg: dict, households: int) -> int | None:
    return level_for(households, cfg["households_cut_off_levels"])


# --- plan 3.3: warnings ----------------------------------------------------------------------
def warning_max(*ws: str | None) -> str | None:
    real = [w for w in ws if w]
    return max(real, key=_WARN_IDX.__getitem__) if real else None


def warning_at_least(w: str | None, floor: str | None) -> bool:
    return w is not None and floor is not None and _WARN_IDX[w] >= _WARN_IDX[floor]


def raise_warning(w: str | None, steps: int) -> str | None:
    """plan 3.3: raise a warning `steps` levels, red at most."""
    if w is None:
        return None
    return WARNINGS[min(len(WARNINGS) - 1, _WARN_IDX[w] + max(0, int(steps)))]


def households_warning(cfg: dict, households: int) -> str | None:
    """plan 3.3.1-3.3.4(1): households expected to be affected (5万以上 red, 3万(含)-5万 orange, ...)."""
    wh = cfg["warning_households"]
    for w in ("red", "orange", "yellow", "blue"):
        if households >= wh[w]:
            return w
    return None


def forecast_warning(cfg: dict, excess_pct: float | None) -> str | None:
    """plan 3.3.x(1): supply forecast (an operator fact: the gateway cannot forecast load)."""
    if excess_pct is None or excess_pct <= 0:
        return None
    f = cfg["forecast_excess_pct"]
    if excess_pct > f["red"]:            # "高于…50%": strictly above
        return "red"
    if excess_pct >= f["orange"]:        # "30%至50%": both ends included (50 itself is not "above 50")
        return "orange"
    if excess_pct >= f["yellow"]:
        return "yellow"
    return "blue"


def pressure_bound(cfg: dict, pressure_class: str) -> list[tuple[str, float]]:
    """(warning, bound MPa) pairs that apply to a network class, most severe first."""
    out = []
    for w, table in (("red", cfg["pressure_red_mpa"]), ("orange", cfg["pressure_orange_mpa"])):
        if pressure_class in table:
            out.append((w, float(table[pressure_class])))
    return out


def pressure_warning(cfg: dict, pressure_class: str, samples: list[tuple[float, float]], now: float) -> dict:
    """plan 3.3.1(2)/3.3.2(2): network pressure under the class bound and still falling.

    `samples` are (t, inlet Pa) in time order. "Still falling after emergency supply" is read as: every
    sample since the first crossing under the bound stays under it, at least `falling_window_s` have passed
    since that crossing, and over the last window the pressure dropped by more than `falling_min_drop_kpa`.
    Returns {"warning": colour|None, "bound_mpa", "crossed_at", "below": bool, "falling": bool}.
    """
    watching = {"warning": None, "bound_mpa": None, "crossed_at": None, "below": False, "falling": False}
    window = cfg["falling_window_s"]
    for w, bound in pressure_bound(cfg, pressure_class):        # most severe first
        bound_pa = bound * 1e6
        if not samples or samples[-1][1] >= bound_pa:           # "低于": exactly the bound is not below
            continue
        crossed = samples[-1][0]
        for t, p in reversed(samples):          # start of the current run under the bound
            if p >= bound_pa:
                break
            crossed = t
        recent = [(t, p) for t, p in samples if t >= max(crossed, now - window)]
        falling = (now - crossed >= window and len(recent) >= 2
                   and recent[0][1] - recent[-1][1] > cfg["falling_min_drop_kpa"] * 1000
                   and _slope(recent) < 0)
        state = {"warning": w if falling else None, "bound_mpa": bound, "crossed_at": crossed,
                 "below": True, "falling": falling}
        if falling:
            return state
        if not watching["below"]:
            watching = state
    return watching


def _slope(pts: list[tuple[float, float]]) -> float:
    n = len(pts)
    mt = sum(t for t, _ in pts) / n
    mp = sum(p for _, p in pts) / n
    den = sum((t - mt) ** 2 for t, _ in pts)
    return 0.0 if den == 0 else sum((t - mt) * (p - mp) for t, p in pts) / den


# --- plan 3.3: key areas and key periods ---------------------------------------------------------
def key_period(cfg: dict, day: _dt.date) -> dict | None:
    for p in cfg["key_periods"]:
        if _dt.date.fromisoformat(p["start"]) <= day <= _dt.date.fromisoformat(p["end"]):
            return p
    return None


def local_time(cfg: dict, t: float) -> _dt.datetime:
    try:
        from zoneinfo import ZoneInfo
        tz = ZoneInfo(cfg["timezone"])
    except Exception:        # no tz database: China Standard Time has had no DST since 1991
        tz = _dt.timezone(_dt.timedelta(hours=8))
    return _dt.datetime.fromtimestamp(t, tz)


def final_warning(cfg: dict, base: str | None, key_area: bool, day: _dt.date) -> tuple[str | None, list[str]]:
    """The warning after the plan 3.3 one-step raise; returns (warning, reasons)."""
    # "重大节日、重大活动期间或重点区域": either condition raises the warning (one step by default), not both
    if base is None:
        return None, []
    reasons, steps = [], 0
    if key_area and cfg["key_area_raise"]:
        steps = max(steps, cfg["key_area_raise"])
        reasons.append("key_area")
    period = key_period(cfg, day)
    if period and cfg["key_period_raise"]:
        steps = max(steps, cfg["key_period_raise"])
        reasons.append("key_period:" + period.get("name", period["start"]))
    return raise_warning(base, steps), reasons


# --- plan 1.7: routing --------------------------------------------------------------------------
def routes_to_city(cfg: dict, level: int | None, warning: str | None) -> bool:
    return (level is not None and level <= cfg["city_min_level"]) or warning_at_least(warning, cfg["city_min_warning"])


def haversine_m(lat1, lon1, lat2, lon2) -> float:
    import math
    r = 6_371_000.0
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * r * math.asin(math.sqrt(a))
