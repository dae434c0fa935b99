"""The demo's district (tools/demo/run.py build_district): a trip of level III size, boards where the story needs them."""

from gasguard.registry import Registry
from gasguard.tools.demo.run import TRIP_MAX, TRIP_MIN, DemoOptions, build_district


def test_feeder_trip_cuts_off_a_level_iii_number_of_households_and_the_boards_sit_where_the_story_needs(tmp_path):
    world = build_district(tmp_path / "r.db", DemoOptions.fast(boards=3))
    with Registry(tmp_path / "r.db", readonly=True) as reg:
        below = reg.downstream(world.feeder.dev_id)
        stations = [d for d in below if d.profile == "station"]
        # the gateway's count: the feeder's own households and those of every station it feeds (plan 1.6.2.3(2))
        cut = world.feeder.households + sum(d.households for d in stations)
        assert cut == world.cut_off and TRIP_MIN <= cut <= TRIP_MAX
        ids = {d.dev_id for d in below}
        b1, b2, b3 = (reg.get(b.dev_id) for b in world.boards)
        assert b1.dev_id not in ids and b3.dev_id not in ids      # the leak and a quiet home: outside the trip
        assert b2.dev_id in ids                                    # the home that loses pressure with the trip
        home1 = reg.get(b1.upstream)
        assert not home1.key_area                                  # so the leak stays a plain level IV (blue)
        assert all(b.key and len(b.key) == 16 and b.state == "commissioned" for b in (b1, b2, b3))
