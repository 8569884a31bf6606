"""``lampwatch-ops``: the operator's command line, a composition root on the top floor beside simulator/.

It talks MQTT (retained alert and status topics, ops requests, device commands) and reads the store
through ingest; nothing imports it. docs/operators.md describes the commands and the JSON they send.
"""
