"""An interrupted run never leaves a dataset that looks complete.

SIGKILL (no cleanup possible) runs the tool as a subprocess reading a named pipe that the test
keeps open, so the kill lands deterministically mid-run: after batches have been written to the
temporary .bin, while the tool waits for more input. Ctrl-C and SIGTERM, which the tool handles,
are delivered in-process by a real os.kill from inside the pipeline (no interpreter start-up).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE_CORPUS = os.path.join(REPO, "examples", "data", "sample_corpus.jsonl.gz")
SAMPLE_MODEL = os.path.join(REPO, "examples", "data", "sample_tokenizer.model")
START_TIMEOUT_S = 240  # interpreter + torch + megatron.core import on a busy 2-core machine


def _tool_args(source: str, prefix: str) -> list[str]:
    """The preprocessing command line both interruption tests run: small batches, so that the
    run is still writing when the signal arrives."""
    return [
        "--input", source, "--output-prefix", prefix,
        "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", SAMPLE_MODEL,
        "--append-eod", "--insert-pauses", "0.1", "--batch-chars", "2000", "--log-interval-seconds", "0",
    ]  # fmt: skip


def _lines(n: int) -> bytes:
    with gzip.open(SAMPLE_CORPUS, "rt", encoding="utf-8") as f:
        return "".join(json.dumps(json.loads(line)) + "\n" for _, line in zip(range(n), f)).encode()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def _old_output(out) -> None:
    # A complete dataset from an earlier run under the same name must survive untouched.
    for ext, data in ((".bin", b"old-bin"), (".idx", b"old-idx")):
        (out / f"run_text_document{ext}").write_bytes(data)


def _assert_old_output_intact(out) -> list[str]:
    files = sorted(os.listdir(out))
    assert (out / "run_text_document.idx").read_bytes() == b"old-idx"
    assert (out / "run_text_document.bin").read_bytes() == b"old-bin"
    assert not (out / "run_text_document.pause.json").exists()
    assert [f for f in files if f.endswith(".idx")] == ["run_text_document.idx"]
    return files


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_ctrl_c_and_sigterm_clean_up(tmp_path, sig, monkeypatch, capsys):
    from megatron_pause.data import preprocess

    spec = importlib.util.spec_from_file_location(
        "preprocess_data_cli", os.path.join(REPO, "tools", "preprocess_data.py")
    )
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    src = tmp_path / "in.jsonl"
    src.write_bytes(_lines(40))
    out = tmp_path / "out"
    out.mkdir()
    _old_output(out)
    original = preprocess.Preprocessor._write_batch
    calls = []

    def write_then_signal(self, *args):
        original(self, *args)
        calls.append(sorted(os.listdir(out)))
        if len(calls) == 2:
            os.kill(os.getpid(), sig)  # handled at the next bytecode, in this (main) thread

    monkeypatch.setattr(preprocess.Preprocessor, "_write_batch", write_then_signal)
    previous = signal.getsignal(signal.SIGTERM)
    rc = cli.main(_tool_args(str(src), str(out / "run")))
    assert signal.getsignal(signal.SIGTERM) == previous  # the tool restores the caller's handler
    assert rc == 130 and len(calls) == 2
    assert any(".bin.tmp." in f for f in calls[1])  # it was interrupted mid-write
    assert _assert_old_output_intact(out) == ["run_text_document.bin", "run_text_document.idx"]
    assert "interrupted" in capsys.readouterr().err


def test_sigkill_mid_run_leaves_no_complete_looking_output(tmp_path):
    sig = signal.SIGKILL
    fifo = str(tmp_path / "input.jsonl")
    os.mkfifo(fifo)
    out = tmp_path / "out"
    out.mkdir()
    prefix = str(out / "run")
    _old_output(out)
    log = open(tmp_path / "tool.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, os.path.join(REPO, "tools", "preprocess_data.py"), *_tool_args(fifo, prefix)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=dict(os.environ, PYTHONWARNINGS="ignore"),
    )
    writer_state: dict = {}

    def feed() -> None:
        # open() blocks until the tool opens the pipe; the pipe then stays open (no EOF).
        handle = open(fifo, "wb")
        writer_state["handle"] = handle
        handle.write(_lines(40))
        handle.flush()

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        tmp_bins = []
        while time.monotonic() < deadline and proc.poll() is None:
            tmp_bins = [p for p in os.listdir(out) if ".bin.tmp." in p and os.path.getsize(out / p) > 0]
            if tmp_bins:
                break
            time.sleep(0.2)
        assert tmp_bins, (
            f"tool never wrote data (rc={proc.poll()}): {(tmp_path / 'tool.log').read_text()[-2000:]}"
        )
        time.sleep(0.5)  # let it block on the pipe again
        proc.send_signal(sig)
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if "handle" in writer_state:
            try:
                writer_state["handle"].close()
            except BrokenPipeError:
                pass
        log.close()
    files = _assert_old_output_intact(out)
    assert rc == -signal.SIGKILL
    assert any(".bin.tmp." in f for f in files)  # killed hard: temporaries remain, none named like output
