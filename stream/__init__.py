"""The consumer service: Kafka in and out, micro-batching, the model's threads, the command line."""

import sys

# torch loads triton, when it is installed (torch's CUDA wheels bring it), with its compiler, which
# the first optimiser step imports; mqcast never compiles with it: its model is TorchScript. That
# costs about 70 MB of memory in a process that trains, and triton's bindings print a page of
# "nanobind: leaked ..." warnings when the interpreter exits (the demo ended with them). So a
# process that reaches mqcast's service code before torch (the `mqcast` command, the benches)
# leaves triton out; one that imported torch first keeps it as it is.
if "torch" not in sys.modules:
    sys.modules.setdefault("triton", None)
