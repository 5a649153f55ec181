"""The punch planners (sans-IO): from both peers' reports, which strategy, which ports, which TTLs,
and the odds. Both peers derive the same plan, mirrored, so neither tells the other what it will do.

    udp.py          plan(): the UDP planner and what it returns (Plan, Attempt, Part)
    side.py         one peer's report as the UDP planner sees it (Side)
    odds.py         the strategies' odds in closed form, and the sizes that reach a target
    strategies.py   the UDP strategy table and the sentence saying why one was chosen
    tcp.py          plan(): the TCP planner (TcpPlan)
    tcp_mapping.py  what a TCP report says about its NAT (TcpMapping), and its rate history
    lan.py          the "same network" rule: which host (LAN) candidates of the peer both planners aim at
"""
