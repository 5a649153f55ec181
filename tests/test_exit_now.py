"""exit_now (cli/exits.py): the commands leave without the interpreter's teardown, but nothing they
wrote is lost and the exit code is theirs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

# buffered stdout, as a command run from a shell has it (this suite may set PYTHONUNBUFFERED)
BUFFERED = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}


def test_exit_now_flushes_output_and_logging_and_keeps_the_code(tmp_path):
    log = tmp_path / "log.txt"
    code = textwrap.dedent(f"""
        import logging, sys
        from nattrav.cli.exits import exit_now
        handler = logging.FileHandler({str(log)!r})
        handler.setFormatter(logging.Formatter("%(message)s"))
        logging.getLogger().addHandler(handler)
        logging.getLogger().warning("logged")
        sys.stdout.write("x" * 100000)  # more than one buffer, the tail unflushed
        sys.stdout.write("end")
        sys.stderr.write("err-no-newline")
        exit_now(5)
        print("not reached")
    """)
    cp = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=BUFFERED)
    assert cp.returncode == 5
    assert cp.stdout == "x" * 100000 + "end"
    assert cp.stderr == "err-no-newline"
    assert log.read_text() == "logged\n"


def test_exit_now_on_a_closed_stdout_still_exits_with_the_code():
    code = "import sys\nfrom nattrav.cli.exits import exit_now\nsys.stdout.write('x' * 10)\nexit_now(3)"
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=BUFFERED)
    p.stdout.close()  # the reader went away: the flush meets a broken pipe
    assert p.wait(timeout=60) == 3
    assert b"Traceback" not in p.stderr.read()
