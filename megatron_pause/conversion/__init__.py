"""Checkpoint conversion between megatron_pause and Hugging Face Llama.

* :mod:`.dist_reader` -- global tensors of a ``torch_dist`` checkpoint, one process, no process group;
* :mod:`.llama` -- the megatron <-> HF Llama weight map (QKV grouping, SwiGLU halves, vocabulary rows);
* :mod:`.te_names` -- local <-> Transformer Engine parameter names (:func:`.te_names.rename_for_spec`);
* :mod:`.safetensors_writer` -- streamed, sharded safetensors with an index;
* :mod:`.hf_tokenizer` -- the project's tokenizer as an HF tokenizer with identical ids;
* :mod:`.export` / :mod:`.hf_import` -- the two directions (CLI: ``tools/convert_checkpoint.py``).
"""
