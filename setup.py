# setuptools has no pyproject.toml key for cffi's build hook, so this registers it (the same shape as
# bcrypt and PyNaCl). Everything else lives in pyproject.toml, but for the wheel's tag: the extension
# is built against the stable ABI (cffi defines Py_LIMITED_API, hence _core.abi3.so), so one wheel
# serves every CPython from 3.11 on and says so (cp311-abi3-linux_*), not cp3XY-cp3XY (pyproject's
# [tool.distutils] would do it too, but setuptools still calls that experimental).
from setuptools import setup

setup(cffi_modules=["build_ext.py:ffibuilder"], options={"bdist_wheel": {"py_limited_api": "cp311"}})
