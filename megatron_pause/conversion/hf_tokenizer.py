"""The project's tokenizer as a Hugging Face tokenizer folder, with the same ids.

Contract for ``<pause>`` (tested in ``tests/test_conversion_tokenizer.py``):
the pause is one id, and a literal ``"<pause>"`` in text encodes to it -- as
SentencePiece does for its user-defined ``<pause>`` piece -- both in the
project's tokenizer and in the exported one. All other text, including
literal ``"<s>"``/``"</s>"``/``"<unk>"``, is plain text on both sides
(SentencePiece never parses control tokens out of text), and no BOS/EOS is
added (Megatron preprocessing appends an end-of-document id itself).

A SentencePiece model goes through transformers' SentencePiece converter
(``AutoTokenizer`` on a folder holding only ``tokenizer.model``), which
reproduces its normaliser, dummy prefix, byte fallback and the ``<pause>``
piece (a ``Split`` pre-tokenizer) exactly. ``LlamaTokenizer`` must not be used:
it hard-codes Llama's whitespace handling and differs on leading spaces.
``split_special_tokens=True`` keeps literal ``"<s>"`` etc. plain text.
Known difference: a literal control token that forms a whole segment right after a literal
``"<pause>"`` (``"<pause><unk>"`` at the end of the text, or between two pauses) is that control
id in the HF tokenizer but plain text for SentencePiece: the converted BPE takes a segment equal to
a vocabulary entry whole, which is also how the isolated ``<pause>`` finds its piece. Text
produced by the pipeline never has it (pauses are inserted as ids). The fuzz test counts it.

A pause that is not a piece of the tokenizer (appended after the base
vocabulary) becomes an added token at that id.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from megatron_pause.tokenizer import HUGGINGFACE, PauseTokenizer, build_tokenizer, canonical_tokenizer_type


def load_hf_tokenizer(tokenizer_type: str, tokenizer_model: str, pause_token: str):
    """(Hugging Face tokenizer with the project's ids, the project's PauseTokenizer)."""
    from transformers import AddedToken, AutoTokenizer

    project = build_tokenizer(tokenizer_type, tokenizer_model, pause_token)
    if canonical_tokenizer_type(tokenizer_type) == HUGGINGFACE:
        hf = AutoTokenizer.from_pretrained(tokenizer_model, local_files_only=True)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            shutil.copyfile(tokenizer_model, os.path.join(tmp, "tokenizer.model"))
            import sentencepiece

            sp = sentencepiece.SentencePieceProcessor(model_file=tokenizer_model)
            pad = sp.id_to_piece(sp.pad_id()) if sp.pad_id() >= 0 else None
            hf = AutoTokenizer.from_pretrained(
                tmp, local_files_only=True, split_special_tokens=True, pad_token=pad,
                add_bos_token=False, add_eos_token=False,
            )  # fmt: skip
    if project.pause_appended:
        if len(hf) != project.pause_id:
            raise ValueError(
                f"the Hugging Face tokenizer has {len(hf)} ids, the project's has {project.base_vocab_size}: "
                "cannot place <pause> at the same id"
            )
        hf.add_tokens([AddedToken(pause_token, special=True, normalized=False)])
    check_same_vocabulary(hf, project)
    return hf, project


def check_same_vocabulary(hf, project: PauseTokenizer) -> None:
    if len(hf) != project.vocab_size:
        raise ValueError(f"Hugging Face tokenizer has {len(hf)} ids, the project's {project.vocab_size}")
    got = hf.convert_tokens_to_ids(project.pause_token)
    if got != project.pause_id:
        raise ValueError(
            f"{project.pause_token} is id {got} in the Hugging Face tokenizer, {project.pause_id} here"
        )
    if hf.eos_token_id != project.eod:
        raise ValueError(
            f"eos id {hf.eos_token_id} in the Hugging Face tokenizer, end-of-document {project.eod} here"
        )
