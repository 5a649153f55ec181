"""Bytecode for the methods dataclasses and attrs generate, kept from one process start to the next.

@dataclass and attrs write each class's __init__, __repr__, __eq__, ... as source text and compile
it when the class is made, at every import: a nattrav-fast start makes ~50 dataclasses of ours,
~50 attrs classes of Trio's and aioquic's dataclasses, and compiling their ~400 generated functions
was ~35 ms of its ~0.22 s of CPU at zero delay (issue 13), where the rest of the module code comes
from .pyc files. Python keeps no bytecode for such text, so this module does: while it is
installed, those two compile steps look the text up in a table (the exact source, file name, mode
and compiler flags: the same input gives the same code object; attrs' one varying number aside,
_compile_seeded) and compile only what is new;
`save()` writes the table beside the package's own bytecode, by the rules Python keeps for .pyc
files there (its __pycache__, named for this interpreter, the importlib magic number first: another
Python's file is never read; nothing is written under PYTHONDONTWRITEBYTECODE). A file that cannot
be read is ignored and one that cannot be written is skipped: the classes are then made exactly as
without this module.

Standard library only: cli/launch.py installs it before the imports it speeds up.
`python -m nattrav.codecache` makes the file explicitly (as compileall does for .pyc files).
"""

import __future__
import marshal
import os
import sys

_FUTURE_MASK = 0
for _name in __future__.all_feature_names:
    _FUTURE_MASK |= getattr(__future__, _name).compiler_flag

_codes: dict = {}  # (source, filename, mode, flags) -> code object
_used: set = set()  # the keys this process asked for: what a saved table keeps
_known_files: set = set()  # the file names the table read had
_new = 0  # entries this process compiled that are worth a new file (see _compile)
_installed = False
_path: str | None = None  # the table's file once installed


def cache_path() -> str:
    """Where the table lives: the nattrav package's __pycache__, named for this interpreter and
    its optimization level (compile() strips asserts under -O), as a .pyc file would be."""
    here = os.path.dirname(os.path.abspath(__file__))
    opt = f".opt-{sys.flags.optimize}" if sys.flags.optimize else ""
    return os.path.join(here, "__pycache__", f"generated.{sys.implementation.cache_tag}{opt}.marshal")


def _magic() -> bytes:
    import importlib.util

    return importlib.util.MAGIC_NUMBER


def _compile(source: str, filename: str, mode: str, flags: int, variant: bool = False):
    global _new
    key = (source, filename, mode, flags)
    _used.add(key)
    code = _codes.get(key)
    if code is None:
        code = compile(source, filename, mode, flags, dont_inherit=True)
        _codes[key] = code
        # a class the table did not know, or one of the few `variant`s of a known one (below), is
        # worth writing the table again; a known attrs class whose text changed otherwise is not
        # (a text that changes at every start would rewrite it at every exit)
        if variant or filename == "<string>" or filename not in _known_files:
            _new += 1
    return code


def _exec_for(flags: int):
    """exec() as a module whose code has future `flags` calls it (dataclasses': none)."""
    def cached_exec(source, globals=None, locals=None, /):
        if isinstance(source, str):
            source = _compile(source, "<string>", "exec", flags)
        return exec(source, globals, locals)
    return cached_exec


def _compile_for(flags: int):
    """compile() as a module whose code has future `flags` calls it (attrs' _make: annotations):
    compile() inherits the caller's future statements, so the table's entry carries them."""
    def cached_compile(source, filename, mode, more=0, dont_inherit=False, optimize=-1):
        if not isinstance(source, str) or more or dont_inherit or optimize != -1:
            return compile(source, filename, mode, more | (0 if dont_inherit else flags), True, optimize)
        return _compile_seeded(source, filename, mode, flags)
    return cached_compile


# attrs writes a per-process random number (a hash of a name: PYTHONHASHSEED) into a hashable
# class's __hash__, `hash((<number>, self.a, ...))`: the text is new at every start. The table keeps
# that script with a stand-in as long as the number's text (1...1: every column of the code's
# position table stays the same; a folded negative literal spans its sign too) and the number goes
# into the compiled constants: compiling the text itself gives that very code. One variant per
# length of that text (19 or 20 characters for nearly every hash) is kept per class.
_SEED_LINE = None


def _compile_seeded(source: str, filename: str, mode: str, flags: int):
    global _SEED_LINE
    if _SEED_LINE is None:
        import re

        _SEED_LINE = re.compile(r"hash\(\(\n\s*(-?\d+),")
    found = _SEED_LINE.search(source)
    if found is None:
        return _compile(source, filename, mode, flags)
    stand_in = "1" * len(found.group(1))
    if stand_in in source:  # the stand-in must mean that number and nothing else
        return _compile(source, filename, mode, flags)
    general = source[:found.start(1)] + stand_in + source[found.end(1):]
    return _with_constant(_compile(general, filename, mode, flags, variant=True), int(stand_in),
                          int(found.group(1)))


def _with_constant(code, old: int, new: int):
    """`code` with the integer constant `old` as `new`, in its nested functions too."""
    consts = tuple(_with_constant(c, old, new) if isinstance(c, type(code)) else
                   new if type(c) is int and c == old else c for c in code.co_consts)
    return code.replace(co_consts=consts)


def _future_flags(module, function: str) -> int | None:
    fn = getattr(module, function, None)
    code = getattr(fn, "__code__", None)
    return None if code is None else code.co_flags & _FUTURE_MASK


def install(path: str | None = None) -> bool:
    """Read the table (from `path`, else cache_path(); if there is a good one) and route
    dataclasses' and attrs' compiles through it. True when installed; once per process."""
    global _installed, _path
    if _installed:
        return True
    _path = path or cache_path()
    _load(_path)
    import dataclasses

    if _future_flags(dataclasses, "_create_fn") is None and _future_flags(dataclasses, "_process_class") is None:
        return False  # not the dataclasses this was written against: leave it alone
    dataclasses.exec = _exec_for(_future_flags(dataclasses, "_process_class") or 0)
    try:
        from attr import _make
    except ImportError:
        _make = None
    flags = _future_flags(_make, "_compile_and_eval") if _make is not None else None
    if flags is not None:  # attrs that compiles there (else its compiles go on as they were)
        _make.compile = _compile_for(flags)
    _installed = True
    return True


def _load(path: str) -> None:
    global _codes
    try:
        with open(path, "rb") as f:
            raw = f.read()
        magic = _magic()
        if not raw.startswith(magic):
            return
        table = marshal.loads(raw[len(magic):])
    except (OSError, ValueError, EOFError, TypeError):
        return
    if isinstance(table, dict):
        _codes = {**table, **_codes}
        _known_files.update(key[1] for key in table if isinstance(key, tuple) and len(key) == 4)


def save(force: bool = False) -> bool:
    """Write the table (the entries this process used) when this process compiled a class the
    table lacked, or when `force`d; never under PYTHONDONTWRITEBYTECODE unless forced. True when
    written."""
    global _new
    if not _installed or not (_new or force) or (sys.dont_write_bytecode and not force):
        return False
    path = _path or cache_path()
    # what this process used, and the other variants of the classes it made: entries of classes
    # gone since leave the file
    files = {key[1] for key in _used} - {"<string>"}
    keep = {}
    for key, code in _codes.items():
        if key not in _used and key[1] not in files:
            continue
        try:
            marshal.dumps(code)
        except ValueError:  # a constant marshal cannot hold: compiled again next time
            continue
        keep[key] = code
    from .atomic import replace_file

    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        replace_file(path, _magic() + marshal.dumps(keep), mode=0o644)  # readable as the .pyc files are
    except OSError:
        return False
    _new = 0
    return True


def _main() -> int:
    """Make the file: import what nattrav-fast imports at start-up and the secure stack."""
    import importlib

    from nattrav import codecache  # the module nattrav-fast installs, not this __main__ copy

    codecache.install()
    import nattrav.cli.fast  # noqa: F401
    from nattrav.api.secure import SECURE_STACK

    for name in SECURE_STACK:
        importlib.import_module(name)
    ok = codecache.save(force=True)
    print(f"{codecache.cache_path()}: {len(codecache._codes)} generated functions" + ("" if ok else " (not written)"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(_main())
