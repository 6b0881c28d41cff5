"""Build glue only: all metadata lives in pyproject.toml.

The C engine in csrc/ is compiled into ``mqueue._mq_cffi`` by cffi in API mode.
cffi compiles it against the stable ABI (it defines ``Py_LIMITED_API``, and
setuptools names the module ``_mq_cffi.abi3.so``), so wheels are tagged
``cp310-abi3``: one wheel for every CPython >= 3.10 (``requires-python``).
"""

from setuptools import setup

setup(
    cffi_modules=["csrc/build_ffi.py:ffibuilder"],
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
