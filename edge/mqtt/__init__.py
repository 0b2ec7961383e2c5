"""MQTT reporting: the device side (reporter, commands, claims sync) and a reference consumer.

The contract (topics, payloads, QoS, trust model) is docs/mqtt.md; the JSON Schemas are in
``edge/schemas``. Heavy imports stay in the submodules, so ``import edge.mqtt`` is cheap.
"""
