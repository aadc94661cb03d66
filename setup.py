# All metadata lives in pyproject.toml (the one source of truth nbdev 3 reads); this shim lets
# tools that still call `setup.py` build the same package.
from setuptools import setup

setup()
