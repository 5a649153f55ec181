"""Child side of Lab.call: runs inside a namespace (started with `ip netns exec`).

stdin carries two pickles: the parent's sys.path (so the callable's module imports the same way), then
(fn, args, kwargs). stdout carries one pickle back: ("ok", value) or ("err", exception-or-None, text).
The callable's own prints go to stderr so they cannot corrupt the answer.
"""

from __future__ import annotations

import pickle
import sys
import traceback


def main() -> int:
    inp = sys.stdin.buffer
    out = sys.stdout.buffer
    sys.stdout = sys.stderr
    sys.path[:] = pickle.load(inp)
    try:
        fn, args, kwargs = pickle.load(inp)
        result = ("ok", fn(*args, **kwargs))
    except BaseException as exc:  # everything goes back to the parent, which re-raises it
        text = traceback.format_exc()
        result = ("err", exc, text)
    try:
        data = pickle.dumps(result)
    except Exception:
        if result[0] == "ok":
            data = pickle.dumps(("err", None, f"result of type {type(result[1]).__name__} cannot be pickled"))
        else:
            data = pickle.dumps(("err", None, result[2]))
    out.write(data)
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
