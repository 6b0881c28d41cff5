"""Build glue only: all metadata lives in pyproject.toml.

The C engine in csrc/ is compiled into ``mqueue._mq_cffi`` by cffi in API mode.
"""

from setuptools import setup

setup(cffi_modules=["csrc/build_ffi.py:ffibuilder"])
