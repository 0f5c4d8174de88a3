"""Builds the one C extension, ``stream._messages`` (the forecast messages' text); everything else
is declared in pyproject.toml.

The extension is optional: where no C compiler is found the install goes on without it, and
``stream.publish`` writes the same messages in Python, about five times slower.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("stream._messages", ["stream/_messages.c"], optional=True, extra_compile_args=["-O2"]),
    ]
)
