"""Prometheus conventions for every GasGuard service (gateway, command): one registry per service instance.

`service_registry(component)` returns a CollectorRegistry that already carries
  process_*            CPU, memory, open files, start time (prometheus_client's ProcessCollector; Linux /proc)
  python_info, python_gc_*
  gasguard_build_info{component, version, python} 1
and the module turns off the `_created` series every counter and histogram would otherwise export (they double
the series count and no rule or panel uses them).

Naming: `gasguard_<component>_<what>_<unit>`; counters end in `_total` (prometheus_client adds it). A labelled
counter is created with every label value it can take set to zero (`zeroed(...)`), so `rate()` and
`increase()` see the first event and an alert on "reason=mic" has a series before the first MIC failure.
Alert rules and the dashboard that use these names: monitoring/ (docs/OPERATIONS.md, "Monitor").
"""

from __future__ import annotations

import platform

from prometheus_client import (CollectorRegistry, GCCollector, Info, PlatformCollector, ProcessCollector,
                               disable_created_metrics)

from gasguard import __version__

disable_created_metrics()       # process-wide: no `<name>_created` series from any GasGuard registry


def service_registry(component: str) -> CollectorRegistry:
    """A registry for one service instance with process, Python and build-info metrics."""
    r = CollectorRegistry()
    ProcessCollector(registry=r)
    PlatformCollector(registry=r)
    GCCollector(registry=r)
    Info("gasguard_build", "GasGuard build running in this process", registry=r).info(
        {"component": component, "version": __version__, "python": platform.python_version()})
    return r


def zeroed(metric, *label_sets):
    """Create the child of every label combination now (value 0) and return the metric.
    `label_sets` are tuples of label values, or single values for a one-label metric."""
    for values in label_sets:
        metric.labels(*(values if isinstance(values, tuple) else (values,)))
    return metric
