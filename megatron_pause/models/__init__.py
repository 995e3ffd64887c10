"""The GPT model: megatron-core's GPTModel built from typed configs, plus the pause vocabulary."""
