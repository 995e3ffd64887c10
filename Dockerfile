# syntax=docker/dockerfile:1
#
# GPU image for megatron_pause: the NVIDIA PyTorch container plus this package.
#
#   docker build -t megatron_pause .
#   enroot import dockerd://megatron_pause   # -> megatron_pause.sqsh for CONTAINER_IMAGE in examples/*.sh
#
# Base image. The NGC PyTorch container ships what pip cannot give us: a CUDA build of torch
# matched to its CUDA/cuDNN/NCCL, Transformer Engine (FP8, fused kernels) and apex. We pin the
# 25.09 release because:
#   * it is the image Megatron-LM itself tests megatron-core against (its docker/.ngc_version.lts);
#   * its Python is 3.12, which megatron-core 0.17+ requires (megatron-core==0.19.2 publishes
#     cp312 wheels for x86_64 and aarch64; its Requires-Python is >=3.12);
#   * its torch is a 2.9 build, above megatron-core's torch>=2.6.0 requirement. pip accepts an
#     installed pre-release ("2.9.0a0+...") as satisfying that, so nothing asks to replace it;
#   * since 25.03 the container sets PIP_CONSTRAINT=/etc/pip/constraint.txt, pinning every package
#     it was built with (torch included), so an install cannot silently swap them.
# Another 25.xx tag works the same way: docker build --build-arg BASE_IMAGE=nvcr.io/nvidia/pytorch:25.11-py3 .
ARG BASE_IMAGE=nvcr.io/nvidia/pytorch:25.09-py3
FROM ${BASE_IMAGE}

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1

WORKDIR /opt/megatron_pause
COPY . .

# Install without replacing the container's torch:
#   * our own constraint pins torch to exactly the version already installed (read from the
#     container at build time), on top of the container's PIP_CONSTRAINT file when present, so a
#     dependency that wanted another torch fails the build loudly instead of downloading a
#     generic CUDA wheel over the tuned one;
#   * --no-build-isolation builds this package with the container's setuptools instead of
#     fetching a fresh build environment (which could pull a torch into it);
#   * the checks afterwards prove torch is unchanged and still a CUDA build, and that the pinned
#     megatron-core is the one importable, and that the pause draw's C extension was compiled
#     (setup.py marks it optional, which would otherwise hide a failed build). Transformer
#     Engine is only looked up (find_spec): importing it needs a GPU driver, which
#     `docker build` does not have.
# If a build fails on a constraint conflict, edit that package's line in /etc/pip/constraint.txt
# (as NVIDIA documents) -- never torch's.
RUN set -eux; \
    TORCH_BEFORE="$(python -c 'import torch; print(torch.__version__)')"; \
    printf 'torch==%s\n' "$TORCH_BEFORE" > /tmp/container-torch.txt; \
    pip install --no-build-isolation \
        -c /tmp/container-torch.txt ${PIP_CONSTRAINT:+-c "$PIP_CONSTRAINT"} \
        "megatron-core==0.19.2" .; \
    TORCH_AFTER="$(python -c 'import torch; print(torch.__version__)')"; \
    test "$TORCH_BEFORE" = "$TORCH_AFTER"; \
    python -c "import torch; assert torch.version.cuda, 'torch lost its CUDA build'"; \
    python -c "import megatron.core as mc; assert mc.__shortversion__ == '0.19.2', mc.__version__"; \
    python -c "import importlib.util as u; assert u.find_spec('transformer_engine'), 'no Transformer Engine'"; \
    python -c "import megatron_pause.arguments"; \
    python -c "import megatron_pause.pause as p; assert p.kernel_in_use(), 'pause kernel not built'"; \
    rm /tmp/container-torch.txt

# Slurm jobs (examples/*.sh with CONTAINER_IMAGE) mount the submitting checkout at its own path
# and put it first on PYTHONPATH, so a job runs the code it was submitted from; the installed copy
# serves `docker run ... megatron-pause-pretrain --help` and jobs started without a checkout.
