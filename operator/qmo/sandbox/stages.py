"""kwok's configuration: the Stage rules that play kubelet for the fake nodes and their pods.

A pod on a fake node becomes Running and Ready after a start delay; a pod owned by a Job then Succeeds
after a run duration, so Jobs Complete. Annotations on a pod change its script, which is how tests reach
failure paths without a real container:

- ``qmo.dev/sandbox-fail: "true"``: after the run duration the container exits with the code from
  ``qmo.dev/sandbox-exit-code`` (default 1). With ``restartPolicy: Never`` (Job pods) the pod is Failed;
  otherwise (Deployment pods) it stays Running but not Ready, its container waiting in CrashLoopBackOff
  with ``restartCount: 1``, as a kubelet shows a crashing server (a Job with ``OnFailure`` sees the restart).
- ``qmo.dev/sandbox-start-delay`` / ``qmo.dev/sandbox-run-duration``: Go durations (``"3s"``) overriding
  the sandbox defaults for this pod.
- ``qmo.dev/sandbox-termination-message``: what the container "wrote" to its termination-message path,
  reported in its terminated state (how a test plays a worker's JSON summary or a copied config.json).

The rules follow kwok's own ``kustomize/stage/{node,pod}/fast`` stages, with the failure rule added.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

FAIL_ANNOTATION = "qmo.dev/sandbox-fail"
EXIT_CODE_ANNOTATION = "qmo.dev/sandbox-exit-code"
START_DELAY_ANNOTATION = "qmo.dev/sandbox-start-delay"
RUN_DURATION_ANNOTATION = "qmo.dev/sandbox-run-duration"
TERMINATION_MESSAGE_ANNOTATION = "qmo.dev/sandbox-termination-message"
# The reason a crash-looping container's last run ended with (default Error), e.g. OOMKilled.
EXIT_REASON_ANNOTATION = "qmo.dev/sandbox-exit-reason"
# The pod's IP instead of one from kwok's range: a loopback address where a test serves what the pod
# would (vLLM's /metrics), so the operator reaches "the pod" exactly as in a cluster.
POD_IP_ANNOTATION = "qmo.dev/sandbox-pod-ip"

NOT_DELETING = {"key": ".metadata.deletionTimestamp", "operator": "DoesNotExist"}
RUNNING = {"key": ".status.phase", "operator": "In", "values": ["Running"]}
MARKED_TO_FAIL = {"key": f'.metadata.annotations["{FAIL_ANNOTATION}"]', "operator": "In", "values": ["true"]}
NOT_MARKED_TO_FAIL = {**MARKED_TO_FAIL, "operator": "NotIn"}
NEVER_RESTARTS = {"key": ".spec.restartPolicy", "operator": "In", "values": ["Never"]}
RESTARTS = {**NEVER_RESTARTS, "operator": "NotIn"}
CRASH_LOOPING = {
    "key": ".status.containerStatuses.[].state.waiting.reason",
    "operator": "In",
    "values": ["CrashLoopBackOff"],
}
OWNED_BY_JOB = {"key": ".metadata.ownerReferences.[].kind", "operator": "In", "values": ["Job"]}

NODE_STATUS = """\
{{ $now := Now }}
{{ $lastTransitionTime := or .metadata.creationTimestamp $now }}
conditions:
{{ range NodeConditions }}
- lastHeartbeatTime: {{ $now | Quote }}
  lastTransitionTime: {{ $lastTransitionTime | Quote }}
  message: {{ .message | Quote }}
  reason: {{ .reason | Quote }}
  status: {{ .status | Quote }}
  type: {{ .type | Quote }}
{{ end }}
addresses:
{{ with .status.addresses }}
{{ YAML . 1 }}
{{ else }}
- address: {{ NodeIP | Quote }}
  type: InternalIP
- address: {{ NodeName | Quote }}
  type: Hostname
{{ end }}
"""

NODE_INITIALIZE = (
    NODE_STATUS
    + """\
allocatable:
{{ with .status.allocatable }}
{{ YAML . 1 }}
{{ else }}
  cpu: "32"
  memory: 256Gi
  pods: "110"
{{ end }}
capacity:
{{ with .status.capacity }}
{{ YAML . 1 }}
{{ else }}
  cpu: "32"
  memory: 256Gi
  pods: "110"
{{ end }}
nodeInfo:
  architecture: amd64
  operatingSystem: linux
  osImage: "qmo sandbox (kwok)"
  containerRuntimeVersion: "kwok-{{ Version }}"
  kubeletVersion: "kwok-{{ Version }}"
  kernelVersion: "kwok-{{ Version }}"
phase: Running
"""
)

POD_READY = """\
{{ $now := Now }}
conditions:
- lastTransitionTime: {{ $now | Quote }}
  status: "True"
  type: Initialized
- lastTransitionTime: {{ $now | Quote }}
  status: "True"
  type: Ready
- lastTransitionTime: {{ $now | Quote }}
  status: "True"
  type: ContainersReady
{{ range .spec.readinessGates }}
- lastTransitionTime: {{ $now | Quote }}
  status: "True"
  type: {{ .conditionType | Quote }}
{{ end }}
containerStatuses:
{{ range .spec.containers }}
- image: {{ .image | Quote }}
  name: {{ .name | Quote }}
  ready: true
  started: true
  restartCount: 0
  state:
    running:
      startedAt: {{ $now | Quote }}
{{ end }}
initContainerStatuses:
{{ range .spec.initContainers }}
- image: {{ .image | Quote }}
  name: {{ .name | Quote }}
  ready: true
  restartCount: 0
  state:
    terminated:
      exitCode: 0
      finishedAt: {{ $now | Quote }}
      reason: Completed
      startedAt: {{ $now | Quote }}
{{ end }}
hostIP: {{ NodeIPWith .spec.nodeName | Quote }}
{{ $ip := "" }}{{ with .metadata.annotations }}{{ $ip = or (index . "qmo.dev/sandbox-pod-ip") "" }}{{ end }}
podIP: {{ or $ip ( PodIPWith .spec.nodeName ( or .spec.hostNetwork false ) ( or .metadata.uid "" ) \
( or .metadata.name "" ) ( or .metadata.namespace "" ) ) | Quote }}
phase: Running
startTime: {{ $now | Quote }}
"""


def _terminated(*, phase: str, reason: str, exit_code: str) -> str:
    return (
        """\
{{ $now := Now }}
conditions:
- lastTransitionTime: {{ $now | Quote }}
  status: "False"
  type: Ready
- lastTransitionTime: {{ $now | Quote }}
  status: "False"
  type: ContainersReady
containerStatuses:
{{ range .spec.containers }}
- image: {{ .image | Quote }}
  name: {{ .name | Quote }}
  ready: false
  started: false
  restartCount: 0
  state:
    terminated:
"""
        + f"      exitCode: {exit_code}\n"
        + f"      reason: {reason}\n"
        # `with`: a pod without annotations has a nil map, which `index` refuses.
        + "      message: {{ with $.metadata.annotations }}"
        + f'{{{{ or (index . "{TERMINATION_MESSAGE_ANNOTATION}") "" | Quote }}}}'
        + '{{ else }}""{{ end }}\n'
        + """\
      finishedAt: {{ $now | Quote }}
      startedAt: {{ $now | Quote }}
{{ end }}
"""
        + f"phase: {phase}\n"
    )


EXIT_CODE = f'{{{{ or (index $.metadata.annotations "{EXIT_CODE_ANNOTATION}") "1" }}}}'
# Each crash adds one to restartCount, as a kubelet restarting the container would (a Job with
# restartPolicy OnFailure counts these against its backoffLimit).
POD_CRASH_LOOP = (
    """\
{{ $now := Now }}
{{ $root := . }}
conditions:
- lastTransitionTime: {{ $now | Quote }}
  status: "False"
  type: Ready
- lastTransitionTime: {{ $now | Quote }}
  status: "False"
  type: ContainersReady
containerStatuses:
{{ range $index, $item := .spec.containers }}
{{ $origin := index $root.status.containerStatuses $index }}
- image: {{ $item.image | Quote }}
  name: {{ $item.name | Quote }}
  ready: false
  started: false
  restartCount: {{ add1 (or $origin.restartCount 0) }}
  lastState:
    terminated:
"""
    + f"      exitCode: {EXIT_CODE}\n"
    + f'      reason: {{{{ or (index $.metadata.annotations "{EXIT_REASON_ANNOTATION}") "Error" }}}}\n'
    + """\
      finishedAt: {{ $now | Quote }}
      startedAt: {{ $now | Quote }}
  state:
    waiting:
      reason: CrashLoopBackOff
      message: "back-off restarting failed container (qmo sandbox: pod annotated to fail)"
{{ end }}
phase: Running
"""
)
POD_SUCCEEDED = _terminated(phase="Succeeded", reason="Completed", exit_code="0")
POD_FAILED = _terminated(phase="Failed", reason="Error", exit_code=EXIT_CODE)


@dataclass(frozen=True)
class StageTimings:
    """Default delays in milliseconds; pods may override them with annotations."""

    start_delay_ms: int = 300
    run_duration_ms: int = 1000
    crash_back_off_ms: int = (
        10000  # between crashes of a crash-looping container, as kubelet's first back-off
    )
    node_heartbeat_ms: int = 30000


DEFAULT_TIMINGS = StageTimings()


def _stage(
    name: str,
    kind: str,
    selector: list[dict[str, Any]],
    next_step: dict[str, Any],
    *,
    delay_ms: int = 0,
    delay_annotation: str | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "resourceRef": {"apiGroup": "v1", "kind": kind},
        "selector": {"matchExpressions": selector},
        "next": next_step,
    }
    if delay_ms or delay_annotation:
        delay: dict[str, Any] = {"durationMilliseconds": delay_ms}
        if delay_annotation:
            delay["durationFrom"] = {"expressionFrom": f'.metadata.annotations["{delay_annotation}"]'}
        spec["delay"] = delay
    return {"apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": "Stage", "metadata": {"name": name}, "spec": spec}


def stages(timings: StageTimings = DEFAULT_TIMINGS) -> list[dict[str, Any]]:
    not_ready = {
        "key": '.status.conditions.[] | select( .type == "Ready" ) | .status',
        "operator": "NotIn",
        "values": ["True"],
    }
    ready = {**not_ready, "operator": "In"}
    node_running = {"key": ".status.phase", "operator": "In", "values": ["Running"]}
    return [
        _stage("node-initialize", "Node", [not_ready], {"statusTemplate": NODE_INITIALIZE}),
        _stage(
            "node-heartbeat",
            "Node",
            [node_running, ready],
            {"statusTemplate": NODE_STATUS},
            delay_ms=timings.node_heartbeat_ms,
        ),
        _stage(
            "pod-ready",
            "Pod",
            [NOT_DELETING, {"key": ".status.podIP", "operator": "DoesNotExist"}],
            {"statusTemplate": POD_READY},
            delay_ms=timings.start_delay_ms,
            delay_annotation=START_DELAY_ANNOTATION,
        ),
        _stage(
            "pod-complete",
            "Pod",
            [NOT_DELETING, RUNNING, OWNED_BY_JOB, NOT_MARKED_TO_FAIL],
            {"statusTemplate": POD_SUCCEEDED},
            delay_ms=timings.run_duration_ms,
            delay_annotation=RUN_DURATION_ANNOTATION,
        ),
        _stage(
            "pod-fail",
            "Pod",
            [NOT_DELETING, RUNNING, MARKED_TO_FAIL, NEVER_RESTARTS],
            {"statusTemplate": POD_FAILED},
            delay_ms=timings.run_duration_ms,
            delay_annotation=RUN_DURATION_ANNOTATION,
        ),
        _stage(
            "pod-crash",
            "Pod",
            [NOT_DELETING, RUNNING, MARKED_TO_FAIL, RESTARTS, ready],
            {"statusTemplate": POD_CRASH_LOOP},
            delay_ms=timings.run_duration_ms,
            delay_annotation=RUN_DURATION_ANNOTATION,
        ),
        _stage(
            "pod-crash-again",
            "Pod",
            [NOT_DELETING, RUNNING, MARKED_TO_FAIL, RESTARTS, CRASH_LOOPING],
            {"statusTemplate": POD_CRASH_LOOP},
            delay_ms=timings.crash_back_off_ms,
        ),
        _stage(
            "pod-delete",
            "Pod",
            [{"key": ".metadata.deletionTimestamp", "operator": "Exists"}],
            {"finalizers": {"empty": True}, "delete": True},
        ),
    ]


def kwok_config_yaml(timings: StageTimings = DEFAULT_TIMINGS) -> str:
    """The multi-document file passed to ``kwok --config``."""
    return yaml.safe_dump_all(stages(timings), sort_keys=False, width=1000)
