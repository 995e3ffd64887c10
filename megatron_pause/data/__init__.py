"""Data pipeline: offline preprocessing into Megatron indexed datasets, the pause sidecar that
records how a dataset was tokenized, and the datasets that read it at training time."""
