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
``split_special_tokens=True`` keeps literal ``"<s>"`` etc. from being matched
as added tokens. One more step is needed because the converter turns on the
BPE's ``ignore_merges`` whenever the model has user-defined pieces: a
pre-tokenized segment that equals a vocabulary entry is emitted whole, which
is how the isolated ``"<pause>"`` finds its piece -- but it would also turn a
segment that is exactly ``"<unk>"``, ``"</s>"`` or ``"<0x41>"`` (a literal right
after a ``"<pause>"``, up to the next pause or the end) into that control or
byte id, where SentencePiece never emits such pieces for text.
:func:`_reserved_literal_splitter` cuts such segments at SentencePiece's own
piece boundaries, so every part is a normal piece with SentencePiece's id.

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
            backend = hf.backend_tokenizer
            if getattr(backend.model, "ignore_merges", False):
                from tokenizers import pre_tokenizers

                splitter = _reserved_literal_splitter(sp)
                if splitter is not None:
                    # After the converter's steps (dummy prefix, user-defined pieces isolated), so
                    # it sees exactly the segments the BPE model would look up whole.
                    backend.pre_tokenizer = pre_tokenizers.Sequence([backend.pre_tokenizer, splitter])
    if project.pause_appended:
        if len(hf) != project.pause_id:
            raise ValueError(
                f"the Hugging Face tokenizer has {len(hf)} ids, the project's has {project.base_vocab_size}: "
                "cannot place <pause> at the same id"
            )
        hf.add_tokens([AddedToken(pause_token, special=True, normalized=False)])
    check_same_vocabulary(hf, project)
    return hf, project


def _reserved_literal_splitter(sp):
    """A ``Split`` pre-tokenizer that cuts a segment equal to a control, unknown, unused or byte
    piece's text at the boundaries SentencePiece gives that text, or None if there are none.

    The boundaries come from SentencePiece itself: the text is encoded right after a user-defined
    piece, which SentencePiece never merges across, so the pieces that follow are the ones any
    segment with that text gets. Each part is then a normal piece (or a character that falls back
    to bytes on both sides), never the reserved id.
    """
    import re

    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import Regex, pre_tokenizers

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(sp.serialized_model_proto())
    kind = sentencepiece_model_pb2.ModelProto.SentencePiece
    user_defined = [p.piece for p in proto.pieces if p.type == kind.USER_DEFINED]
    reserved = [
        p.piece for p in proto.pieces if p.type in (kind.CONTROL, kind.UNKNOWN, kind.UNUSED, kind.BYTE)
    ]
    if not user_defined or not reserved:
        return None
    anchor = user_defined[0]
    alternatives = []
    for text in reserved:
        surfaces = [p.surface for p in sp.encode(anchor + text, return_type="proto").pieces]
        ends, end = [], 0
        for surface in surfaces:
            end += len(surface)
            if surface and end > len(anchor):
                ends.append(end - len(anchor))
        if "".join(surfaces) != anchor + text or not ends or ends[-1] != len(text):
            raise ValueError(f"cannot find SentencePiece's pieces for the text {text!r}")
        # Match every part but the first (Split keeps the unmatched first part as its own segment);
        # the look-behind/look-ahead pin the match to a segment that is exactly `text`.
        for start, stop in zip(ends[:-1], ends[1:]):
            alternatives.append(
                f"{re.escape(text[start:stop])}(?<=\\A{re.escape(text[:stop])})(?={re.escape(text[stop:])}\\z)"
            )
    if not alternatives:
        return None
    # Cheap guard first: only positions near the end of a short segment can match, so long
    # segments (whole documents) skip the alternation.
    longest = max(len(text) for text in reserved)
    pattern = f"(?=[\\s\\S]{{1,{longest}}}\\z)(?:{'|'.join(alternatives)})"
    return pre_tokenizers.Split(Regex(pattern), behavior="isolated")


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
