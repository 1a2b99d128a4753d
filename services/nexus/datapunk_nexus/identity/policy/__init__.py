"""Roles and fine-grained permissions per tenant (pycasbin, default deny): the authorizer
the edges decide with, the map from each call to what it needs, and PolicyService.

- ``PolicyAuthorizer.decide(identity, action, resource, attributes) -> Decision``
- ``requirement_of(method, request) -> Requirement``
- ``add_policy_service(context, pool) -> PolicyAuthorizer``
"""

from datapunk_nexus.identity.policy.authorizer import PolicyAuthorizer
from datapunk_nexus.identity.policy.resources import (
    Requirement,
    Requirements,
    UnmappedMethod,
    requirement_of,
)
from datapunk_nexus.identity.policy.rules import Decision, MatchedRule
from datapunk_nexus.identity.policy.servicer import add_policy_service, build_policy

__all__ = [
    "Decision",
    "MatchedRule",
    "PolicyAuthorizer",
    "Requirement",
    "Requirements",
    "UnmappedMethod",
    "add_policy_service",
    "build_policy",
    "requirement_of",
]
