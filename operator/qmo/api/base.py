"""Shared pieces of the API models: camelCase wire names, strictness, and Kubernetes pass-through types.

Every model validates what a user wrote (extra keys refused, so a typo is an error and not a silently
ignored field) and serialises with the camelCase names the API server stores.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

GROUP = "qmo.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# Kubernetes objects we pass through untouched (tolerations, affinity, resources): the API server's own
# types validate them when they land in a Pod; duplicating their schemas here would only drift.
PassThroughObject = Annotated[
    dict[str, Any], Field(json_schema_extra={"x-kubernetes-preserve-unknown-fields": True})
]

# resource.Quantity's serialized form (k8s.io/apimachinery): a decimal number, then a binary (Ki..Ei) or
# decimal (m, k, M..E) suffix or an exponent. The API server checks it with CEL (isQuantity); qmo's parser
# checks the same, so a spec refused by one is refused by the other.
QUANTITY = re.compile(
    r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E|[eE][+-]?[0-9]+)?$"
)


def is_quantity(value: int | str) -> bool:
    return isinstance(value, int) or bool(QUANTITY.match(value))


def _quantity(value: int | str) -> int | str:
    if not is_quantity(value):
        raise ValueError("must be a quantity such as 20Gi")
    return value


# A Kubernetes resource.Quantity, e.g. "20Gi" or 1.5: stored as written.
Quantity = Annotated[
    int | str,
    AfterValidator(_quantity),
    Field(
        json_schema_extra={
            "x-kubernetes-int-or-string": True,
            "x-kubernetes-validations": [
                {
                    "rule": "type(self) == int || isQuantity(self)",
                    "message": "must be a quantity such as 20Gi",
                }
            ],
        }
    ),
]

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


class ApiModel(BaseModel):
    """Base of every spec/status model: camelCase on the wire, snake_case in Python, extras refused."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        use_attribute_docstrings=True,
    )

    def to_wire(self) -> dict[str, Any]:
        """The object as the API server stores it: camelCase keys, unset optional fields left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(ApiModel):
    """A condition shaped like metav1.Condition, so kubectl, Argo CD and kstatus read it natively."""

    type: str
    """CamelCase condition type, e.g. Planned, WeightsReady, Deployed, Available."""
    status: ConditionStatus
    """True, False or Unknown."""
    reason: str
    """CamelCase machine-readable reason for the last transition."""
    message: str = ""
    """Human-readable details, with numbers where they help."""
    last_transition_time: str
    """RFC 3339 time the status last changed."""
    observed_generation: int | None = None
    """The .metadata.generation this condition was computed from."""


class LocalObjectReference(ApiModel):
    """A reference to an object in the same namespace (never another one: no cross-namespace reads)."""

    name: str = Field(max_length=253, pattern=DNS_SUBDOMAIN)
    """Name of the object in the resource's own namespace."""


class SecretKeyReference(ApiModel):
    """A key of a Secret in the resource's own namespace."""

    name: str = Field(max_length=253, pattern=DNS_SUBDOMAIN)
    """Name of the Secret, in the QuantizedModel's namespace."""
    key: str = "token"
    """Key in the Secret whose value is the token."""
