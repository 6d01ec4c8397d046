"""The vLLM version qmo is built and measured against: one constant for the default serving image, the
local CPU engine (``make vllm``) and the planner's calibration. A unit test fails when they drift."""

from __future__ import annotations

VLLM_VERSION = "0.25.1"
DEFAULT_VLLM_IMAGE = f"vllm/vllm-openai:v{VLLM_VERSION}"
# vLLM's own CPU image, which a class with device: cpu serves from when spec.serving.image is the default.
DEFAULT_VLLM_CPU_IMAGE = f"public.ecr.aws/q9t5s3a7/vllm-cpu-release-repo:v{VLLM_VERSION}"
