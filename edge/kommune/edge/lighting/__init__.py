"""The lamp control loop: presence from lamps' own sensors turned into level commands
for the lamps around them, held while someone is there and faded back to idle after.
Runs inside the agent process (CPython), on the links part's command path.

    control.py   Control: the decisions, pure (state + functions; the caller's clock)
    part.py      LightingPart: subscribes to the links, sends the commands, reports
"""
