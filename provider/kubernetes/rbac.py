"""The Kubernetes API permissions that the provider uses, as RBAC rules.

The Helm chart grants exactly these, and its test compares its Role and
ClusterRole with `RBAC_RULES`. Keep this list in step with the calls in
`backend`, `cache` and `pod_logs`. `NAMESPACE_RULES` is needed only when
`cluster_wide` is on, because namespaces are cluster-scoped objects.
"""

from typing import Final, NamedTuple


class RbacRule(NamedTuple):
    """One RBAC policy rule: an API group ("" is the core group), a resource, verbs."""

    api_group: str
    resource: str
    verbs: tuple[str, ...]


RBAC_RULES: Final[tuple[RbacRule, ...]] = (
    RbacRule(
        "apps", "deployments", ("get", "list", "watch", "create", "patch", "delete")
    ),
    RbacRule("", "services", ("get", "create", "patch", "delete")),
    RbacRule("", "secrets", ("get", "list", "create", "patch", "delete")),
    RbacRule("", "pods", ("get", "list")),
    RbacRule("", "pods/log", ("get",)),
)

# Listing the namespaces annotated openfaas="1" needs a ClusterRole.
NAMESPACE_RULES: Final[tuple[RbacRule, ...]] = (
    RbacRule("", "namespaces", ("get", "list")),
)
