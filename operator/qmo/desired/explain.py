"""``qmo explain``: one QuantizedModel's story for a person, from the objects as the API server holds them.

The command reads the QuantizedModel, its ModelArtifact and their Events; ``explain`` turns them into text:
what was asked, the plan with its numbers (and its shape across nodes when a replica spans several), the
autoscaler that owns the replica count, the artifact and its quality, each condition with its reason, the
last events, and what to do next when the model is stuck (the runbook's advice for the condition that says
why). Pure, so every phase is a table row in a unit test. Objects are read leniently (wire spelling,
a missing field is left out, never an error): explain is what a person runs when something is already wrong.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from qmo.desired.common import human_bytes
from qmo.planner.scheduler import max_num_seqs_reason

Obj = Mapping[str, Any]

RUNBOOK = "docs/operations.md"
CONDITIONS = (
    "Planned",
    "WeightsReady",
    "QualityGate",
    "Deployed",
    "Available",
    "PlanVerified",
    "Autoscaling",
)
EVENTS_SHOWN = 8


def explain(model: Obj, *, artifact: Obj | None = None, events: Sequence[Obj] = (), now: datetime) -> str:
    """The story of ``model`` (a QuantizedModel as read from the API), its ``artifact`` and their ``events``."""
    sections = [
        _headline(model),
        _asked(model),
        _plan(model),
        _autoscaling(model),
        _artifact(model, artifact),
        _conditions(model),
        _events(events, now),
        _next(model, artifact),
    ]
    return "\n\n".join(section for section in sections if section) + "\n"


def _get(obj: Obj | None, *path: str) -> Any:
    """obj[path[0]][path[1]]...; None where anything on the way is missing or not an object."""
    value: Any = obj
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _rows(rows: Sequence[tuple[str, Any]]) -> list[str]:
    kept = [(name, str(value)) for name, value in rows if value not in (None, "")]
    width = max((len(name) for name, _ in kept), default=0)
    return [f"  {name:<{width}}  {value}" for name, value in kept]


def _headline(model: Obj) -> str:
    meta = model.get("metadata") or {}
    status = model.get("status") or {}
    lines = [
        f"QuantizedModel {meta.get('namespace', '?')}/{meta.get('name', '?')}: {status.get('phase', 'no status yet')}"
    ]
    if status.get("message"):
        lines.append(f"  {status['message']}")
    generation, observed = meta.get("generation"), status.get("observedGeneration")
    if generation is not None and observed is not None and observed < generation:
        lines.append(
            f"  (the operator has seen generation {observed} of {generation}: this is not yet the latest spec)"
        )
    if status.get("endpoint"):
        lines.append(f"  endpoint {status['endpoint']} ({status.get('ready', '?')} replicas ready)")
    return "\n".join(lines)


def _source(spec: Obj, status: Obj) -> str | None:
    hf, pvc = _get(spec, "source", "huggingface"), _get(spec, "source", "pvc")
    if isinstance(hf, Mapping):
        text = f"huggingface {hf.get('repo')}@{hf.get('revision', 'main')}"
        resolved = status.get("resolvedRevision")
        return text + (f" (commit {resolved[:12]})" if resolved and resolved != hf.get("revision") else "")
    if isinstance(pvc, Mapping):
        return f"pvc {pvc.get('claimName')}:{pvc.get('path', '/')}"
    return None


def _asked(model: Obj) -> str:
    spec = model.get("spec") or {}
    status = model.get("status") or {}
    quantization = spec.get("quantization") or {}
    details = [f"{quantization['bits']}-bit" if quantization.get("bits") else None]
    if quantization.get("groupSize"):
        details.append(f"group {quantization['groupSize']}")
    method = quantization.get("method")
    recipe = f"{method} ({', '.join(d for d in details if d)})" if any(details) else method
    serving = spec.get("serving") or {}
    autoscaling = serving.get("autoscaling")
    wanted = [
        serving.get("gpuClass"),
        # While autoscaling is set, spec.serving.replicas is unused: the autoscaler owns the count.
        f"{serving.get('replicas', 1)} replica(s)" if not isinstance(autoscaling, Mapping) else None,
        f"maxNodes {serving['maxNodes']}" if (serving.get("maxNodes") or 1) > 1 else None,
        f"maxModelLen {serving['maxModelLen']}" if serving.get("maxModelLen") else "maxModelLen: the model's",
        f"concurrency {serving['concurrency']}" if serving.get("concurrency") else None,
        f"maxNumSeqs {serving['maxNumSeqs']}" if serving.get("maxNumSeqs") else None,
        f"tensorParallelSize {serving['tensorParallelSize']}"
        if serving.get("tensorParallelSize") not in (None, "auto")
        else None,
        f"kvCacheDtype {serving['kvCacheDtype']}"
        if serving.get("kvCacheDtype") not in (None, "auto")
        else None,
    ]
    rows = [
        ("source", _source(spec, status)),
        ("quantization", recipe),
        ("serving", ", ".join(w for w in wanted if w)),
        ("autoscaling", _asked_autoscaling(autoscaling) if isinstance(autoscaling, Mapping) else None),
    ]
    return "\n".join(["Asked", *_rows(rows)])


def _asked_autoscaling(autoscaling: Obj) -> str:
    """spec.serving.autoscaling in a line, with the defaults the API applies where the spec left them out."""
    low, high = autoscaling.get("minReplicas", 1), autoscaling.get("maxReplicas", "?")
    target = autoscaling.get("target")
    text = f"{low}-{high} replicas on {autoscaling.get('metric', 'runningRequests')}, target " + (
        f"{target:g} per replica" if isinstance(target, int | float) else "from the plan"
    )
    if autoscaling.get("scaleToZero"):
        text += f", scale to zero after {autoscaling.get('idleSeconds', 300)} s idle"
    return text


def _plan(model: Obj) -> str | None:
    plan = _get(model, "status", "plan")
    if not isinstance(plan, Mapping):
        return None
    serving = _get(model, "spec", "serving") or {}
    utilization = plan.get("gpuMemoryUtilization") or serving.get("gpuMemoryUtilization") or 0.9
    memory = float(plan.get("gpuMemoryGib") or 0)
    header = f"Plan ({plan.get('gpuClass')}: {memory:g} GiB per GPU x {utilization:g} = {memory * utilization:.2f} GiB budget)"
    concurrency = serving.get("concurrency")
    kv = (
        f"{plan.get('kvCacheTokens', 0):,} tokens = {plan.get('maxConcurrency')} sequences of "
        f"{plan.get('maxModelLen', 0):,}" + (f" (concurrency asked: {concurrency})" if concurrency else "")
    )
    seqs = max_num_seqs_reason(max_num_seqs=serving.get("maxNumSeqs"), concurrency=concurrency)
    tp, nodes = plan.get("tensorParallelSize"), plan.get("pipelineParallelSize")
    kinds = f"dtype {plan.get('dtype')}, KV cache {plan.get('kvCacheDtype')}"
    if nodes:
        gpus = tp * nodes if isinstance(tp, int) and isinstance(nodes, int) else "?"
        shape = (
            f"{tp} GPU(s) per node x {nodes} nodes per replica = {gpus} GPUs, {nodes} pipeline stages "
            f"(one per node; rank 0, the leader, serves HTTP), {kinds}"
        )
        # status.plan has one figure per term: the most any stage's GPU holds (planner/parallel.py), and the
        # KV tokens every stage holds for its own layers (vLLM gives each the fewest blocks any has room for).
        per_gpu, kv = (
            "per GPU (most of any stage)",
            f"{kv}; per replica, each stage holds them for its layers",
        )
    else:
        shape, per_gpu = f"{tp} GPU(s) per replica, {kinds}", "per GPU"
    rows: list[tuple[str, Any]] = [
        ("shape", shape),
        (
            per_gpu,
            f"weights {plan.get('weightsGibPerGpu')} + overhead {plan.get('overheadGibPerGpu')} "
            f"+ KV cache {plan.get('kvCacheGibPerGpu')} GiB",
        ),
        ("KV cache", kv),
        ("max-num-seqs", f"{plan.get('maxNumSeqs')} ({seqs})"),
        ("checkpoint", human_bytes(int(plan["checkpointBytes"])) if plan.get("checkpointBytes") else None),
    ]
    observed = plan.get("observed")
    if isinstance(observed, Mapping) and observed.get("kvCacheTokens") is not None:
        error = observed.get("errorPercent")
        rows.append(
            (
                "vLLM allocated",
                f"{observed['kvCacheTokens']:,} KV tokens per replica"
                + (f" ({error:+g}% against the plan)" if error is not None else "")
                + f", read from {observed.get('pods', '?')} {'leader ' if nodes else ''}pod(s) at "
                f"{observed.get('scrapedAt', '?')}",
            )
        )
    replan = _get(model, "status", "replan")
    if isinstance(replan, Mapping):
        rows.append(
            (
                "re-planned",
                f"{replan.get('reason')}: --gpu-memory-utilization {replan.get('fromGpuMemoryUtilization')} -> "
                f"{replan.get('gpuMemoryUtilization')} ({replan.get('message')})",
            )
        )
    rows.append(("vllm args", " ".join(str(a) for a in plan.get("vllmArgs") or [])))
    return "\n".join([header, *_rows(rows)])


def _autoscaling(model: Obj) -> str | None:
    """status.autoscaling: who owns the replica count, on what, and what it last said."""
    scaling = _get(model, "status", "autoscaling")
    if not isinstance(scaling, Mapping):
        return None
    target = scaling.get("target")
    rows = [
        (
            "replicas",
            f"desired {scaling.get('desiredReplicas', '?')}, current {scaling.get('currentReplicas', 0)}, "
            f"range {scaling.get('minReplicas', '?')}-{scaling.get('maxReplicas', '?')}",
        ),
        (
            "metric",
            f"{scaling.get('metric')} at "
            + (f"{target:g}" if isinstance(target, int | float) else "?")
            + f" per replica (target from {scaling.get('targetSource', '?')})",
        ),
        ("message", scaling.get("message")),
    ]
    return "\n".join([f"Autoscaling ({scaling.get('autoscaler')} {scaling.get('name')})", *_rows(rows)])


def _artifact(model: Obj, artifact: Obj | None) -> str | None:
    name = _get(model, "status", "artifact", "name")
    if artifact is None:
        return f"Artifact {name}: not found (being created, or deleted)" if name else None
    status = artifact.get("status") or {}
    facts = [status.get("phase", "Pending")]
    if status.get("size"):
        facts.append(str(status["size"]))
    if status.get("quantizeSeconds") is not None:
        facts.append(f"quantized in {float(status['quantizeSeconds']):g} s")
    if status.get("jobName"):
        facts.append(f"Job {status['jobName']}")
    facts.append(f"used by {status.get('users', 0)} model(s)")
    lines = [f"Artifact {_get(artifact, 'metadata', 'name')}: {', '.join(facts)}"]
    quality = status.get("quality")
    rows: list[tuple[str, Any]] = []
    if isinstance(quality, Mapping):
        rows.append(
            (
                "quality",
                f"perplexity {quality.get('sourcePerplexity')} -> {quality.get('quantizedPerplexity')} "
                f"({quality.get('perplexityIncreasePercent', 0):+g}%), top-1 agreement "
                f"{quality.get('top1Agreement')}, KL {quality.get('klMean')} "
                f"({quality.get('tokens', '?')} tokens of {quality.get('dataset', '?')})",
            )
        )
    elif status.get("phase") == "Ready":
        rows.append(("quality", "not measured (no figures in the worker's summary)"))
    if status.get("message") and status.get("phase") != "Ready":
        rows.append(("message", status["message"]))
    return "\n".join(lines + _rows(rows))


def _conditions(model: Obj) -> str | None:
    conditions = [c for c in _get(model, "status", "conditions") or [] if isinstance(c, Mapping)]
    if not conditions:
        return None
    order = {name: index for index, name in enumerate(CONDITIONS)}
    conditions.sort(key=lambda c: order.get(str(c.get("type")), len(order)))
    width = max(len(str(c.get("type"))) for c in conditions)
    reasons = max(len(str(c.get("reason", ""))) for c in conditions)
    lines = ["Conditions"]
    for c in conditions:
        text = f"  {c.get('type', '?')!s:<{width}}  {c.get('status', '?'):<7}  {c.get('reason', '')!s:<{reasons}}"
        lines.append(f"{text}  {c.get('message') or ''}".rstrip())
    return "\n".join(lines)


def _when(event: Obj) -> str:
    return str(
        event.get("lastTimestamp")
        or event.get("eventTime")
        or _get(event, "series", "lastObservedTime")
        or _get(event, "metadata", "creationTimestamp")
        or ""
    )


def _age(stamp: str, now: datetime) -> str:
    try:
        then = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return "?"
    seconds = max(0, int((now - (then if then.tzinfo else then.replace(tzinfo=UTC))).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def _events(events: Sequence[Obj], now: datetime) -> str | None:
    if not events:
        return "Events\n  none (Kubernetes keeps events for an hour by default)"
    ordered = sorted(events, key=_when)
    shown = ordered[-EVENTS_SHOWN:]
    title = f"Events (last {len(shown)} of {len(ordered)})" if len(ordered) > len(shown) else "Events"
    lines = [title]
    for event in shown:
        kind = _get(event, "involvedObject", "kind")
        who = "" if kind in (None, "QuantizedModel") else f"[{kind}] "
        count = event.get("count") or 1
        repeat = f" (x{count})" if count > 1 else ""
        lines.append(
            f"  {_age(_when(event), now):>8}  {event.get('type', '?'):<7}  {event.get('reason', '?')}: "
            f"{who}{event.get('message', '')}{repeat}"
        )
    return "\n".join(lines)


def _condition(model: Obj, type_: str) -> Obj:
    for c in _get(model, "status", "conditions") or []:
        if isinstance(c, Mapping) and c.get("type") == type_:
            return c
    return {}


def _next(model: Obj, artifact: Obj | None) -> str:
    steps = next_steps(model, artifact)
    return "\n".join(["Next", *(f"  - {step}" for step in steps)])


def next_steps(model: Obj, artifact: Obj | None) -> list[str]:
    """What a person does now, from the phase and the condition that says why (the runbook, in short)."""
    meta = model.get("metadata") or {}
    namespace, name = meta.get("namespace", "default"), meta.get("name", "?")
    status = model.get("status") or {}
    phase = status.get("phase")
    message = str(status.get("message") or "")
    job = _get(artifact, "status", "jobName")
    artifact_phase = _get(artifact, "status", "phase")
    artifact_message = str(_get(artifact, "status", "message") or "")
    pods = f"kubectl get pods -n {namespace} -l qmo.dev/model={name}"
    if not status:
        return [
            "No status yet: the operator has not reconciled this model. Check it runs and watches this "
            "namespace: kubectl logs -n qmo-system deploy/qmo-quantized-model-operator"
        ]
    if phase == "Ready":
        serves = f"serves at {status.get('endpoint', 'its Service')} (OpenAI API, /v1/models)"
        problems = []
        verified = _condition(model, "PlanVerified")
        if verified.get("status") == "False":
            problems.append(
                f"The plan and vLLM disagree ({verified.get('reason')}): see {RUNBOOK}#the-plan-does-not-match-what-vllm-allocated"
            )
        problems += _autoscaling_steps(model, namespace)
        return [f"It {serves}, but:", *problems] if problems else [f"Nothing to do: it {serves}."]
    if phase == "Failed":
        return _failed_steps(model, namespace, job, artifact_message)
    gate = _condition(model, "QualityGate")
    if gate.get("status") == "False":
        return [
            f"The artifact fails the quality gate: {gate.get('message')}.",
            "Change the recipe (more or better calibration data, 8 bits instead of 4, actOrder, another method): "
            "a new recipe is a new artifact, built while anything already serving keeps serving.",
            "Or, if these figures are acceptable for this model, relax spec.quantization.qualityGate (or "
            "enabled: false): the thresholds are not part of the artifact's key, so no new quantize Job runs. "
            f"See {RUNBOOK}#a-quality-gate-failed",
        ]
    if phase == "Quantizing":
        if "Unschedulable" in artifact_message or "Unschedulable" in message:
            return [
                "No node can take the quantize Job's pod (the scheduler's words are above): free a GPU of the "
                "class, or fix spec.quantizeJob.nodeSelector / tolerations or the GPUClass's.",
                f"See {RUNBOOK}#a-quantize-job-is-stuck",
            ]
        if artifact_phase == "Quantizing" and job:
            return [
                f"The quantize Job is running (large models take hours): kubectl logs -n {namespace} job/{job} -f",
                "spec.quantizeJob.activeDeadlineSeconds bounds it; past it the model goes Failed.",
            ]
        return [
            f"The quantize Job waits for its pod: kubectl describe pod -n {namespace} -l job-name={job or '<artifact>-quantize'}",
            f"See {RUNBOOK}#a-quantize-job-is-stuck",
        ]
    if phase in ("Deploying", "Degraded"):
        verified = _condition(model, "PlanVerified")
        if verified.get("reason") == "StartupFailed":
            return [
                f"vLLM does not start under the plan: {verified.get('message')}",
                f"See {RUNBOOK}#a-serving-pod-does-not-start-under-the-plan",
            ]
        plan = status.get("plan") or {}
        nodes = plan.get("pipelineParallelSize")
        if "Unschedulable" in message and nodes:
            return [
                f"A replica needs {nodes} nodes with {plan.get('tensorParallelSize')} free GPUs of "
                f"{plan.get('gpuClass')} each, one pod per node (two pods of a group never share a node); the "
                "scheduler's words are above. Free whole nodes, add nodes of the class, or plan for fewer "
                "nodes (a smaller maxModelLen or concurrency, a quantized method: qmo plan --max-nodes).",
                f"Which pods wait, and where the others run: {pods} -o wide; the reason of a Pending one: "
                f"kubectl describe pod -n {namespace} <pod>",
                f"See {RUNBOOK}#a-multi-node-model",
                *_autoscaling_steps(model, namespace),
            ]
        if "Unschedulable" in message:
            return [
                "No node can take a serving pod: free GPUs of the class, fix the GPUClass's node selector or "
                "tolerations, or let the cluster autoscaler add a node.",
                f"See {RUNBOOK}#a-model-is-not-ready",
                *_autoscaling_steps(model, namespace),
            ]
        action = (
            "vLLM is starting (loading weights, warming up)" if phase == "Deploying" else "Replicas were lost"
        )
        if nodes:
            return [
                f"{action} on {nodes} nodes per replica; a leader is ready only once every node of its group "
                f"joined it: {pods} -o wide; kubectl logs -n {namespace} -l qmo.dev/model={name} --prefix",
                f"See {RUNBOOK}#a-multi-node-model",
                *_autoscaling_steps(model, namespace),
            ]
        return [
            f"{action}: {pods}; kubectl logs -n {namespace} -l qmo.dev/model={name}",
            f"See {RUNBOOK}#a-model-is-not-ready",
            *_autoscaling_steps(model, namespace),
        ]
    return [
        f"It is {phase or 'Pending'}: {message or 'waiting for the operator'}. Hub or API errors retry with back-off "
        "(qmo_reconcile_errors_total counts them).",
        f"See {RUNBOOK}#a-model-is-not-ready",
    ]


def _autoscaling_steps(model: Obj, namespace: str) -> list[str]:
    """What to do when the Autoscaling condition is False: the autoscaler cannot read its metric (no
    custom-metrics adapter for an HPA, no answer from Prometheus for KEDA) or cannot scale its target."""
    scaling = _condition(model, "Autoscaling")
    if scaling.get("status") != "False":
        return []
    status = _get(model, "status", "autoscaling") or {}
    kind, autoscaler = status.get("autoscaler"), status.get("name", "<model>-vllm")
    metric = status.get("metric", "vllm:num_requests_running")
    if kind == "ScaledObject":
        check = (
            "KEDA queries Prometheus (the chart's autoscaling.prometheus.serverAddress): check that it answers "
            f"and scrapes the vLLM pods: kubectl describe scaledobject -n {namespace} {autoscaler}"
        )
    else:
        check = (
            f"An HPA reads {metric} from the custom-metrics API, served by an adapter such as "
            "prometheus-adapter with vLLM's series: kubectl get --raw "
            f'"/apis/custom.metrics.k8s.io/v1beta2/namespaces/{namespace}/pods/*/{metric}"; '
            f"kubectl describe hpa -n {namespace} {autoscaler}"
        )
    return [
        f"The autoscaler cannot scale ({scaling.get('reason')}): the replica count stays where it is.",
        check,
        f"See {RUNBOOK}#autoscaling",
    ]


def _failed_steps(model: Obj, namespace: str, job: Any, artifact_message: str) -> list[str]:
    failed = next(
        (
            _condition(model, t)
            for t in ("WeightsReady", "Planned")
            if _condition(model, t).get("status") == "False"
        ),
        {},
    )
    reason = failed.get("reason")
    retry = "Fix the spec and apply it: a new generation retries from the start"
    if reason == "QuantizationFailed":
        log = f"kubectl logs -n {namespace} job/{job}" if job else f"kubectl get ma -n {namespace} -o yaml"
        return [
            f"The quantize Job failed: {artifact_message or failed.get('message')}",
            f"Read the worker's output: {log}",
            f"{retry}, and a failed artifact is deleted and quantized again with the new Job settings "
            f"(memory, deadline, image, calibration). See {RUNBOOK}#a-quantize-job-failed-or-was-oom-killed",
        ]
    if reason == "DoesNotFit":
        return [
            "The model does not fit the GPU class; the message above has the numbers and what would fit.",
            f"{retry}: another gpuClass, tensorParallelSize, maxModelLen, concurrency or kvCacheDtype fp8. "
            "qmo plan tries them without a cluster.",
        ]
    return [
        f"{reason or 'Failed'}: {failed.get('message') or _get(model, 'status', 'message')}",
        f"{retry}. See {RUNBOOK}#a-model-failed",
    ]
