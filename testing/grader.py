"""The command's grader in this process, on the configured store, without the service around it (no MQTT):

    g, store, fence = district_grader(cfg)          # cfg: command/config.py's load(...)
    out = g.handle([(topic, payload), ...], now, fence)

Built as `CommandService` builds it (the registry read through its cache, the notification routes of
[command.notify]), loaded from the store, and holding the leader lease (an hour) so its passes may write."""

from __future__ import annotations


def district_grader(cfg, holder: str = "test"):
    from gasguard.command import notify
    from gasguard.command.grader import DistrictGrader
    from gasguard.command.service import Registry
    from gasguard.command.store import open_store
    store = open_store(cfg.store)
    store.migrate()
    reg = Registry(cfg.registry)
    g = DistrictGrader(cfg.grading, store, devices=reg.device, downstream=reg.downstream,
                       notify_routes=notify.routes(cfg.notify), gateway_silent_s=cfg.gateway_silent_s)
    g.load()
    return g, store, store.acquire_lease(holder, ttl=3600)
