"""Every row and boundary of GRADING.md's tables (plan 1.6.2, 3.3), the one-step raise, routing, config."""

import datetime as dt

import pytest

from gasguard.grading import engine as G

CFG = G.load_config()

# plan 1.6.2: "N以上" includes N, "N以下" excludes N
LEVEL_ROWS = [
    # criterion, value, level
    ("households_cut_off", 0, None), ("households_cut_off", 999, None), ("households_cut_off", 1_000, 4),
    ("households_cut_off", 9_999, 4), ("households_cut_off", 10_000, 3), ("households_cut_off", 29_999, 3),
    ("households_cut_off", 30_000, 2), ("households_cut_off", 49_999, 2), ("households_cut_off", 50_000, 1),
    ("households_cut_off", 330_000, 1),
    ("deaths", 0, None), ("deaths", 1, 4), ("deaths", 2, 4), ("deaths", 3, 3), ("deaths", 9, 3),
    ("deaths", 10, 2), ("deaths", 29, 2), ("deaths", 30, 1),
    ("serious_injuries", 0, None), ("serious_injuries", 9, 4), ("serious_injuries", 10, 3),
    ("serious_injuries", 49, 3), ("serious_injuries", 50, 2), ("serious_injuries", 99, 2),
    ("serious_injuries", 100, 1),
    ("direct_loss_cny", 0, None), ("direct_loss_cny", 9_999_999, 4), ("direct_loss_cny", 10_000_000, 3),
    ("direct_loss_cny", 49_999_999, 3), ("direct_loss_cny", 50_000_000, 2), ("direct_loss_cny", 99_999_999, 2),
    ("direct_loss_cny", 100_000_000, 1),
    ("evacuated", 0, None), ("evacuated", 999, 4), ("evacuated", 1_000, 3), ("evacuated", 4_999, 3),
    ("evacuated", 5_000, 2), ("evacuated", 49_999, 2), ("evacuated", 50_000, 1),
]


@pytest.mark.parametrize("criterion,value,level", LEVEL_ROWS)
def test_level_table(criterion, value, level):
    assert G.level_for(value, CFG[f"{criterion}_levels"]) == level
    if criterion != "households_cut_off":
        assert G.grade_operator(CFG, {criterion: value}) == {criterion: level}


# plan 3.3.1-3.3.4 (1): 5万户以上 red, 3万(含)-5万 orange, 1万(含)-3万 yellow, 1万户以内 blue
WARNING_ROWS = [(0, None), (1, "blue"), (9_999, "blue"), (10_000, "yellow"), (29_999, "yellow"),
                (30_000, "orange"), (49_999, "orange"), (50_000, "red"), (200_000, "red")]


@pytest.mark.parametrize("households,warning", WARNING_ROWS)
def test_households_warning(households, warning):
    assert G.households_warning(CFG, households) == warning


def falling(start_pa, end_pa, minutes=20, step_s=60):
    n = minutes * 60 // step_s
    return [(i * step_s, start_pa + (end_pa - start_pa) * i / n) for i in range(n + 1)]


MPA = 1_000_000
# plan 3.3.1(2) red: 次高压A < 0.2 MPa, 高压A < 0.8 MPa; 3.3.2(2) orange: 次高压 < 0.4 MPa, 高压 < 1.6 MPa
PRESSURE_ROWS = [
    # class, end pressure (Pa), expected warning when it kept falling into it
    ("subhigh_a", 0.2 * MPA, "orange"),      # exactly 0.2 MPa is not "below 0.2" -> only the orange bound
    ("subhigh_a", 0.2 * MPA - 125, "red"),   # one protocol step (125 Pa) under -> red
    ("subhigh_a", 0.4 * MPA, None),          # exactly 0.4 MPa: neither
    ("subhigh_a", 0.4 * MPA - 125, "orange"),
    ("subhigh_b", 0.1 * MPA, "orange"),      # no red rule for sub-high B
    ("subhigh_b", 0.4 * MPA, None),
    ("high_a", 0.8 * MPA, "orange"),
    ("high_a", 0.8 * MPA - 125, "red"),
    ("high_a", 1.6 * MPA, None),
    ("high_b", 1.6 * MPA - 125, "orange"),
    ("high_b", 0.5 * MPA, "orange"),         # no red rule for high B
    ("high_b", 1.6 * MPA, None),
    ("medium_a", 0.01 * MPA, None),          # the plan has no pressure warning for medium/low networks
    ("low", 100, None),
]


@pytest.mark.parametrize("pclass,end_pa,warning", PRESSURE_ROWS)
def test_pressure_warning_when_still_falling(pclass, end_pa, warning):
    # 10 min from well above every bound to 100 Pa over end_pa, then 10 more minutes still falling to end_pa:
    # the last window is all under any bound that end_pa + 100 is under, with a downward trend
    samples = falling(2.0 * MPA, end_pa + 100, minutes=10) + [(600 + 60 * i, end_pa + 100 - 10 * i)
                                                              for i in range(1, 11)]
    now = samples[-1][0]
    assert samples[-1][1] == end_pa
    assert G.pressure_warning(CFG, pclass, samples, now)["warning"] == warning


def test_pressure_below_but_not_falling_is_no_warning():
    flat = [(i * 60, 0.15 * MPA) for i in range(30)]
    st = G.pressure_warning(CFG, "subhigh_a", flat, flat[-1][0])
    assert st["below"] and not st["falling"] and st["warning"] is None


def test_pressure_falling_needs_the_window_after_the_first_crossing():
    s = [(0, 0.25 * MPA), (60, 0.19 * MPA), (120, 0.18 * MPA), (180, 0.17 * MPA)]
    assert G.pressure_warning(CFG, "subhigh_a", s, 180)["warning"] is None          # 2 min < 10 min window
    s += [(60 * i, 0.17 * MPA - 1000 * i) for i in range(4, 12)]
    st = G.pressure_warning(CFG, "subhigh_a", s, s[-1][0])
    assert st["warning"] == "red" and st["crossed_at"] == 60


def test_pressure_recovering_is_not_falling():
    s = [(60 * i, 0.19 * MPA - 2000 * i) for i in range(5)] + [(60 * i, 0.18 * MPA + 1000 * i) for i in range(5, 15)]
    assert G.pressure_warning(CFG, "subhigh_a", s, s[-1][0])["warning"] is None


def test_window_is_configuration():
    cfg = G.load_config({"falling_window_s": 60})
    s = [(0, 0.25 * MPA), (60, 0.19 * MPA), (120, 0.18 * MPA)]
    assert G.pressure_warning(cfg, "subhigh_a", s, 120)["warning"] == "red"


WEEKDAY = dt.date(2026, 11, 24)
HOLIDAY_CFG = G.load_config({"key_periods": [{"start": "2026-10-01", "end": "2026-10-07", "name": "国庆"}]})


@pytest.mark.parametrize("base,key_area,day,expected", [
    ("blue", False, WEEKDAY, "blue"),
    ("blue", True, WEEKDAY, "yellow"),
    ("yellow", True, WEEKDAY, "orange"),
    ("orange", True, WEEKDAY, "red"),
    ("red", True, WEEKDAY, "red"),                          # nothing above red
    ("blue", False, dt.date(2026, 10, 1), "yellow"),        # first day of the period (inclusive)
    ("blue", False, dt.date(2026, 10, 7), "yellow"),        # last day (inclusive)
    ("blue", False, dt.date(2026, 10, 8), "blue"),
    ("blue", False, dt.date(2026, 9, 30), "blue"),
    ("blue", True, dt.date(2026, 10, 3), "yellow"),         # "或": key area OR period, one step, not two
    (None, True, WEEKDAY, None),
])
def test_key_area_and_key_period_raise_one_step(base, key_area, day, expected):
    assert G.final_warning(HOLIDAY_CFG, base, key_area, day)[0] == expected


@pytest.mark.parametrize("level,warning,city", [
    (4, "blue", False), (3, "yellow", True), (2, "orange", True), (1, "red", True),
    (None, "blue", False), (None, "orange", True), (4, "yellow", True), (None, None, False)])
def test_routing_plan_1_7_and_3_4(level, warning, city):
    assert G.routes_to_city(CFG, level, warning) is city


def test_routing_thresholds_are_configuration():
    cfg = G.load_config({"city_min_warning": "orange", "city_min_level": 2})
    assert not G.routes_to_city(cfg, 3, "yellow")
    assert G.routes_to_city(cfg, 2, "orange")


def test_level_to_warning_colour_plan_3_3():
    assert [G.LEVEL_WARNING[lv] for lv in (1, 2, 3, 4)] == ["red", "orange", "yellow", "blue"]


def test_defaults_are_the_plans_numbers():
    assert CFG["phone_deadline_s"] == 20 * 60 and CFG["written_deadline_s"] == 45 * 60     # plan 4.1.2
    assert CFG["projection_hours"] == 24                                                     # plan 1.6.2
    assert CFG["pressure_red_mpa"] == {"subhigh_a": 0.2, "high_a": 0.8}                      # plan 3.3.1(2)


def test_config_changes_thresholds(tmp_path):
    p = tmp_path / "gw.toml"
    p.write_text('[grading]\nhouseholds_cut_off_levels = [40000, 20000, 5000, 500]\ndistrict = "shizhong"\n')
    cfg = G.load_config(p)
    assert cfg["district"] == "shizhong"
    assert G.households_level(cfg, 5_000) == 3 and G.households_level(cfg, 4_999) == 4


@pytest.mark.parametrize("table,hint", [
    ({"phone_deadline": 60}, "did you mean 'phone_deadline_s'"),
    ({"households_cut_off_levels": [1000, 10000, 30000, 50000]}, "strictly decreasing"),
    ({"written_deadline_s": 600}, "later than phone_deadline_s"),
    ({"city_min_warning": "purple"}, "choose one of"),
    ({"phone_deadline_s": "20 min"}, "expected float"),
    ({"key_periods": [{"start": "2026-10-07", "end": "2026-10-01"}]}, "YYYY-MM-DD"),
    ({"warning_households": {"red": 1, "orange": 2, "yellow": 3, "blue": 4}}, "red > orange"),
])
def test_bad_config_says_what_to_fix(table, hint):
    with pytest.raises(G.GradingConfigError, match=hint):
        G.load_config(table)


# plan 3.3.x(1): next 3 days' load above the upstream plan: >50 % red, 30-50 % orange, 10-30 % yellow, <=10 % blue
@pytest.mark.parametrize("pct,warning", [
    (None, None), (0, None), (0.1, "blue"), (9.9, "blue"), (10, "yellow"), (29.9, "yellow"), (30, "orange"),
    (50, "orange"), (50.1, "red"), (120, "red")])
def test_supply_forecast_warning(pct, warning):
    assert G.forecast_warning(CFG, pct) == warning
