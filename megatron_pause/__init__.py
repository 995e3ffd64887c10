"""megatron_pause: pause-token training for GPT models on megatron-core.

Importing this package is cheap and side-effect free: it touches neither CUDA,
Transformer Engine nor a process group. Heavy pieces (megatron.core, the CPU
compatibility layer) are imported by the modules that need them.
"""

__version__ = "0.1.0"
