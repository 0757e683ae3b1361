"""Builds lbd's one compiled module, the data plane's lane (lbd/proxy/_lane.pyx), when it can.

Everything else is in pyproject.toml. The extension is optional: without a C compiler (or
when the build fails) lbd installs and runs on its pure-Python data plane, and says so.
"""

from setuptools import Extension, setup

try:
    from Cython.Build import cythonize
except ImportError:  # build isolation normally provides Cython (pyproject's build-system)
    cythonize = None

extensions = []
if cythonize is not None:
    extensions = cythonize(
        [Extension("lbd.proxy._lane", ["lbd/proxy/_lane.pyx"], optional=True)],
        compiler_directives={"language_level": 3},
        quiet=True,
    )

setup(ext_modules=extensions)
