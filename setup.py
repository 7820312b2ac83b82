"""Build script. The package itself is pure Python; the CUDA C++ backend (rnnfast._C,
built from csrc/ with torch's extension machinery) is added here when it lands, and
only where a CUDA toolkit and a CUDA build of torch exist. A CPU-only install never
attempts a CUDA build."""
from setuptools import setup

setup()
