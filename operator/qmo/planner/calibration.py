"""Which vLLM the planner's constants were measured on, and observed KV pools fed back to correct a plan.

The terms of ``overheads`` follow vLLM's code; the few bytes the code does not fix statically (non-torch
growth, the profile run's floor, the first CUDA-graph capture, ...) were measured on one vLLM version and
belong to it. The serving image's tag names the version: a plan for a version we have no constants for
uses the newest measured set and says so ("uncalibrated for vLLM X, using 0.25.1").

A ``CalibrationRecord`` is what a running vLLM really allocated for one (GPU class, vLLM version, model) at
known settings (``status.plan.observed`` gives the figures). The planner predicts the record's own settings,
and the difference in bytes, the residual, is an extra per-GPU term in every plan for that GPU class,
version and model: what our model of vLLM missed there is assumed to be missed the same way elsewhere.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from qmo.planner.errors import PlanningError

MIB = 1 << 20
GIB = 1 << 30


@dataclass(frozen=True)
class Calibration:
    """The measured constants of one vLLM version (see docs/planner.md, section 2, for each one)."""

    vllm_version: str
    non_torch_bytes: int
    """Memory outside torch that appears between the worker's first snapshot and the end of profiling
    (``MemoryProfilingResult.non_torch_increase``): lazily loaded kernels, cuBLAS and attention workspaces."""
    non_torch_tp_bytes: int
    """Extra non-torch memory per GPU once tensor-parallel > 1 (custom all-reduce and pynccl buffers the
    profile run pre-allocates)."""
    profile_floor_bytes: int
    """The least the profile run's torch peak reaches however few tokens and sequences it runs."""
    sampler_fp32_bytes_per_logit: int
    """float32 bytes per (sequence, vocab entry) alive at the dummy sampler's peak."""
    sampler_programs: int
    """Rows of the Triton top-k/top-p scratch buffer (one per SM of the measured H100: 132)."""
    cudagraph_first_capture_bytes: int
    """What the first (largest) capture takes besides the forward working set of its batch."""
    cudagraph_per_graph_bytes: int
    """``profile_cudagraph_memory``'s estimate per further capture size (its 1 MiB floor on the H100)."""
    moe_cudagraph_working_sets: float
    """Fused-MoE capture memory in forward working sets of the largest captured batch (MoE models only)."""


CALIBRATIONS: Mapping[str, Calibration] = {
    "0.25.1": Calibration(
        vllm_version="0.25.1",
        non_torch_bytes=int(0.13 * GIB),
        non_torch_tp_bytes=int(0.45 * GIB),
        profile_floor_bytes=int(0.95 * GIB),
        sampler_fp32_bytes_per_logit=10,
        sampler_programs=132,
        cudagraph_first_capture_bytes=96 * MIB,
        cudagraph_per_graph_bytes=1 * MIB,
        moe_cudagraph_working_sets=7.0,
    ),
}
CALIBRATED_VERSION = "0.25.1"
"""The newest measured version; qmo.api.versions.VLLM_VERSION must name it (a unit test checks)."""

_TAG_VERSION = re.compile(r"^v?(\d+\.\d+(?:\.\d+)?)(?:[-+.].*)?$")


def vllm_version_of_image(image: str) -> str | None:
    """The vLLM version an image's tag names (``vllm/vllm-openai:v0.25.1`` -> ``0.25.1``), or None."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    if ":" not in last:
        return None
    match = _TAG_VERSION.match(last.rsplit(":", 1)[1])
    return match.group(1) if match else None


def calibration_for(vllm_image: str | None) -> tuple[Calibration, str | None]:
    """The constants for the image's vLLM, and a warning when they were measured on another version."""
    if vllm_image is None:
        return CALIBRATIONS[CALIBRATED_VERSION], None
    version = vllm_version_of_image(vllm_image)
    if version is not None and version in CALIBRATIONS:
        return CALIBRATIONS[version], None
    named = f"vLLM {version}" if version else f"image {vllm_image!r} (no version in its tag)"
    return CALIBRATIONS[CALIBRATED_VERSION], f"uncalibrated for {named}, using {CALIBRATED_VERSION}"


@dataclass(frozen=True, kw_only=True)
class CalibrationRecord:
    """What one vLLM really allocated: the KV tokens it reported at the settings it ran with."""

    gpu: str
    vllm_version: str
    model: str
    kv_cache_tokens: int
    tensor_parallel_size: int
    max_num_seqs: int
    max_num_batched_tokens: int
    gpu_memory_utilization: float
    max_model_len: int
    kv_cache_dtype: str = "auto"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "record") -> CalibrationRecord:
        """Parse one record (snake_case keys as in docs/planner.md); PlanningError names the bad key."""
        fields: dict[str, Any] = {}
        for key, kind in (
            ("gpu", str),
            ("vllm_version", str),
            ("model", str),
            ("kv_cache_tokens", int),
            ("tensor_parallel_size", int),
            ("max_num_seqs", int),
            ("max_num_batched_tokens", int),
            ("gpu_memory_utilization", float),
            ("max_model_len", int),
            ("kv_cache_dtype", str),
        ):
            if key not in data:
                if key == "kv_cache_dtype":
                    continue
                raise PlanningError(f"{where}.{key} is mandatory")
            value = data[key]
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise PlanningError(f"{where}.{key} must be a {kind.__name__}, got {value!r}")
            fields[key] = value
        if fields["kv_cache_tokens"] < 1:
            raise PlanningError(f"{where}.kv_cache_tokens must be >= 1")
        return cls(**fields)


def load_records(data: Any) -> tuple[CalibrationRecord, ...]:
    """Records from a JSON document: ``{"records": [...]}`` or a bare list."""
    items = data.get("records") if isinstance(data, Mapping) else data
    if not isinstance(items, list):
        raise PlanningError('a calibration file holds {"records": [...]} or a list of records')
    records = []
    for index, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise PlanningError(f"records[{index}] must be an object")
        records.append(CalibrationRecord.from_dict(item, f"records[{index}]"))
    return tuple(records)


def select_record(
    records: Iterable[CalibrationRecord], *, gpu: str, vllm_version: str, model: str
) -> CalibrationRecord | None:
    """The newest (last) record for this GPU class, vLLM version and model, if any."""
    chosen = None
    for record in records:
        if (record.gpu, record.vllm_version, record.model) == (gpu, vllm_version, model):
            chosen = record
    return chosen
