"""The edge agent process: one asyncio process that hosts the agent's parts.

site.py       the site file (TOML): parsed, validated, frozen dataclasses
process.py    the host: starts parts in order, supervises them, stops them in reverse
parts.py      which parts the agent runs, built from the site (plug a part in here)
health.py     the local HTTP endpoint: /healthz and /metrics
metrics.py    counters and gauges, rendered in Prometheus' text format
heartbeat.py  a built-in part: the event loop's responsiveness
logs.py       human or JSON-lines logging
statedir.py   the state directory and the lock that keeps one agent on it
run.py        `kommune edge run`: all of the above put together
"""
