"""Checks of a machine rather than of a model: ``encnet doctor`` (doctor.py) and the GPU benchmark behind
``benchmarks/gpu.py`` and ``encnet doctor --bench`` (benchmark.py). They sit above the engines and use them
(the public training step, inference, distributed set-up); no engine imports them."""
