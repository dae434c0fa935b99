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
