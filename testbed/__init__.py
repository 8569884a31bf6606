"""Real servers for tests, benchmarks, the demo and the drills, each on free loopback ports in a temp dir.

The floor beside ``contract``: it imports nothing of lampwatch but the contract (topics of the gateway's
status), so every floor above can use it and none of it depends on the product's code.

* :mod:`testbed.servers`: Mosquitto, InfluxDB 1.x, VictoriaMetrics and Alertmanager, one lifecycle
  (start, stop keeping data, kill -9, restart on the same port, close).
* :mod:`testbed.gateway`: ``lampwatch-gateway run`` as a real process with the same lifecycle, for drills
  and benchmarks that must restart, kill or replace it.
"""
