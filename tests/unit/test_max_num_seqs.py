"""``concurrency`` sizes the KV cache; ``--max-num-seqs`` is vLLM's scheduler ceiling, and the plan says why.

The demo asks ``concurrency: 64`` and vLLM gets ``--max-num-seqs=256``: the rule (the one asked for, else
vLLM's 256 raised to the target, never lowered to it) and its reason reach ``qmo plan``'s table, the
Planned condition, and the argv the Deployment runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from qmo.api.quantizedmodel import QuantizedModelSpec, parse_spec
from qmo.cli import main
from qmo.desired.common import Placement, ResolvedGPU
from qmo.desired.decision import plan_status
from qmo.desired.serving import plan_request, planned_message
from qmo.planner import gpu_by_name, plan
from qmo.planner.scheduler import max_num_seqs_for, max_num_seqs_reason
from qmo.sandbox.harness import EXAMPLES

CONFIG = Path(__file__).parent / "configs" / "llama-3.1-8b.json"


@pytest.mark.parametrize(
    ("max_num_seqs", "concurrency", "expected", "reason"),
    [
        (None, None, 256, "vLLM's default"),
        (
            None,
            64,
            256,
            "vLLM's default; concurrency 64 is what the KV cache holds at max-model-len, not a cap",
        ),
        (None, 256, 256, "concurrency 256 is what the KV cache holds"),
        (None, 512, 512, "vLLM's default 256 raised to concurrency 512"),
        (32, 16, 32, "as set"),
        (8, 64, 8, "as set, below concurrency 64: vLLM never runs that many sequences at once"),
    ],
)
def test_the_ceiling_is_the_one_asked_for_else_vllms_default_never_below_the_target(
    max_num_seqs: int | None, concurrency: int | None, expected: int, reason: str
) -> None:
    assert max_num_seqs_for(max_num_seqs=max_num_seqs, concurrency=concurrency) == expected
    assert reason in max_num_seqs_reason(max_num_seqs=max_num_seqs, concurrency=concurrency)


def demo_spec() -> QuantizedModelSpec:
    manifest = yaml.safe_load((EXAMPLES / "quantizedmodel.yaml").read_text())
    assert manifest["spec"]["serving"]["concurrency"] == 64
    return parse_spec(manifest["spec"])


def test_the_demos_planned_condition_says_why_vllm_gets_256_for_concurrency_64() -> None:
    spec = demo_spec()
    gpu = gpu_by_name(spec.serving.gpu_class)
    result = plan(json.loads(CONFIG.read_text()), plan_request(spec), gpu)
    assert result.fits and "--max-num-seqs=256" in result.vllm_args
    assert result.max_concurrency >= 64  # the target the KV cache was sized for
    status = plan_status(ResolvedGPU(spec=gpu, placement=Placement()), result, spec.quantization.method)
    message = planned_message(status, spec.serving)
    assert message.startswith(f"tp={result.tensor_parallel_size} kv={result.kv_cache_dtype} ")
    assert "max_num_seqs=256 (vLLM's default; concurrency 64 is what the KV cache holds" in message


def test_qmo_plan_prints_the_rule_on_its_max_num_seqs_line(capsys: pytest.CaptureFixture[str]) -> None:
    common = ["plan", "--config", str(CONFIG), "--quantization", "awq", "--max-model-len", "8192"]
    assert main([*common, "--concurrency", "64"]) == 0
    table = capsys.readouterr().out
    line = next(line for line in table.splitlines() if line.strip().startswith("max-num-seqs"))
    assert "256 (vLLM's default; concurrency 64 is what the KV cache holds at max-model-len" in line
    assert "--max-num-seqs=256" in table

    # The same rule as the operator's: a target above vLLM's default raises the ceiling to it.
    assert main([*common, "--concurrency", "300", "--output", "json"]) in (0, 1)
    assert '"max_num_seqs": 300' in capsys.readouterr().out
    assert main([*common, "--concurrency", "64", "--max-num-seqs", "32"]) == 0
    assert "32 (as set, below concurrency 64" in capsys.readouterr().out
