"""The one test kit: real edges for tests and benchmarks (signed-frame nodes, pty cables, a Semtech packet
forwarder, an MQTT subscriber, the gateway config writer, the gateway in a thread or as a process, a real
mosquitto) and the pytest plugin that offers them as fixtures. Product code never imports this package."""
