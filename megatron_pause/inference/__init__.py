"""Pause-inference (the paper's Algorithm 3): prompt + M pauses, outputs read after the last one."""
