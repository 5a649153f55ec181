"""The command-line tools: nattrav-fast (cli/fast.py), nattrav-server (cli/server.py), nattrav-stun
(cli/stun.py), with the one exit-code table they share (cli/exits.py) and the progress lines that
nattrav-fast and the lab demo print (cli/events.py)."""
