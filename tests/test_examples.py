"""The launch scripts in examples/: syntax, lint, and what they actually launch.

Slurm is not available here, so stand-in ``sbatch``/``srun``/``scontrol`` executables are put
first on PATH. The stand-in ``sbatch`` reads the script's ``#SBATCH`` header (command-line
options override it, as with the real one), sets the allocation's variables and runs the batch
script in its own process; ``scontrol`` answers ``show hostnames`` and records ``requeue``;
``srun`` records its options, command and environment and then, depending on FAKE_SRUN_MODE,
exits (``record``), waits for a signal (``sleep``), or really runs the command once per task in
parallel with SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID/SLURM_NODEID set (``run``, on CPU).

The recorded command line is parsed with the real parser and validated for the allocation's
world size, so a script whose layout cannot run (say, a global batch that does not divide) fails
here rather than after hours in a queue. The end-to-end tests that train need
``megatron_pause/pretrain.py`` and skip without it.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from megatron_pause import arguments
from megatron_pause.arguments import parse_args, validate_config
from megatron_pause.config import model_preset
from megatron_pause.testing import free_port

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
SCRIPTS = ["pretrain_pause_1b.sh", "pretrain_pause_130m.sh", "pretrain_pause_cpu.sh"]
SLURM_SCRIPTS = ["pretrain_pause_1b.sh", "pretrain_pause_130m.sh"]
SAMPLE_TOKENIZER = EXAMPLES / "data" / "sample_tokenizer.model"
HAVE_PRETRAIN = (REPO / "megatron_pause" / "pretrain.py").is_file()

FAKE_SBATCH = r"""
import json, os, re, sys

args = sys.argv[1:]
cli = {}
while args and args[0].startswith("--"):
    key, _, value = args.pop(0)[2:].partition("=")
    cli[key] = value or True
script, script_args = args[0], args[1:]
header = {}
with open(script) as f:
    for line in f:
        m = re.match(r"#SBATCH\s+--([\w-]+)(?:=(\S+))?", line)
        if m:
            header[m[1]] = m[2] if m[2] is not None else True
opts = {**header, **cli}
nodes, per_node = int(opts.get("nodes", 1)), int(opts.get("ntasks-per-node", 1))
out = os.environ["FAKE_SLURM_DIR"]
with open(os.path.join(out, "sbatch.json"), "w") as f:
    json.dump({"header": header, "effective": opts}, f)
env = dict(os.environ)
env.update(
    SLURM_JOB_ID="4242",
    SLURM_JOB_NAME=str(opts.get("job-name", "job")),
    SLURM_JOB_NODELIST=f"node[001-{nodes:03d}]",
    SLURM_NNODES=str(nodes),
    SLURM_JOB_NUM_NODES=str(nodes),
    SLURM_NTASKS=str(nodes * per_node),
    SLURM_NTASKS_PER_NODE=str(per_node),
    SLURM_SUBMIT_DIR=os.getcwd(),
)
# exec: the batch shell keeps this PID, so a test can signal it like Slurm does.
os.execvpe("bash", ["bash", script, *script_args], env)
"""

FAKE_SCONTROL = r"""
import os, sys

cmd = sys.argv[1:]
if cmd[:2] == ["show", "hostnames"]:
    print("\n".join(os.environ.get("FAKE_HOSTNAMES", "node001 node002").split()))
elif cmd[:1] == ["requeue"]:
    with open(os.path.join(os.environ["FAKE_SLURM_DIR"], "requeue.log"), "a") as f:
        f.write(" ".join(cmd) + "\n")
else:
    sys.exit(f"fake scontrol: unsupported {cmd}")
"""

FAKE_SRUN = r"""
import json, os, signal, subprocess, sys, time

out = os.environ["FAKE_SLURM_DIR"]
args = sys.argv[1:]
opts = {}
while args and args[0].startswith("-"):
    arg = args.pop(0)
    if "=" not in arg:
        sys.exit(f"fake srun: use --option=value, got {arg}")
    key, value = arg.split("=", 1)
    opts[key] = value
record = {"options": opts, "command": args, "env": dict(os.environ), "cwd": os.getcwd()}
with open(os.path.join(out, "srun.json.tmp"), "w") as f:
    json.dump(record, f)
os.replace(os.path.join(out, "srun.json.tmp"), os.path.join(out, "srun.json"))

mode = os.environ.get("FAKE_SRUN_MODE", "record")
if mode == "record":
    sys.exit(int(os.environ.get("FAKE_SRUN_EXIT", "0")))

if mode == "sleep":
    def on_term(signum, frame):
        open(os.path.join(out, "srun_got_term"), "w").close()
        sys.exit(143)
    signal.signal(signal.SIGTERM, on_term)
    open(os.path.join(out, "srun_started"), "w").close()
    time.sleep(60)
    sys.exit(0)

# mode == "run": one process per task, like srun inside the allocation.
ntasks, nnodes = int(os.environ["SLURM_NTASKS"]), int(os.environ["SLURM_NNODES"])
per_node = ntasks // nnodes
procs = []
for rank in range(ntasks):
    env = dict(os.environ, SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank % per_node),
               SLURM_NODEID=str(rank // per_node), SLURM_STEP_NUM_TASKS=str(ntasks))
    procs.append(subprocess.Popen(args, env=env))
signal.signal(signal.SIGTERM, lambda s, f: [p.send_signal(signal.SIGTERM) for p in procs])
status = 0
while any(p.poll() is None for p in procs):
    failed = [p.returncode for p in procs if p.returncode not in (None, 0)]
    if failed and opts.get("--kill-on-bad-exit") == "1":
        status = failed[0]
        for p in procs:
            if p.poll() is None:
                p.kill()
        break
    time.sleep(0.2)
for p in procs:
    p.wait()
sys.exit(status or next((p.returncode for p in procs if p.returncode), 0))
"""


# The cluster's GPUs as nvidia-smi reports them (the job's TE/FP8 check reads the compute capability).
FAKE_NVIDIA_SMI = r"""
import os, sys

assert sys.argv[1:] == ["--query-gpu=compute_cap", "--format=csv,noheader"], sys.argv
print("\n".join([os.environ.get("FAKE_COMPUTE_CAP", "9.0")] * 8))
"""


def _fake_transformer_engine(root: Path, version: str) -> Path:
    """An importable-looking ``transformer_engine`` (a package and its metadata, nothing inside):
    what the jobs' start-up check looks for, without pretending any kernel exists."""
    (root / "transformer_engine").mkdir(parents=True)
    (root / "transformer_engine" / "__init__.py").write_text("")
    info = root / f"transformer_engine-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: transformer_engine\nVersion: {version}\n")
    return root


def _write_exe(path: Path, source: str) -> None:
    path.write_text(f"#!{sys.executable}\n{textwrap.dedent(source)}")
    path.chmod(0o755)


@pytest.fixture
def slurm(tmp_path, monkeypatch):
    """Stand-in Slurm on PATH; returns a helper to submit a script and read what srun saw.

    The stand-in cluster has H100-class GPUs (a stand-in ``nvidia-smi``) and, unless a test
    submits with ``te=False``, a Transformer Engine the jobs can find; this process's
    ``validate_config`` is told the same, so the launched command line is checked as it would be
    on the cluster."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record_dir = tmp_path / "slurm"
    record_dir.mkdir()
    _write_exe(bin_dir / "sbatch", FAKE_SBATCH)
    _write_exe(bin_dir / "scontrol", FAKE_SCONTROL)
    _write_exe(bin_dir / "srun", FAKE_SRUN)
    _write_exe(bin_dir / "nvidia-smi", FAKE_NVIDIA_SMI)
    te_root = _fake_transformer_engine(tmp_path / "te", "2.8.0")
    monkeypatch.setattr(arguments, "transformer_engine_available", lambda: True)

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    prefix = data_dir / "c4_text_document"
    for ext in (".bin", ".idx"):
        Path(f"{prefix}{ext}").write_bytes(b"")
    tokenizer = tmp_path / "tok" / "sp.model"
    tokenizer.parent.mkdir()
    tokenizer.write_bytes(b"")

    class Slurm:
        dir = record_dir
        data_prefix = str(prefix)
        tokenizer_model = str(tokenizer)
        checkpoint_dir = str(tmp_path / "ckpt")

        te_pythonpath = str(te_root)

        def env(self, te: bool = True, **overrides: str) -> dict[str, str]:
            env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
            if te:
                env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(te_root), env.get("PYTHONPATH")]))
            env.update(
                PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
                FAKE_SLURM_DIR=str(record_dir),
                PYTHON=sys.executable,
                DATA_PATH=self.data_prefix,
                TOKENIZER_MODEL=self.tokenizer_model,
                CHECKPOINT_DIR=self.checkpoint_dir,
                # torchrun-style variables in the submitting shell must not reach the tasks.
                RANK="7",
                WORLD_SIZE="9",
                LOCAL_RANK="3",
            )
            env.update(overrides)
            return env

        def submit(self, script: str, *sbatch_opts: str, timeout: float = 60, te: bool = True, **env: str):
            proc = subprocess.run(
                [str(bin_dir / "sbatch"), *sbatch_opts, str(EXAMPLES / script)],
                env=self.env(te, **env),
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
            return proc

        def srun_record(self) -> dict:
            return json.loads((record_dir / "srun.json").read_text())

        def sbatch_record(self) -> dict:
            return json.loads((record_dir / "sbatch.json").read_text())

        def requeues(self) -> list[str]:
            log = record_dir / "requeue.log"
            return log.read_text().splitlines() if log.exists() else []

    return Slurm()


def _launched_config(record: dict):
    command = record["command"]
    assert command[:3] == [sys.executable, "-m", "megatron_pause.pretrain"], command
    return parse_args(command[3:])


# ------------------------------------------------------------------------------------------
# Syntax and lint
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_syntax(script):
    subprocess.run(["bash", "-n", str(EXAMPLES / script)], check=True)
    assert os.access(EXAMPLES / script, os.X_OK), f"{script} is not executable"


@pytest.mark.skipif(
    shutil.which("shellcheck") is None, reason="shellcheck not installed (apt-get install shellcheck)"
)
@pytest.mark.parametrize("script", SCRIPTS)
def test_script_shellcheck(script):
    # -x from the repository root follows `source examples/slurm_pause_job.sh`, so the shared
    # job body is checked together with the variables each job script defines for it.
    proc = subprocess.run(
        ["shellcheck", "-x", str(EXAMPLES / script)], capture_output=True, text=True, cwd=REPO
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_shared_slurm_job_body_parses():
    subprocess.run(["bash", "-n", str(EXAMPLES / "slurm_pause_job.sh")], check=True)


# ------------------------------------------------------------------------------------------
# Slurm scripts: header, command line, environment
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("script", SLURM_SCRIPTS)
def test_sbatch_header(script, slurm):
    assert slurm.submit(script).returncode == 0
    header = slurm.sbatch_record()["header"]
    assert header["gpus-per-node"] == header["ntasks-per-node"] == "8"  # one task per GPU
    assert int(header["nodes"]) >= 1 and int(header["cpus-per-task"]) >= 1
    assert header["exclusive"] is True and header["requeue"] is True
    assert "%j" in header["output"] and "%j" in header["error"]
    assert header["open-mode"] == "append"  # requeued runs append to the same log
    assert header["job-name"].startswith("pause-")
    assert header["time"].count(":") == 2
    # USR1 to the batch shell ahead of the limit, matching the script's SIGNAL_LEAD default.
    assert header["signal"].startswith("B:USR1@")
    lead = header["signal"].split("@")[1]
    assert f': "${{SIGNAL_LEAD:={lead}}}"' in (EXAMPLES / script).read_text()


@pytest.mark.parametrize(
    "script, preset, nodes", [("pretrain_pause_1b.sh", "1b", 2), ("pretrain_pause_130m.sh", "130m", 1)]
)
def test_slurm_script_launches_the_intended_run(script, preset, nodes, slurm):
    proc = slurm.submit(script)
    assert proc.returncode == 0, proc.stderr
    record = slurm.srun_record()
    cfg = _launched_config(record)

    # The GPU fast path by default: TE layers, FP8 hybrid, FP8 attention (TE 2.8 on compute 9.0).
    assert cfg.model == model_preset(preset, transformer_impl="transformer_engine")
    assert cfg.precision.bf16 and not cfg.precision.fp16
    assert cfg.precision.fp8_format == "hybrid" and cfg.precision.fp8_dot_product_attention
    p = cfg.parallel
    assert p.use_distributed_optimizer and p.overlap_grad_reduce and p.overlap_param_gather
    assert (cfg.pause.pause_fraction, cfg.pause.pause_token) == (0.1, "<pause>")
    assert cfg.data.data_path == [slurm.data_prefix] and not cfg.data.mock_data
    assert cfg.tokenizer.tokenizer_model == slurm.tokenizer_model
    ck = cfg.checkpoint
    assert ck.save == ck.load == slurm.checkpoint_dir and ck.save_interval and ck.exit_signal_handler
    assert cfg.logging.tensorboard_dir == f"{slurm.checkpoint_dir}/tensorboard"
    assert cfg.logging.metrics_file == f"{slurm.checkpoint_dir}/metrics.jsonl"
    assert Path(slurm.checkpoint_dir, "tensorboard").is_dir()

    env = record["env"]
    world_size = int(env["SLURM_NTASKS"])
    assert world_size == 8 * nodes
    validate_config(cfg, world_size)  # the default layout runs on the default allocation
    assert env["MASTER_ADDR"] == "node001" and env["MASTER_PORT"] == "6000"
    assert env["CUDA_DEVICE_MAX_CONNECTIONS"] == "1"
    assert env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1" and env["TORCH_NCCL_AVOID_RECORD_STREAMS"] == "1"
    assert not {"RANK", "WORLD_SIZE", "LOCAL_RANK"} & env.keys()
    assert env["PYTHONPATH"].split(":")[0] == str(REPO) and record["cwd"] == str(REPO)
    assert record["options"] == {"--kill-on-bad-exit": "1"}  # no container unless asked
    assert "+ srun" in proc.stdout and slurm.requeues() == []


def test_1b_layout_scales_with_nodes(slurm):
    """Submitting with more nodes keeps a valid layout up to one micro batch per rank."""
    assert slurm.submit("pretrain_pause_1b.sh").returncode == 0
    cfg = _launched_config(slurm.srun_record())
    for nodes in (1, 2, 4, 8, 16):
        validate_config(cfg, 8 * nodes)


def test_env_and_extra_args_override(slurm):
    proc = slurm.submit(
        "pretrain_pause_1b.sh",
        "--nodes=1",
        TP="2",
        MICRO_BATCH_SIZE="2",
        MASTER_PORT="29555",
        FAKE_HOSTNAMES="gpu17 gpu18",
        EXTRA_ARGS="--model-size tiny --lr 0.5 --pause-fraction 0.2",
        TE_FP8="0",  # the tiny preset's FFN (344) is no FP8 GEMM width
    )
    assert proc.returncode == 0, proc.stderr
    record = slurm.srun_record()
    cfg = _launched_config(record)
    assert cfg.model == model_preset("tiny")  # EXTRA_ARGS come last and win
    assert (cfg.optimizer.lr, cfg.pause.pause_fraction) == (0.5, 0.2)
    assert cfg.parallel.tensor_model_parallel_size == 2 and cfg.training.micro_batch_size == 2
    assert record["env"]["MASTER_ADDR"] == "gpu17" and record["env"]["MASTER_PORT"] == "29555"
    validate_config(cfg, 8)


def test_empty_variables_leave_flags_out(slurm):
    proc = slurm.submit(
        "pretrain_pause_1b.sh",
        DATA_PATH="",
        TOKENIZER_MODEL="",
        TENSORBOARD_DIR="",
        METRICS_FILE="",
        PRECISION_ARGS="",
        OPTIMIZER_SHARDING_ARGS="",
        EXTRA_ARGS="--mock-data",
        TE_FP8="0",  # FP8 needs --bf16: no precision flags means no fast path either
    )
    assert proc.returncode == 0, proc.stderr
    cfg = _launched_config(slurm.srun_record())
    assert cfg.data.data_path == [] and cfg.data.mock_data and cfg.tokenizer.tokenizer_model is None
    assert cfg.logging.tensorboard_dir is None and cfg.logging.metrics_file is None
    assert not cfg.precision.bf16 and not cfg.parallel.use_distributed_optimizer
    validate_config(cfg, 16)


def test_weighted_data_path_and_container(slurm, tmp_path):
    a, b = tmp_path / "a" / "x_text_document", tmp_path / "b" / "y_text_document"
    for prefix in (a, b):
        prefix.parent.mkdir()
        for ext in (".bin", ".idx"):
            Path(f"{prefix}{ext}").write_bytes(b"")
    proc = slurm.submit(
        "pretrain_pause_1b.sh",
        DATA_PATH=f"0.3 {a} 0.7 {b}",
        CONTAINER_IMAGE="/images/megatron_pause.sqsh",
        CONTAINER_MOUNTS="/scratch:/scratch",
    )
    assert proc.returncode == 0, proc.stderr
    record = slurm.srun_record()
    cfg = _launched_config(record)
    assert cfg.data.data_path == ["0.3", str(a), "0.7", str(b)]
    validate_config(cfg, 16)

    opts = record["options"]
    assert opts["--container-image"] == "/images/megatron_pause.sqsh"
    assert opts["--container-workdir"] == str(REPO)
    mounts = opts["--container-mounts"].split(",")
    ckpt = slurm.checkpoint_dir
    expected = [
        str(REPO),
        ckpt,
        f"{ckpt}/tensorboard",
        str(Path(slurm.tokenizer_model).parent),
        str(a.parent),
        str(b.parent),
    ]
    assert mounts == [f"{d}:{d}" for d in expected] + ["/scratch:/scratch"]  # deduplicated, same paths inside


def test_exit_status_is_propagated_without_requeue(slurm):
    proc = slurm.submit("pretrain_pause_1b.sh", FAKE_SRUN_EXIT="3")
    assert proc.returncode == 3
    assert "training exited with status 3" in proc.stdout
    assert slurm.requeues() == []


@pytest.mark.parametrize("restarts, requeued", [("0", True), ("5", False)])
def test_time_limit_signal_saves_and_requeues(slurm, restarts, requeued):
    """Slurm's USR1 ahead of the limit: srun gets SIGTERM (the trainer saves and exits), then the
    job is requeued, unless it has already been requeued MAX_REQUEUES times."""
    proc = subprocess.Popen(
        [str(slurm.dir.parent / "bin" / "sbatch"), str(EXAMPLES / "pretrain_pause_1b.sh")],
        env=slurm.env(FAKE_SRUN_MODE="sleep", SLURM_RESTART_COUNT=restarts, MAX_REQUEUES="5"),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not (slurm.dir / "srun_started").exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "srun never started"
            time.sleep(0.05)
        time.sleep(0.3)
        os.kill(proc.pid, signal.SIGUSR1)  # the batch shell, as #SBATCH --signal=B:USR1 does
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert (slurm.dir / "srun_got_term").exists(), out + err
    assert "asking the training processes to save and exit" in out
    assert proc.returncode == 143  # srun's status is the job's
    if requeued:
        assert slurm.requeues() == ["requeue 4242"]
    else:
        assert slurm.requeues() == [] and "not requeueing" in err


# ------------------------------------------------------------------------------------------
# The GPU fast path (Transformer Engine + FP8) and its one switch, TE_FP8
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "script, preset", [("pretrain_pause_1b.sh", "1b"), ("pretrain_pause_130m.sh", "130m")]
)
def test_switch_goes_back_to_local_bf16(script, preset, slurm, monkeypatch):
    """TE_FP8=0 removes the TE spec and every FP8 flag and keeps bf16; it needs no Transformer
    Engine, so the job's check is skipped."""
    proc = slurm.submit(script, te=False, TE_FP8="0")
    assert proc.returncode == 0, proc.stderr
    command = slurm.srun_record()["command"]
    assert "--transformer-impl" not in command and not any(a.startswith("--fp8") for a in command)
    cfg = _launched_config(slurm.srun_record())
    assert cfg.model == model_preset(preset)  # local layers
    assert (
        cfg.precision.bf16
        and cfg.precision.fp8_format is None
        and not cfg.precision.fp8_dot_product_attention
    )
    monkeypatch.setattr(arguments, "transformer_engine_available", lambda: False)  # a cluster without TE
    validate_config(cfg, 8 * int(slurm.sbatch_record()["header"]["nodes"]))


@pytest.mark.parametrize("script", SLURM_SCRIPTS)
def test_job_without_transformer_engine_stops_before_launch(script, slurm):
    proc = slurm.submit(script, te=False)
    assert proc.returncode == 1
    assert "transformer_engine is not importable" in proc.stderr and "TE_FP8=0" in proc.stderr
    assert "stopping before launch" in proc.stderr
    assert not (slurm.dir / "srun.json").exists()  # no training step was started


def test_job_on_gpus_without_fp8_stops_before_launch(slurm):
    proc = slurm.submit("pretrain_pause_1b.sh", FAKE_COMPUTE_CAP="8.0")  # A100
    assert proc.returncode == 1
    assert "compute capability is 8.0" in proc.stderr and "TE_FP8=0" in proc.stderr
    assert not (slurm.dir / "srun.json").exists()


@pytest.mark.parametrize(
    "te_version, capability, dpa",
    [("2.8.0", "9.0", True), ("2.8.0", "8.9", False), ("1.5.0", "9.0", False), ("1.6.0", "10.0", True)],
)
def test_fp8_attention_only_where_te_and_gpu_support_it(slurm, tmp_path, te_version, capability, dpa):
    te_root = _fake_transformer_engine(tmp_path / f"te-{te_version}", te_version)
    proc = slurm.submit(
        "pretrain_pause_130m.sh",
        te=False,
        PYTHONPATH=os.pathsep.join(filter(None, [str(te_root), os.environ.get("PYTHONPATH")])),
        FAKE_COMPUTE_CAP=capability,
    )
    assert proc.returncode == 0, proc.stderr
    cfg = _launched_config(slurm.srun_record())
    assert cfg.model.transformer_impl == "transformer_engine" and cfg.precision.fp8_format == "hybrid"
    assert cfg.precision.fp8_dot_product_attention is dpa
    assert f"Transformer Engine {te_version}" in proc.stderr
    assert ("FP8 dot-product attention on" if dpa else "FP8 dot-product attention off") in proc.stderr


def test_fast_path_check_runs_in_the_container(slurm):
    """With CONTAINER_IMAGE the check runs as a one-task step inside the image (where TE lives),
    not in the batch shell's Python."""
    proc = slurm.submit("pretrain_pause_1b.sh", te=False, CONTAINER_IMAGE="/images/megatron_pause.sqsh")
    # The stand-in srun records and prints nothing, so the check "passes" with no flags; what
    # matters is that the batch shell did not run it itself (it has no TE: it would have failed).
    assert proc.returncode == 0, proc.stderr
    assert "transformer_engine is not importable" not in proc.stderr


def test_bad_switch_value_is_rejected(slurm):
    proc = slurm.submit("pretrain_pause_1b.sh", TE_FP8="yes")
    assert proc.returncode == 1 and "TE_FP8 must be 1" in proc.stderr
    assert not (slurm.dir / "srun.json").exists()


# ------------------------------------------------------------------------------------------
# CPU script
# ------------------------------------------------------------------------------------------


@pytest.fixture
def fake_python(tmp_path):
    """A PYTHON that records each invocation's argv instead of running anything."""
    log = tmp_path / "python_calls.jsonl"
    exe = tmp_path / "fake_python"
    _write_exe(
        exe,
        f"import json, sys\nwith open({str(log)!r}, 'a') as f:\n    f.write(json.dumps(sys.argv[1:]) + '\\n')\n",
    )
    return exe, log


@pytest.mark.parametrize("tp", ["1", "2"])
def test_cpu_script_launches_two_ranks(tmp_path, fake_python, tp):
    exe, log = fake_python
    prefix = tmp_path / "data" / "sample"
    prefix.parent.mkdir()
    for ext in (".bin", ".idx"):
        Path(f"{prefix}_text_document{ext}").write_bytes(b"")
    tokenizer = SAMPLE_TOKENIZER if SAMPLE_TOKENIZER.exists() else tmp_path / "tok.model"
    tokenizer.touch()
    env = dict(
        os.environ,
        PYTHON=str(exe),
        TP=tp,
        DATA_PREFIX=str(prefix),
        TOKENIZER_MODEL=str(tokenizer),
        OUTPUT_DIR=str(tmp_path / "out"),
    )
    subprocess.run(["bash", str(EXAMPLES / "pretrain_pause_cpu.sh")], env=env, check=True, timeout=60)
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(calls) == 1  # data already there: no preprocessing
    argv = calls[0]
    assert argv[:7] == [
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "megatron_pause.pretrain",
    ]
    cfg = parse_args(argv[7:])
    assert cfg.model == model_preset("tiny") and cfg.parallel.tensor_model_parallel_size == int(tp)
    assert cfg.data.data_path == [f"{prefix}_text_document"]
    assert cfg.checkpoint.save == cfg.checkpoint.load == str(tmp_path / "out" / "checkpoints")
    assert not cfg.precision.bf16  # fp32 on CPU
    validate_config(cfg, 2)


def test_cpu_script_preprocesses_missing_data(tmp_path, fake_python):
    exe, log = fake_python
    prefix = tmp_path / "data" / "sample"
    env = dict(os.environ, PYTHON=str(exe), DATA_PREFIX=str(prefix), OUTPUT_DIR=str(tmp_path / "out"))
    subprocess.run(["bash", str(EXAMPLES / "pretrain_pause_cpu.sh")], env=env, check=True, timeout=60)
    preprocess, train = [json.loads(line) for line in log.read_text().splitlines()]
    assert preprocess[0] == "tools/preprocess_data.py"
    flags = dict(zip(preprocess[1::2], preprocess[2::2]))
    assert flags["--input"] == "examples/data/sample_corpus.jsonl.gz" and flags["--output-prefix"] == str(
        prefix
    )
    assert flags["--tokenizer-model"] == "examples/data/sample_tokenizer.model"
    assert "--append-eod" in preprocess
    assert train[1] == "torch.distributed.run"


def test_cpu_script_preprocess_flags_exist():
    tool = REPO / "tools" / "preprocess_data.py"
    if not tool.exists():
        pytest.skip("tools/preprocess_data.py not written yet")
    used = [
        "--input",
        "--output-prefix",
        "--tokenizer-type",
        "--tokenizer-model",
        "--append-eod",
        "--workers",
    ]
    out = subprocess.run(
        [sys.executable, str(tool), "--help"], capture_output=True, text=True, check=True, cwd=REPO
    ).stdout
    assert all(flag in out for flag in used), [flag for flag in used if flag not in out]


# ------------------------------------------------------------------------------------------
# End to end: the scripts' real command lines train the tiny model on CPU
# ------------------------------------------------------------------------------------------


def _metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _check_train_lines(lines: list[dict], iterations: list[int]) -> None:
    train = [m for m in lines if m["split"] == "train"]
    assert [m["iteration"] for m in train] == iterations
    for m in train:
        for key in [
            "lm_loss",
            "tokens_per_sec",
            "mfu",
            "step_time_s",
            "grad_norm",
            "lr",
            "pause_fraction",
            "consumed_tokens",
        ]:
            assert key in m, f"{key} missing from {m}"
        assert m["lm_loss"] > 0 and m["tokens_per_sec"] > 0 and 0 < m["pause_fraction"] < 1


@pytest.mark.skipif(not HAVE_PRETRAIN, reason="megatron_pause/pretrain.py not written yet")
def test_1b_script_trains_tiny_on_cpu_and_resumes(slurm, tmp_path):
    """The 1B Slurm script's real command line, shrunk through EXTRA_ARGS to the tiny model on two
    CPU tasks (gloo), trains, checkpoints, and a second submission resumes from the checkpoint."""
    metrics = tmp_path / "metrics.jsonl"
    tiny = (
        "--model-size tiny --mock-data --micro-batch-size 1 --global-batch-size 2 --lr-warmup-iters 0 "
        "--log-interval 1 --eval-interval 2 --eval-iters 1 --save-interval 2 --num-workers 0"
    )
    env = dict(
        FAKE_SRUN_MODE="run",
        FAKE_HOSTNAMES="127.0.0.1",
        MASTER_PORT=str(free_port()),
        DATA_PATH="",
        TOKENIZER_MODEL=str(SAMPLE_TOKENIZER) if SAMPLE_TOKENIZER.exists() else "",
        TENSORBOARD_DIR="",
        METRICS_FILE=str(metrics),
        CUDA_VISIBLE_DEVICES="",
        TE_FP8="0",  # CPU: local layers
    )
    first = slurm.submit(
        "pretrain_pause_1b.sh",
        "--nodes=1",
        "--ntasks-per-node=2",
        timeout=600,
        te=False,
        EXTRA_ARGS=f"{tiny} --train-iters 2",
        **env,
    )
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    assert int(slurm.srun_record()["env"]["SLURM_NTASKS"]) == 2
    _check_train_lines(_metrics(metrics), [1, 2])
    assert any(m["split"] == "valid" and m["iteration"] == 2 for m in _metrics(metrics))
    assert any(Path(slurm.checkpoint_dir).iterdir()), "no checkpoint written"

    env["MASTER_PORT"] = str(free_port())
    second = slurm.submit(
        "pretrain_pause_1b.sh",
        "--nodes=1",
        "--ntasks-per-node=2",
        timeout=600,
        te=False,
        EXTRA_ARGS=f"{tiny} --train-iters 4",
        **env,
    )
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-4000:]
    _check_train_lines(_metrics(metrics), [1, 2, 3, 4])  # resumed at 3, appended to the same file


@pytest.mark.skipif(not HAVE_PRETRAIN, reason="megatron_pause/pretrain.py not written yet")
@pytest.mark.skipif(
    not (
        (REPO / "tools" / "preprocess_data.py").exists()
        and (REPO / "megatron_pause" / "data" / "dataset.py").exists()
    ),
    reason="tools/preprocess_data.py or megatron_pause/data/dataset.py not written yet",
)
def test_cpu_script_trains(tmp_path):
    corpus = tmp_path / "small.jsonl.gz"
    with gzip.open(EXAMPLES / "data" / "sample_corpus.jsonl.gz", "rt") as src, gzip.open(corpus, "wt") as dst:
        for _, line in zip(range(200), src):
            dst.write(line)
    env = dict(
        os.environ,
        PYTHON=sys.executable,
        OUTPUT_DIR=str(tmp_path / "out"),
        CORPUS=str(corpus),
        EXTRA_ARGS="--train-iters 2 --log-interval 1 --eval-interval 2 --eval-iters 1 --save-interval 2 --lr-warmup-iters 0",
        CUDA_VISIBLE_DEVICES="",
    )
    proc = subprocess.run(
        ["bash", str(EXAMPLES / "pretrain_pause_cpu.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    _check_train_lines(_metrics(tmp_path / "out" / "metrics.jsonl"), [1, 2])


# ------------------------------------------------------------------------------------------
# Dockerfile (docker cannot run here: check what it pins and how it installs)
# ------------------------------------------------------------------------------------------


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = (REPO / "Dockerfile").read_text()
    joined = re.sub(
        r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    )
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in joined.splitlines()
        if line.strip()
    ]


def test_dockerfile_base_image():
    instructions = _dockerfile_instructions()
    args = dict(arg.split("=", 1) for op, arg in instructions if op == "ARG" and "=" in arg)
    base = next(arg for op, arg in instructions if op == "FROM")
    base = re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], base)
    m = re.fullmatch(r"nvcr\.io/nvidia/pytorch:(\d\d)\.(\d\d)-py3", base)
    assert m, f"base image {base!r} is not an NGC PyTorch container"
    # 25.03+: Python 3.12 (megatron-core 0.17+ requires it), torch >= 2.6, and the
    # container's PIP_CONSTRAINT pinning its torch.
    assert (int(m[1]), int(m[2])) >= (25, 3)


def test_dockerfile_pins_megatron_core_like_pyproject():
    import tomllib

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    (pin,) = [d for d in deps if d.replace(" ", "").startswith("megatron-core")]
    runs = " ".join(arg for op, arg in _dockerfile_instructions() if op == "RUN")
    assert re.findall(r"megatron-core==[\d.]+", runs) == [pin.replace(" ", "")]
    assert f"mc.__shortversion__ == '{pin.split('==')[1]}'" in runs


def test_dockerfile_keeps_the_container_torch():
    runs = " ".join(arg for op, arg in _dockerfile_instructions() if op == "RUN")
    installs = re.findall(r"pip install[^;]*", runs)
    assert installs, "no pip install in the Dockerfile"
    for cmd in installs:
        assert "--no-build-isolation" in cmd and "-c /tmp/container-torch.txt" in cmd
        requirements = re.sub(r"-c\s+\S+", "", cmd)  # constraint files constrain, they do not install
        assert not re.search(r"(^|\s)['\"]?torch(\s|[=<>~'\"]|$)", requirements), f"installs torch: {cmd}"
    assert "torch==%s" in runs and 'test "$TORCH_BEFORE" = "$TORCH_AFTER"' in runs
    assert "torch.version.cuda" in runs
    # The C pause draw is optional for pip; in the image its absence would be a silent slowdown.
    assert "assert p.kernel_in_use()" in runs


def test_dockerignore_excludes_local_state():
    ignored = {
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", "**/__pycache__", "**/*.so"} <= ignored
    assert "examples" not in ignored and "megatron_pause" not in ignored


# ------------------------------------------------------------------------------------------
# benchmarks/bench_gpu.py: the parts that run without a GPU
# ------------------------------------------------------------------------------------------


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import bench_gpu

    return bench_gpu


def test_bench_summarizes_steady_state(bench):
    lines = [
        {
            "split": "train",
            "iteration": i,
            "tokens_per_sec": 10.0 * i,
            "step_time_s": 1.0 / i,
            "mfu": 0.01 * i,
            "lm_loss": 9 - i,
        }
        for i in range(1, 8)
    ]
    lines.insert(3, {"split": "valid", "iteration": 3, "lm_loss": 5.0})
    s = bench.summarize(lines, warmup=2)
    assert s["measured_iterations"] == 5 and s["iterations"] == 7
    assert s["tokens_per_sec"] == 50.0 and s["step_time_s"] == pytest.approx(0.2)
    assert s["mfu"] == pytest.approx(0.05) and s["final_lm_loss"] == 2
    assert (
        bench.summarize([{**line, "mfu": None} for line in lines if line["split"] == "train"], 2)["mfu"]
        is None
    )
    with pytest.raises(ValueError, match="no training iterations"):
        bench.summarize([{"split": "valid", "iteration": 1, "lm_loss": 1.0}], 0)


def test_bench_configurations(bench):
    assert bench.choose_configs("auto", te_available=True, fp8_capable=True) == (
        ["local-bf16", "te-bf16", "te-fp8"],
        {},
    )
    chosen, skipped = bench.choose_configs("auto", te_available=False, fp8_capable=True)
    assert chosen == ["local-bf16"] and set(skipped) == {"te-bf16", "te-fp8"}
    chosen, skipped = bench.choose_configs("te-bf16,te-fp8", te_available=True, fp8_capable=False)
    assert chosen == ["te-bf16"] and "compute capability" in skipped["te-fp8"]
    with pytest.raises(SystemExit, match="unknown --configs"):
        bench.choose_configs("fp4", True, True)
    # Every configuration's flags form a valid command line (TE present).
    for name in bench.ALL_CONFIGS:
        cfg = parse_args(
            [
                "--model-size",
                "130m",
                "--mock-data",
                "--micro-batch-size",
                "8",
                "--global-batch-size",
                "64",
                *bench.config_flags(name),
            ]
        )
        assert cfg.precision.bf16
        assert (cfg.model.transformer_impl == "transformer_engine") == name.startswith("te-")
        assert (cfg.precision.fp8_format == "hybrid") == name.endswith("fp8")


def test_bench_picks_the_wheel_for_this_python(bench, tmp_path, monkeypatch):
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    for name in [
        f"megatron_core-0.19.2-{tag}-{tag}-manylinux_2_28_x86_64.whl",
        "megatron_core-0.19.2-cp39-cp39-manylinux_2_28_x86_64.whl",
    ]:
        (tmp_path / name).write_bytes(b"")
    monkeypatch.setattr(bench, "WHEELS", tmp_path)
    assert bench._wheel_for_this_python("megatron_core").name.startswith(f"megatron_core-0.19.2-{tag}")
    assert bench._wheel_for_this_python("nothing_here") is None


def test_bench_without_cuda_says_so():
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_gpu.py"), "--iters", "3", "--warmup", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if proc.returncode != 2:
        pytest.skip("a CUDA device is present")
    assert "no CUDA device" in proc.stderr


def test_bench_reads_the_fusions_line(bench):
    log = "loading\nmegatron_pause: fusions on: bias-activation, rope; off: cross-entropy (needs CUDA)\nstep 1\n"
    assert bench.fusions_line(log) == "bias-activation, rope"
    assert bench.fusions_line("no such line") is None


def test_bench_peak_memory_from_nvidia_smi(bench, tmp_path, monkeypatch):
    """Peak = the highest reading during the run minus the reading before it; no nvidia-smi, no number."""
    counter = tmp_path / "calls"
    _write_exe(
        tmp_path / "nvidia-smi",
        f"""
        import sys
        from pathlib import Path
        assert "--query-gpu=memory.used" in sys.argv, sys.argv
        path = Path({str(counter)!r})
        n = len(path.read_text().splitlines()) if path.exists() else 0
        with path.open("a") as f:
            f.write("call\\n")
        print(1024 if n == 0 else 1024 + 512 * min(n, 4))  # MiB: baseline 1 GiB, then up to 3 GiB
        """,
    )
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    with bench.PeakMemory(interval_s=0.01) as memory:
        deadline = time.monotonic() + 20
        while len(counter.read_text().splitlines()) < 6 and time.monotonic() < deadline:
            time.sleep(0.02)
    assert memory.gib() == 2.0
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with bench.PeakMemory() as memory:
        pass
    assert memory.gib() is None


@pytest.fixture
def gpu_check(bench):
    import gpu_check

    return gpu_check


def test_gpu_check_without_cuda_says_so(gpu_check, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert gpu_check.main(["--skip-tests"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_gpu_check_runs_what_this_machine_has(gpu_check, bench, monkeypatch, capsys, tmp_path):
    """Orchestration on a stubbed H200 without Transformer Engine: both presets run local-bf16,
    the TE rows say why they are missing, and the table and targets are printed. (The runs
    themselves are stubbed: this checks the script, not a kernel.)"""
    import torch

    from megatron_pause.models import fusions

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "stub H200")
    monkeypatch.setattr(fusions, "transformer_engine_version", lambda: None)
    launched = []

    def fake_run(name, args, workdir, extra_pythonpath):
        launched.append((args.model_size, name, args.iters, args.micro_batch_size))
        return bench.Result(
            config=name, ok=True, iterations=args.iters, measured_iterations=args.iters - args.warmup,
            tokens_per_sec=1e5, step_time_s=0.5, mfu=0.4, final_lm_loss=6.5, peak_memory_gib=12.0,
            fusions="bias-activation, bias-dropout-add, cross-entropy", wall_s=30.0,
        )  # fmt: skip

    monkeypatch.setattr(bench, "run_config", fake_run)
    out_json = tmp_path / "check.json"
    assert gpu_check.main(["--skip-tests", "--workdir", str(tmp_path), "--output", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert launched == [("130m", "local-bf16", 30, 8), ("1b", "local-bf16", 20, 4)]
    assert "Transformer Engine is not importable here" in out
    assert re.search(r"1b\s+local-bf16\s+100,000\s+40.0%\s+12.0\s+6.5000@20", out), out
    assert re.search(r"1b\s+te-fp8 .*not run: Transformer Engine is not importable", out), out
    assert "1B TE-bf16 MFU >= 45%: not measured" in out
    report = json.loads(out_json.read_text())
    assert report["environment"]["transformer_engine"] is None and len(report["rows"]) == 6


def test_gpu_check_targets(gpu_check):
    def row(preset, config, tps, mfu, loss=6.0):
        return dict(
            preset=preset, config=config, ok=True, tokens_per_sec=tps, mfu=mfu, final_lm_loss=loss,
            iterations=20, peak_memory_gib=None, wall_s=60.0, fusions=None,
        )  # fmt: skip

    rows = [
        row("1b", "local-bf16", 4e4, 0.35, 6.01),
        row("1b", "te-bf16", 5e4, 0.47, 6.0),
        row("1b", "te-fp8", 6e4, 0.28, 6.02),
        row("130m", "te-bf16", 1e5, 0.3),
        row("130m", "te-fp8", 1.4e5, 0.21),
    ]
    lines = gpu_check.check_targets(rows)
    assert "1B TE-bf16 MFU >= 45%: PASS (47.0%)" in lines
    assert "1b TE-FP8 >= 1.3x TE-bf16 tokens/s: FAIL (1.20x)" in lines
    assert "130m TE-FP8 >= 1.3x TE-bf16 tokens/s: PASS (1.40x)" in lines
    assert any(
        line.startswith("1b loss after the last step, spread across configurations: 0.0200") for line in lines
    )
    table = gpu_check.format_table(rows[:1] + [dict(preset="1b", config="te-fp8", skipped="not run: no TE")])
    assert "not run: no TE" in table and "40,000" in table
