"""The generated methods' bytecode kept between starts (nattrav/codecache.py): a second process
reads what the first compiled, compiles nothing it already has, and its classes are exactly what
they would be without the table (same code, future flags and all); a file from another Python or
a damaged one is ignored; nothing is written under PYTHONDONTWRITEBYTECODE. Each case runs in a
fresh interpreter: installing routes that process's dataclasses and attrs through the table."""

from __future__ import annotations

import json
import os
import subprocess
import sys

CLASSES = '''
import dataclasses, attr, typing
@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    y: "typing.Tuple[int, ...]" = dataclasses.field(default_factory=tuple)
@attr.s(frozen=True, slots=True)
class Pair:
    a: int = attr.ib()
    b: "str" = attr.ib(default="b")
@attr.s(eq=False)
class Loose:
    c: int = attr.ib(default=3)
'''

PROBE = CLASSES + '''
import json, sys
from nattrav import codecache
p, q = Point(1), Pair(2)
try:
    p.x = 3
    frozen = False
except dataclasses.FrozenInstanceError:
    frozen = True
out = {
    "installed": codecache._installed, "new": codecache._new, "used": len(codecache._used),
    "repr": [repr(p), repr(q), repr(Loose())], "eq": [p == Point(1), q == Pair(2), hash(p) == hash(Point(1))],
    "frozen": frozen,
    "annotations": [repr(Point.__init__.__annotations__), repr(Pair.__init__.__annotations__),
                    repr(Loose.__init__.__annotations__)],
    "code": [Point.__init__.__code__.co_code.hex(), Pair.__init__.__code__.co_code.hex(),
             Point.__eq__.__code__.co_code.hex()],
}
import linecache
def fresh(fn):  # the function as compiling attrs' text afresh makes it (attrs keeps the text in linecache)
    name = fn.__code__.co_filename
    module = compile("".join(linecache.getlines(name)), name, "exec", __import__("__future__").annotations.compiler_flag, True)
    return next(c for c in module.co_consts if getattr(c, "co_name", None) == fn.__name__)
hashed = Pair.__hash__.__code__
out["attrs_exact"] = [hashed == fresh(Pair.__hash__), hashed.co_linetable == fresh(Pair.__hash__).co_linetable,
                      Pair.__init__.__code__ == fresh(Pair.__init__)]
if "--save" in sys.argv:
    out["saved"] = codecache.save()
print(json.dumps(out))
'''


def _run(tmp_path, *, install: bool, save: bool = False, env_extra: dict | None = None) -> dict:
    head = f"from nattrav import codecache\ncodecache.install({str(tmp_path / 'table.marshal')!r})\n" if install else ""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.update(env_extra or {})
    args = [sys.executable, "-c", head + PROBE] + (["--save"] if save else [])
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_a_second_start_compiles_nothing_and_makes_the_same_classes(tmp_path):
    seed = {"PYTHONHASHSEED": "7"}  # attrs' __hash__ text holds a number from it (next test)
    plain = _run(tmp_path, install=False, env_extra=seed)
    first = _run(tmp_path, install=True, save=True, env_extra=seed)
    assert first["installed"] and first["new"] > 0 and first["saved"] is True
    second = _run(tmp_path, install=True, save=True, env_extra=seed)
    assert second["new"] == 0 and second["used"] == first["used"]
    assert second["saved"] is False  # nothing worth a new file
    for got in (first, second):
        for field in ("repr", "eq", "frozen", "annotations", "code", "attrs_exact"):
            assert got[field] == plain[field], field
    assert plain["eq"] == [True, True, True] and plain["frozen"]


def test_attrs_hash_number_changes_with_the_hash_seed_and_the_code_is_still_exact(tmp_path):
    """attrs writes a per-process random number into a hashable class's __hash__ text: the table
    keeps one text per length of it and puts the number back, the code equal to compiling the
    text itself (its position table too)."""
    runs = [_run(tmp_path, install=True, save=True, env_extra={"PYTHONHASHSEED": seed}) for seed in ("1", "1", "2")]
    assert runs[1]["new"] == 0  # the same number: nothing compiled
    for got in runs:
        assert got["attrs_exact"] == [True, True, True]
        assert got["eq"] == [True, True, True]


def test_a_file_from_another_python_or_damaged_is_ignored(tmp_path):
    table = tmp_path / "table.marshal"
    _run(tmp_path, install=True, save=True)
    good = table.read_bytes()
    plain = _run(tmp_path, install=False)
    for bad in (b"\x00\x00\r\n" + good[4:], good[:4] + b"junk", good[: len(good) // 2]):
        table.write_bytes(bad)
        got = _run(tmp_path, install=True)
        assert got["new"] > 0  # compiled as without a table
        assert {k: got[k] for k in ("repr", "eq", "annotations", "code")} == {
            k: plain[k] for k in ("repr", "eq", "annotations", "code")}


def test_nothing_is_written_where_python_writes_no_bytecode(tmp_path):
    got = _run(tmp_path, install=True, save=True, env_extra={"PYTHONDONTWRITEBYTECODE": "1"})
    assert got["new"] > 0 and got["saved"] is False and not (tmp_path / "table.marshal").exists()


def test_the_table_is_named_for_the_interpreter():
    from nattrav import codecache

    path = codecache.cache_path()
    assert os.path.basename(os.path.dirname(path)) == "__pycache__"
    assert sys.implementation.cache_tag in os.path.basename(path)
