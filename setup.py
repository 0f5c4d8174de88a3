"""Builds the C extensions of the publishing hot path, ``stream._messages`` (the forecast messages'
text) and ``stream._records`` (their Kafka record framing and key hashing); everything else is declared in
pyproject.toml.

Both are optional: where no C compiler is found the install goes on without them, and
``stream.publish`` and ``stream.bulk_send`` do the same work in Python, several times slower.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("stream._messages", ["stream/_messages.c"], optional=True, extra_compile_args=["-O2"]),
        Extension("stream._records", ["stream/_records.c"], optional=True, extra_compile_args=["-O2"]),
    ]
)
