"""The training loop: read it top to bottom in :meth:`Trainer.fit`.

The trainer is model- and pause-agnostic. It receives built pieces (model
chunks, optimizer, scheduler, a forward-step function, microbatch loaders)
and narrow configs, and owns only the loop: step, schedule, log, evaluate,
checkpoint, stop. Pauses reach it already folded into ``labels`` and
``loss_mask``; it only reports the share of pause targets the loss saw.
"""

from __future__ import annotations

import dataclasses
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from megatron_pause import platform
from megatron_pause.config import CheckpointConfig, LoggingConfig, TrainingConfig
from megatron_pause.training import checkpoint
from megatron_pause.training.batches import MicrobatchLoader
from megatron_pause.training.metrics import MetricsLogger
from megatron_pause.training.step import eval_step, train_step


@dataclass
class TrainState:
    iteration: int = 0
    consumed_samples: int = 0
    consumed_tokens: int = 0  # sequence positions fed to the model (pauses included)
    skipped_steps: int = 0
    # Pause targets the model has seen; 0 marks a pause-free model (whose
    # <pause> rows a --finetune run must initialise rather than inherit).
    pause_targets_seen: int = 0


@dataclass
class FitResult:
    state: TrainState
    train_losses: list[float]
    valid_losses: list[tuple[int, float]]
    stopped_by: str  # "train_iters" | "signal" | "exit_interval" | "duration" | "skip_train"


class StopSignal:
    """Remembers SIGTERM/SIGUSR1 (Slurm sends one before the time limit);
    the loop checks it once per iteration, agreed across ranks."""

    def __init__(self, enabled: bool) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}
        if enabled:
            for sig in (signal.SIGTERM, signal.SIGUSR1):
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signum

    def any_rank(self) -> bool:
        flag = torch.tensor([1 if self.received is not None else 0], device=platform.device())
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Trainer:
    def __init__(
        self,
        *,
        training: TrainingConfig,
        checkpointing: CheckpointConfig,
        logging: LoggingConfig,
        seq_length: int,
        chunks: list[torch.nn.Module],
        optimizer: Any,
        scheduler: Any,
        forward_step: Callable,
        train_loader: MicrobatchLoader | None,
        valid_loader_factory: Callable[[], MicrobatchLoader] | None,
        logger: MetricsLogger,
        flops_per_token: float | None,
        peak_flops: float | None,
        config_dict: dict[str, Any],
        state: TrainState | None = None,
        checkpoint_metadata: dict[str, Any] | None = None,
    ) -> None:
        self.training = training
        self.checkpointing = checkpointing
        self.logging = logging
        self.seq_length = seq_length
        self.chunks = chunks
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.forward_step = forward_step
        self.train_loader = train_loader
        self.valid_loader_factory = valid_loader_factory
        self.log = logger
        self.flops_per_token = flops_per_token
        self.peak_flops = peak_flops
        self.config_dict = config_dict
        self.checkpoint_metadata = checkpoint_metadata  # more entries for megatron_pause.json
        self.state = state or TrainState()
        self.world_size = torch.distributed.get_world_size()

    # ------------------------------------------------------------------ loop
    def fit(self) -> FitResult:
        t = self.training
        if t.skip_train:
            return FitResult(self.state, [], [(self.state.iteration, self.evaluate())], "skip_train")
        stop = StopSignal(self.checkpointing.exit_signal_handler)
        start_time = time.monotonic()
        train_losses: list[float] = []
        valid_losses: list[tuple[int, float]] = []
        stopped_by = "train_iters"
        try:
            while self.state.iteration < t.train_iters:
                step_start = time.monotonic()
                microbatches = self.train_loader.next_global_batch()
                # The loader may have cut trailing columns no target reaches (finetuning).
                seq_length = microbatches[0]["tokens"].shape[1]
                result = train_step(
                    self.chunks, self.optimizer, self.forward_step, microbatches,
                    seq_length, t.micro_batch_size, skip_nonfinite=t.skip_nonfinite_steps,
                )  # fmt: skip
                if result.update_successful:
                    self.scheduler.step(increment=1)
                else:
                    self.state.skipped_steps += 1
                self.state.iteration += 1
                self.state.consumed_samples = self.train_loader.consumed_samples
                self.state.consumed_tokens += t.global_batch_size * seq_length
                self.state.pause_targets_seen += result.pause_targets
                train_losses.append(result.lm_loss)
                step_time = time.monotonic() - step_start
                if self.state.iteration % self.logging.log_interval == 0:
                    self._log_train(result, step_time, seq_length)

                it = self.state.iteration
                if t.eval_interval and it % t.eval_interval == 0 and self.valid_loader_factory:
                    valid_losses.append((it, self.evaluate()))
                if self._should_save(it):
                    self.save()
                if stop.any_rank():
                    stopped_by = "signal"
                    self.log.info(f"received a stop signal at iteration {it}: saving and exiting")
                    break
                if t.exit_interval and it % t.exit_interval == 0:
                    stopped_by = "exit_interval"
                    self.log.info(f"--exit-interval {t.exit_interval} reached at iteration {it}")
                    break
                if (
                    t.exit_duration_in_mins
                    and (time.monotonic() - start_time) / 60 >= t.exit_duration_in_mins
                ):
                    stopped_by = "duration"
                    self.log.info(
                        f"--exit-duration-in-mins {t.exit_duration_in_mins} reached at iteration {it}"
                    )
                    break
            if self.checkpointing.save and not self._just_saved():
                self.save()
        finally:
            stop.restore()
        return FitResult(self.state, train_losses, valid_losses, stopped_by)

    # -------------------------------------------------------------- helpers
    def evaluate(self) -> float:
        """Mean loss over non-pause target tokens of --eval-iters global batches."""
        if self.valid_loader_factory is None:
            raise RuntimeError("no validation data: check --split / --data-path")
        loader = self.valid_loader_factory()
        loss_sum, tokens, correct, scored = 0.0, 0, 0, 0
        for _ in range(self.training.eval_iters):
            r = eval_step(
                self.chunks,
                self.forward_step,
                loader.next_global_batch(),
                self.seq_length,
                self.training.micro_batch_size,
            )
            loss_sum += r.loss_sum
            tokens += r.num_tokens
            correct += r.correct
            scored += r.scored
        loss = loss_sum / max(tokens, 1)
        # Accuracy only where the forward step's evaluation loss reports it (finetuning).
        accuracy = correct / scored if scored else None
        self.log.valid(self.state.iteration, loss, tokens, accuracy=accuracy)
        return loss

    def _log_train(self, result, step_time: float, seq_length: int) -> None:
        tokens = self.training.global_batch_size * seq_length
        tokens_per_sec = tokens / step_time if step_time > 0 else float("nan")
        mfu = None
        if self.flops_per_token and self.peak_flops:
            mfu = self.flops_per_token * tokens_per_sec / (self.peak_flops * self.world_size)
        grad_norm = None if result.grad_norm is None else float(result.grad_norm)
        self.log.train(
            {
                "iteration": self.state.iteration,
                "split": "train",
                "train_iters": self.training.train_iters,
                "lm_loss": result.lm_loss,
                "consumed_tokens": self.state.consumed_tokens,
                "lr": self.optimizer.param_groups[0]["lr"],
                "grad_norm": grad_norm,
                "tokens_per_sec": tokens_per_sec,
                "step_time_s": step_time,
                "mfu": mfu,
                "pause_fraction": result.pause_targets / max(result.targets, 1),
                "tokens": result.num_tokens,
                "pause_tokens": result.pause_targets,
                "skipped": not result.update_successful,
            }
        )

    def _should_save(self, iteration: int) -> bool:
        c = self.checkpointing
        return bool(c.save and c.save_interval and iteration % c.save_interval == 0)

    def _just_saved(self) -> bool:
        return checkpoint.latest_iteration(self.checkpointing.save) == self.state.iteration

    def save(self) -> None:
        start = time.monotonic()
        path = checkpoint.save_checkpoint(
            self.checkpointing.save,
            self.state.iteration,
            self.chunks,
            self.optimizer,
            self.scheduler,
            dataclasses.asdict(self.state),
            self.config_dict,
            sharding_type=self.checkpointing.dist_ckpt_optim_sharding,
            metadata=self.checkpoint_metadata,
        )
        self.log.info(f"saved checkpoint {path} in {time.monotonic() - start:.1f} s")
