"""Node links: the edge agent's side of the node-link protocol (protocols/README.md) over
UDP and serial lines. Runs inside the agent process (CPython).

    part.py      LinksPart: every [[links]] of the site file, as one part of the agent
    udp.py       UdpTransport: one frame per datagram
    serial.py    SerialTransport: a UART/RS-485 device or a pty, through a StreamDecoder
    handler.py   LinkHandler: what both do with a frame; ack only after the commit;
                 Presence & co. handed to subscribers, nodes' answers to commands.py
    commands.py  Commands: the edge's commands to nodes, acked and retransmitted
    readings.py  which message becomes which outbox events; source_seq folding
    boots.py     each node's boot count, kept on disk (it is part of source_seq)
"""
