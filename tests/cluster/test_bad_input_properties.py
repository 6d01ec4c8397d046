"""Property-based specs (hypothesis) against the real API server and qmo's own parser.

Every generated spec is valid by construction; with one mutation from ``MUTATIONS`` it becomes invalid in a
known way. The API server (server-side dry run, strict field validation) must accept exactly the valid
ones and refuse each invalid one naming the field; qmo's parser (``qmo.api.quantizedmodel.parse_spec``,
what the operator uses on a stored object) must agree on both, with the same field path. A few valid
specs are then applied for real and must end Ready or Failed-with-reason. Counts are printed at the end.
"""

from __future__ import annotations

import copy
import itertools
import json
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from qmo.api.quantizedmodel import parse_spec
from qmo.desired.status import format_validation_error
from qmo.sandbox.chaos import settled
from qmo.sandbox.harness import EXAMPLE_REPO, install_crds
from qmo.sandbox.testing import Kube, SessionCluster
from qmo.sandbox.wait import wait_for

Spec = dict[str, Any]
GPU_CLASSES = ("h100-80gb", "l40s", "l4", "a100-80gb", "my-team-gpus")  # any DNS name is a valid spec
DEPLOYABLE_GPU_CLASSES = ("h100-80gb", "l40s", "l4")  # built-in GPUs the sandbox's nodes carry
BITS = {"awq": [None, 4], "gptq": [None, 4, 8], "w8a8": [None, 8], "prequantized": [None, 4, 8]}
BACKENDS = {
    "awq": ["llm-compressor", "autoawq", "gptqmodel"],
    "gptq": ["llm-compressor", "autogptq", "gptqmodel"],
}
METHODS = ("awq", "gptq", "w8a8", "fp8", "fp8-dynamic", "nvfp4", "bitsandbytes-nf4", "none", "prequantized")
DNS_LABEL = st.from_regex(r"\A[a-z]([a-z0-9-]{0,20}[a-z0-9])?\Z")
counts: Counter[str] = Counter()


def optional(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), strategy)


def without_none(values: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


@st.composite
def quantization(draw: st.DrawFn, methods: tuple[str, ...] = METHODS) -> Spec:
    method = draw(st.sampled_from(methods))
    backend = draw(st.sampled_from(BACKENDS.get(method, ["llm-compressor"])))
    # One scale per channel (-1) is llm-compressor's alone; the legacy backends group along the input.
    group_sizes = [-1, 32, 64, 128] if backend == "llm-compressor" else [32, 64, 128]
    return without_none(
        {
            "method": method,
            "bits": draw(st.sampled_from(BITS.get(method, [None]))),
            "groupSize": draw(optional(st.sampled_from(group_sizes))),
            "symmetric": draw(optional(st.booleans())),
            "actOrder": draw(optional(st.booleans())),
            "dampening": draw(optional(st.floats(min_value=0.001, max_value=1.0))),
            "backend": backend,
            "calibration": draw(
                optional(
                    st.fixed_dictionaries(
                        {},
                        optional={
                            "samples": st.integers(1, 65536),
                            "sequenceLength": st.integers(16, 131072),
                            "dataset": st.sampled_from(["HuggingFaceH4/ultrachat_200k", "wikitext"]),
                        },
                    )
                )
            ),
            "evaluation": draw(optional(evaluation())),
        }
    )


@st.composite
def evaluation(draw: st.DrawFn) -> Spec:
    text = draw(
        st.sampled_from(
            [
                {},
                {"dataset": "Salesforce/wikitext"},
                {"configMapRef": {"name": "held-out"}},
                {"pvc": {"claimName": "texts", "path": "/eval/held-out.jsonl"}},
            ]
        )
    )
    knobs = draw(
        st.fixed_dictionaries({}, optional={"enabled": st.booleans(), "tokens": st.integers(128, 32768)})
    )
    return {**text, **knobs}


@st.composite
def serving(draw: st.DrawFn, *, deployable: bool = False) -> Spec:
    """Valid serving settings; ``deployable`` keeps them to what the sandbox's GPUs can place."""
    return without_none(
        {
            "gpuClass": draw(st.sampled_from(DEPLOYABLE_GPU_CLASSES if deployable else GPU_CLASSES)),
            "replicas": draw(st.integers(0, 2) if deployable else optional(st.integers(0, 1000))),
            "maxModelLen": draw(optional(st.integers(16, 131072))),
            "concurrency": draw(optional(st.integers(1, 4096))),
            "kvCacheDtype": draw(optional(st.sampled_from(["auto", "fp8", "bfloat16", "float16"]))),
            "tensorParallelSize": "auto"
            if deployable
            else draw(optional(st.one_of(st.just("auto"), st.integers(1, 64)))),
            "gpuMemoryUtilization": draw(optional(st.floats(min_value=0.06, max_value=0.99))),
            "maxNumSeqs": draw(optional(st.integers(1, 4096))),
            "extraArgs": draw(
                optional(st.lists(st.sampled_from(["--enable-prefix-caching", "--seed=1"]), max_size=2))
            ),
            "allowSurge": draw(optional(st.booleans())),
        }
    )


@st.composite
def source(draw: st.DrawFn) -> Spec:
    if draw(st.booleans()):
        repo = draw(
            st.one_of(
                st.just(EXAMPLE_REPO),
                st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,30}/[A-Za-z0-9._-]{1,30}\Z"),
            )
        )
        return {
            "huggingface": without_none(
                {"repo": repo, "revision": draw(optional(st.sampled_from(["main", "v1.0", "a" * 40])))}
            )
        }
    return {
        "pvc": without_none(
            {
                "claimName": draw(DNS_LABEL),
                "path": draw(optional(st.sampled_from(["/", "/models/llama", "/a.b/c"]))),
            }
        )
    }


@st.composite
def valid_spec(draw: st.DrawFn) -> Spec:
    spec: Spec = {"source": draw(source()), "quantization": draw(quantization()), "serving": draw(serving())}
    cache = draw(
        optional(
            st.fixed_dictionaries(
                {},
                optional={
                    "accessMode": st.sampled_from(["ReadWriteMany", "ReadWriteOnce", "ReadWriteOncePod"]),
                    "size": st.sampled_from(["auto", "200Gi", "1Ti", 500_000_000_000]),
                },
            )
        )
    )
    job = draw(
        optional(
            st.fixed_dictionaries(
                {},
                optional={
                    "backoffLimit": st.integers(0, 20),
                    "activeDeadlineSeconds": st.integers(60, 7 * 24 * 3600),
                },
            )
        )
    )
    return without_none({**spec, "cache": cache, "quantizeJob": job})


def setter(*path: str, value: Any) -> Callable[[Spec], None]:
    def mutate(spec: Spec) -> None:
        target = spec
        for key in path[:-1]:
            target = target.setdefault(key, {})
        target[path[-1]] = value

    return mutate


def remover(*path: str) -> Callable[[Spec], None]:
    def mutate(spec: Spec) -> None:
        target = spec
        for key in path[:-1]:
            target = target[key]
        target.pop(path[-1], None)

    return mutate


def both_sources(spec: Spec) -> None:
    spec["source"] = {"huggingface": {"repo": "a/b"}, "pvc": {"claimName": "weights"}}


def bits_on(method: str, bits: int) -> Callable[[Spec], None]:
    def mutate(spec: Spec) -> None:
        spec["quantization"] = {"method": method, "bits": bits}

    return mutate


def autoawq_per_channel(spec: Spec) -> None:
    spec["quantization"] = {"method": "awq", "backend": "autoawq", "groupSize": -1}


def backend_for(method: str, backend: str) -> Callable[[Spec], None]:
    def mutate(spec: Spec) -> None:
        spec["quantization"] = {"method": method, "backend": backend}

    return mutate


def hf_repo(repo: Any) -> Callable[[Spec], None]:
    def mutate(spec: Spec) -> None:
        spec["source"] = {"huggingface": {"repo": repo}}

    return mutate


# name -> (mutation, the field path both the API server and qmo's parser must name)
MUTATIONS: dict[str, tuple[Callable[[Spec], None], str]] = {
    "negative replicas": (setter("serving", "replicas", value=-1), "spec.serving.replicas"),
    "too many replicas": (setter("serving", "replicas", value=1001), "spec.serving.replicas"),
    "replicas as text": (setter("serving", "replicas", value="two"), "spec.serving.replicas"),
    "tensor parallel word": (
        setter("serving", "tensorParallelSize", value="lots"),
        "spec.serving.tensorParallelSize",
    ),
    "tensor parallel zero": (
        setter("serving", "tensorParallelSize", value=0),
        "spec.serving.tensorParallelSize",
    ),
    "tensor parallel 65": (
        setter("serving", "tensorParallelSize", value=65),
        "spec.serving.tensorParallelSize",
    ),
    "unknown method": (setter("quantization", "method", value="int3"), "spec.quantization.method"),
    "unknown kv dtype": (setter("serving", "kvCacheDtype", value="fp4"), "spec.serving.kvCacheDtype"),
    "gpu utilization above 0.99": (
        setter("serving", "gpuMemoryUtilization", value=1.5),
        "spec.serving.gpuMemoryUtilization",
    ),
    "context below 16": (setter("serving", "maxModelLen", value=8), "spec.serving.maxModelLen"),
    "gpu class not a DNS name": (setter("serving", "gpuClass", value="H100_80GB"), "spec.serving.gpuClass"),
    "no gpu class": (remover("serving", "gpuClass"), "spec.serving.gpuClass"),
    "no serving": (remover("serving"), "spec.serving"),
    "no quantization": (remover("quantization"), "spec.quantization"),
    "both sources": (both_sources, "spec.source"),
    "no source": (setter("source", value={}), "spec.source"),
    "empty repo": (hf_repo(""), "spec.source.huggingface.repo"),
    "repo with two slashes": (hf_repo("a/b/c"), "spec.source.huggingface.repo"),
    "repo as a number": (hf_repo(42), "spec.source.huggingface.repo"),
    "bits on fp8": (bits_on("fp8", 8), "spec.quantization"),
    "awq with 8 bits": (bits_on("awq", 8), "spec.quantization"),
    "autoawq for gptq": (backend_for("gptq", "autoawq"), "spec.quantization.backend"),
    "gptqmodel for w8a8": (backend_for("w8a8", "gptqmodel"), "spec.quantization.backend"),
    "group size 100": (setter("quantization", "groupSize", value=100), "spec.quantization.groupSize"),
    "autoawq per channel": (autoawq_per_channel, "spec.quantization.groupSize"),
    "zero calibration samples": (
        setter("quantization", "calibration", value={"samples": 0}),
        "spec.quantization.calibration.samples",
    ),
    "two evaluation sources": (
        setter("quantization", "evaluation", value={"dataset": "wikitext", "configMapRef": {"name": "t"}}),
        "spec.quantization.evaluation",
    ),
    "evaluation tokens 64": (
        setter("quantization", "evaluation", value={"tokens": 64}),
        "spec.quantization.evaluation.tokens",
    ),
    "evaluation file a directory": (
        setter("quantization", "evaluation", value={"pvc": {"claimName": "t", "path": "/texts/"}}),
        "spec.quantization.evaluation.pvc.path",
    ),
    "pvc path escaping": (
        setter("source", value={"pvc": {"claimName": "w", "path": "/../etc"}}),
        "spec.source.pvc.path",
    ),
    "cache size word": (setter("cache", "size", value="lots"), "spec.cache.size"),
    "backoff limit 21": (setter("quantizeJob", "backoffLimit", value=21), "spec.quantizeJob.backoffLimit"),
    "unknown serving field": (setter("serving", "maxModelLength", value=8192), "spec.serving.maxModelLength"),
    "too many extra args": (setter("serving", "extraArgs", value=["--x"] * 65), "spec.serving.extraArgs"),
}


@pytest.fixture(scope="module")
def custom(admin_client: client.ApiClient, cluster: SessionCluster) -> client.CustomObjectsApi:
    install_crds(cluster)  # idempotent; the operator fixture does the same
    return client.CustomObjectsApi(admin_client)


@pytest.fixture(scope="module", autouse=True)
def report() -> Iterator[None]:
    yield
    print(f"\nspec properties: {sum(counts.values())} cases against the API server and qmo's parser")
    for case, count in sorted(counts.items()):
        print(f"  {count:4d}  {case}")


def dry_run(custom: client.CustomObjectsApi, namespace: str, name: str, spec: Spec) -> ApiException | None:
    body = {
        "apiVersion": "qmo.dev/v1alpha1",
        "kind": "QuantizedModel",
        "metadata": {"name": name},
        "spec": spec,
    }
    try:
        custom.create_namespaced_custom_object(
            "qmo.dev",
            "v1alpha1",
            namespace,
            "quantizedmodels",
            body,
            dry_run="All",
            field_validation="Strict",
        )
    except ApiException as error:
        return error
    return None


def parser_error(spec: Spec) -> str | None:
    try:
        parse_spec(copy.deepcopy(spec))
    except ValidationError as error:
        return format_validation_error(error)
    return None


PROPERTY_SETTINGS = settings(
    deadline=None,
    derandomize=True,  # the same cases on every run: CI never meets a new one by chance
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@settings(PROPERTY_SETTINGS, max_examples=200)
@given(spec=valid_spec())
def test_valid_specs_are_accepted_by_the_api_server_and_by_qmo(
    custom: client.CustomObjectsApi, namespace: str, spec: Spec
) -> None:
    error = dry_run(custom, namespace, "valid", spec)
    assert error is None, f"valid spec refused: {error and error.body}\n{json.dumps(spec)}"
    assert parser_error(spec) is None, f"the API server accepts what qmo refuses: {parser_error(spec)}"
    counts["valid: accepted by both"] += 1


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
@settings(PROPERTY_SETTINGS, max_examples=12)
@given(spec=valid_spec())
def test_each_invalid_mutation_is_refused_by_both_naming_the_field(
    custom: client.CustomObjectsApi, namespace: str, mutation: str, spec: Spec
) -> None:
    mutate, field = MUTATIONS[mutation]
    mutate(spec)
    error = dry_run(custom, namespace, "invalid", spec)
    assert error is not None, f"{mutation}: the API server accepted {json.dumps(spec)}"
    assert error.status in (400, 422), error
    assert field in str(error.body), f"{mutation}: {field} not named in {error.body}"
    qmo_error = parser_error(spec)
    assert qmo_error is not None, f"{mutation}: qmo's parser accepts what the API server refuses"
    assert field in qmo_error, f"{mutation}: qmo names {qmo_error!r}, not {field}"
    counts[f"invalid ({mutation}): refused by both"] += 1


@pytest.mark.parametrize("name", ["x" * 254, "Upper-Case", "under_score", "-leading-dash"])
def test_names_kubernetes_would_refuse_are_refused_with_metadata_name(
    custom: client.CustomObjectsApi, namespace: str, name: str
) -> None:
    spec = {
        "source": {"huggingface": {"repo": "a/b"}},
        "quantization": {"method": "awq"},
        "serving": {"gpuClass": "l4-24gb"},
    }
    error = dry_run(custom, namespace, name, spec)
    assert error is not None and error.status == 422 and "metadata.name" in str(error.body), error
    counts["invalid name: refused"] += 1


@st.composite
def deployable_spec(draw: st.DrawFn) -> Spec:
    """A valid spec the sandbox can act on: the hub stand-in's model, methods whose Job kwok completes."""
    return {
        "source": {"huggingface": {"repo": EXAMPLE_REPO}},
        "quantization": draw(
            quantization(("awq", "gptq", "w8a8", "fp8", "fp8-dynamic", "none", "bitsandbytes-nf4"))
        ),
        "serving": draw(serving(deployable=True)),
    }


names = itertools.count()


# No shrinking: each example is a real rollout of up to minutes, and a failure already prints its spec and
# the namespace's state (the k fixture); shrinking it once cost CI 20 minutes of re-running the same hang.
@settings(PROPERTY_SETTINGS, max_examples=6, phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(spec=deployable_spec())
def test_valid_specs_applied_for_real_end_ready_or_failed_with_a_reason(k: Kube, spec: Spec) -> None:
    name = f"prop-{next(names)}"
    k.apply(
        {"apiVersion": "qmo.dev/v1alpha1", "kind": "QuantizedModel", "metadata": {"name": name}, "spec": spec}
    )
    model = wait_for(
        lambda: (lambda m: m if m and settled(m) else None)(k.get("qm", name)),
        timeout=300,  # a loaded CI machine: the deadline bounds a hang, it is not a speed target
        interval=0.5,
        description=f"{name} to be Ready or Failed with a reason",
    )
    assert model is not None
    status = model["status"]
    reason = f" ({status['message'][:90]})" if status["phase"] == "Failed" else ""
    counts[f"applied: {status['phase']}{reason}"] += 1
    k.delete("qm", name)  # frees its GPUs for the next example
