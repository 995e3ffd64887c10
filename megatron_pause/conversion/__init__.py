"""Checkpoint conversion between megatron_pause and Hugging Face Llama.

* :mod:`.dist_reader` -- global tensors of a ``torch_dist`` checkpoint, one process, no process group;
* :mod:`.llama` -- the megatron <-> HF Llama weight map (QKV grouping, SwiGLU halves, vocabulary rows);
* :mod:`.safetensors_writer` -- streamed, sharded safetensors with an index;
* :mod:`.hf_tokenizer` -- the project's tokenizer as an HF tokenizer with identical ids;
* :mod:`.export` / :mod:`.hf_import` -- the two directions (CLI: ``tools/convert_checkpoint.py``).

Both specs store their norms under the Transformer Engine names on disk, so reading a checkpoint needs
no renaming; in-memory state dicts go through :mod:`megatron_pause.models.te_names`.
"""
