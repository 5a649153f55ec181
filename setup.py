# setuptools has no pyproject.toml key for cffi's build hook, so this one line registers it
# (the same shape as bcrypt and PyNaCl). Everything else lives in pyproject.toml.
from setuptools import setup

setup(cffi_modules=["build_ext.py:ffibuilder"])
