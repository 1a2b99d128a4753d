"""One tenant's policy as a casbin enforcer: an RBAC model with domains (the domain is
the tenant) and an attribute condition on data classification, default deny.

The model (``MODEL`` below) has one policy line per role, permission, action and resource
type (a permission on every type, ``*``, becomes one line per tenant type, never
``platform``)::

    p, <role>, <tenant>, <type>, <name glob>, <action>, <max level>, <clearance?>, <rule id>

and one grouping line per role binding: ``g, <principal>, <role>, <tenant>``. A request
is ``(role, tenant, type, name, action, resource level, caller clearance level)``; it is
allowed when some line of that role matches, and denied otherwise. A principal's roles
are the ones its credential carries plus the ones casbin's domain role manager holds for
it in the tenant, and each is asked in turn.

casbin evaluates its matcher line by line, about ten microseconds each, so the enforcer
keeps casbin's ``FastModel`` index of the policy by role, action and type (only the lines
that can match are evaluated), and each decision is remembered until the tenant's policy
changes: the same question is then answered from a dictionary."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any, Final

import casbin
from casbin.model import FastModel, fast_policy_filter
from casbin.persist import Adapter

from datapunk_nexus.identity.policy.rules import (
    ANY_TYPE,
    CLASSIFICATION_LEVELS,
    TENANT_TYPES,
    Binding,
    Decision,
    Label,
    MatchedRule,
    Role,
)

__all__ = ["MODEL", "TenantPolicy"]

MODEL: Final = """
[request_definition]
r = sub, dom, typ, obj, act, cls, clr

[policy_definition]
p = sub, dom, typ, obj, act, maxcls, needclr, rule

[role_definition]
g = _, _, _

[policy_effect]
e = some(where (p.eft == allow))

[matchers]
m = globMatch(r.obj, p.obj) && r.typ == p.typ && r.sub == p.sub && r.dom == p.dom \
  && r.act == p.act && classificationAllows(p.maxcls, p.needclr, r.cls, r.clr)
"""
"""``maxcls`` is the highest classification level a line reaches (``0``: any) and
``needclr`` is ``1`` when the caller's clearance must reach the resource's level."""


def _classification_allows(max_level: str, need_clearance: str, level: int, clearance: int) -> bool:
    if max_level != "0" and level > int(max_level):
        return False
    return need_clearance != "1" or clearance >= level


class _RulesAdapter(Adapter):  # type: ignore[misc]
    """A casbin adapter over one tenant's roles and bindings, already read from
    PostgreSQL by the store (casbin's adapters are synchronous; our pool is not)."""

    def __init__(self, p_lines: Sequence[list[str]], g_lines: Sequence[list[str]]) -> None:
        self._p = p_lines
        self._g = g_lines

    def load_policy(self, model: Any) -> None:
        # Rows are unique by their primary keys, so lines go in without casbin's
        # linear duplicate check (which makes loading quadratic).
        p_policy = model.model["p"]["p"].policy
        for line in self._p:
            p_policy.append(line)
        g_policy = model.model["g"]["g"].policy
        for line in self._g:
            g_policy.append(line)


class _Enforcer(casbin.Enforcer):  # type: ignore[misc]
    """casbin's enforcer, keeping its parsed matcher. casbin parses the matcher again on
    every ``enforce`` (``ast.parse`` and a new evaluator that resets the process's warning
    filters: about half the cost of a one-line decision). The matcher of ``MODEL`` never
    changes and calls no role function, so the first evaluator serves every call."""

    _expression: Any = None

    def _get_expression(self, expr: str, functions: Any = None) -> Any:
        if self._expression is None:
            self._expression = super()._get_expression(expr, functions)
        return self._expression


_INDEX: Final = [0, 4, 2]
"""The enforcer's policy index: request and policy fields 0, 4 and 2 (role, action,
type)."""

_Key = tuple[str, frozenset[str], str, str, str, int, int]


class TenantPolicy:
    """The compiled policy of one tenant at one version, and the decisions made with it.
    Immutable once built: a change of the tenant's policy builds a new one."""

    def __init__(
        self,
        tenant: str,
        version: int,
        roles: Iterable[Role],
        bindings: Iterable[Binding],
        labels: Iterable[Label] = (),
        *,
        cache_size: int = 10_000,
    ) -> None:
        self.tenant = tenant
        self.version = version
        self.labels: dict[str, str] = {label.resource: label.classification for label in labels}
        """Each labelled resource's classification, by resource (``<type>/<name>``)."""
        self.confirmed_at = 0.0
        """When the store last confirmed this version is the tenant's current one
        (the authorizer's clock)."""
        self.roles: dict[str, Role] = {role.role_id: role for role in roles}
        self._rules: dict[str, MatchedRule] = {}
        p_lines: list[list[str]] = []
        for role in self.roles.values():
            for index, permission in enumerate(role.permissions):
                rule_id = f"{role.role_id}#{index}"
                self._rules[rule_id] = MatchedRule(role.role_id, permission)
                max_level = (
                    str(CLASSIFICATION_LEVELS[permission.max_classification])
                    if permission.max_classification
                    else "0"
                )
                clearance = "1" if permission.require_clearance else "0"
                types = (
                    TENANT_TYPES
                    if permission.resource_type == ANY_TYPE
                    else (permission.resource_type,)
                )
                for action in permission.actions:
                    for resource_type in types:
                        p_lines.append(
                            [
                                role.role_id,
                                tenant,
                                resource_type,
                                permission.name_pattern,
                                action,
                                max_level,
                                clearance,
                                rule_id,
                            ]
                        )
        g_lines = [[b.principal, b.role_id, tenant] for b in bindings]
        model = FastModel(_INDEX)
        model.load_model_from_text(MODEL)
        self._enforcer = _Enforcer(model, _RulesAdapter(p_lines, g_lines))
        self._enforcer.add_function("classificationAllows", _classification_allows)
        self._line_count = len(p_lines)
        self._cache: OrderedDict[_Key, Decision] = OrderedDict()
        self._cache_size = cache_size

    @property
    def line_count(self) -> int:
        """How many casbin policy lines the tenant's roles make."""
        return self._line_count

    def bound_roles(self, subject: str) -> list[str]:
        """The roles bound to ``subject`` in this tenant (casbin's domain role manager)."""
        roles: list[str] = self._enforcer.get_roles_for_user_in_domain(subject, self.tenant)
        return roles

    def roles_of(self, subject: str, credential_roles: frozenset[str]) -> tuple[str, ...]:
        """Every role ``subject`` holds here: its credential's and its bindings', sorted."""
        return tuple(sorted(credential_roles.union(self.bound_roles(subject))))

    def decide(
        self,
        subject: str,
        credential_roles: frozenset[str],
        resource_type: str,
        name: str,
        action: str,
        level: int,
        clearance: int,
    ) -> Decision:
        """Whether ``subject`` with ``credential_roles`` may take ``action`` on the
        resource ``resource_type/name`` classified at ``level``, with clearance
        ``clearance`` (levels are 1..4, see rules.CLASSIFICATIONS)."""
        key = (subject, credential_roles, resource_type, name, action, level, clearance)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        decision = self._evaluate(key)
        if self._cache_size:
            self._cache[key] = decision
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return decision

    def _evaluate(self, key: _Key) -> Decision:
        subject, credential_roles, resource_type, name, action, level, clearance = key
        roles = self.roles_of(subject, credential_roles)
        policy = self._enforcer.model.model["p"]["p"].policy
        for role in roles:
            if role not in self.roles:
                continue
            with fast_policy_filter(policy, role, action, resource_type):
                allowed, explain = self._enforcer.enforce_ex(
                    role, self.tenant, resource_type, name, action, level, clearance
                )
            if allowed:
                rule = self._rules[explain[-1]]
                return Decision(True, f"allowed by role {role}", rule, roles)
        return Decision(False, "default deny", None, roles)
