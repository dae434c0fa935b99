import threading

import paho.mqtt.client as mqtt


def test_real_mosquitto_round_trip_and_restart(mosquitto):
    got = threading.Event()
    seen = []

    def on_message(c, u, msg):
        seen.append(msg.payload)
        got.set()

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    c.on_message = on_message
    c.connect("127.0.0.1", mosquitto.port)
    c.subscribe("t/#", qos=1)
    c.loop_start()
    try:
        c.publish("t/x", b"hello", qos=1).wait_for_publish(5)
        assert got.wait(5) and seen == [b"hello"]
        mosquitto.restart()
        assert mosquitto.proc.poll() is None
    finally:
        c.loop_stop()
        c.disconnect()


def test_persistent_session_and_retained_survive_broker_restart(mosquitto):
    """The fault tests rely on this: a QoS 1 message queued for an offline persistent subscriber, and a
    retained message, are still there after the broker restarts (persistence dir writable)."""
    from gasguard.testing.subscriber import Subscriber

    sub = Subscriber(mosquitto.port, "p/#", client_id="persist-sub", clean=False)
    sub.close()
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    pub.connect("127.0.0.1", mosquitto.port)
    pub.loop_start()
    try:
        pub.publish("p/queued", b'{"n": 1}', qos=1).wait_for_publish(5)
        pub.publish("p/retained", b'{"n": 2}', qos=1, retain=True).wait_for_publish(5)
    finally:
        pub.loop_stop()
        pub.disconnect()
    mosquitto.restart()
    sub = Subscriber(mosquitto.port, "p/#", client_id="persist-sub", clean=False)
    try:
        got = sub.wait(lambda ms: {t for t, _, _ in ms} >= {"p/queued", "p/retained"} and ms, 10)
        assert ("p/queued", {"n": 1}) in [(t, d) for t, d, _ in got]
    finally:
        sub.close()
