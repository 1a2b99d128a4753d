"""Which limits apply to a call, and the bucket each one counts it in."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from fnmatch import fnmatchcase

from datapunk_shared.config import RateLimitRule

from datapunk_nexus.policy import CallInfo

__all__ = ["Bucket", "CompiledRule", "MethodTable", "compile_rules", "matches_any"]


def matches_any(method: str, globs: tuple[str, ...]) -> bool:
    """True when the full method name matches one of the globs (case-sensitive)."""
    return any(fnmatchcase(method, glob) for glob in globs)


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """A configured rule with its GCRA parameters in microseconds."""

    name: str
    methods: tuple[str, ...]
    key: str
    per_method: bool
    burst: int
    emission_interval_us: int
    """The time one call "costs": period / rate."""

    @property
    def burst_offset_us(self) -> int:
        """How far ahead of now the bucket may be booked: ``burst`` calls' worth."""
        return self.emission_interval_us * self.burst

    def identity(self, call: CallInfo) -> str | None:
        """Who this rule counts the call against, or None when the call lacks that key."""
        match self.key:
            case "caller":
                if call.principal:
                    return "p=" + call.principal
                if call.api_key_id:
                    return "k=" + call.api_key_id
                return "ip=" + call.client_ip
            case "principal":
                return call.principal or None
            case "api_key":
                return call.api_key_id or None
            case "client_ip":
                return call.client_ip
            case "tenant":
                return call.tenant or None
            case _:
                return ""


@dataclass(frozen=True, slots=True)
class Bucket:
    """One counter a call is checked against."""

    rule: CompiledRule
    key: str


def compile_rules(rules: list[RateLimitRule]) -> tuple[CompiledRule, ...]:
    return tuple(
        CompiledRule(
            name=rule.name,
            methods=tuple(rule.methods),
            key=rule.key,
            per_method=rule.per_method,
            burst=rule.burst or rule.rate,
            emission_interval_us=max(1, round(rule.period * 1_000_000 / rule.rate)),
        )
        for rule in rules
    )


class MethodTable:
    """The rules matching each method, computed once per method name. The table is
    bounded: method names come from callers, so it is emptied when it grows too big."""

    def __init__(self, rules: tuple[CompiledRule, ...], *, max_methods: int = 4096) -> None:
        self._rules = rules
        self._max_methods = max_methods
        self._by_method: dict[str, tuple[CompiledRule, ...]] = {}

    def rules_for(self, method: str) -> tuple[CompiledRule, ...]:
        found = self._by_method.get(method)
        if found is None:
            if len(self._by_method) >= self._max_methods:
                self._by_method.clear()
            found = self._by_method[method] = tuple(
                rule for rule in self._rules if matches_any(method, rule.methods)
            )
        return found

    def buckets(self, prefix: str, call: CallInfo) -> list[Bucket]:
        """The buckets ``call`` is counted in: one per applicable rule. Identities are
        hashed so that keys stay short and no caller-chosen text shapes them."""
        buckets = []
        for rule in self.rules_for(call.method):
            identity = rule.identity(call)
            if identity is None:
                continue
            if rule.per_method:
                identity += "\x00" + call.method
            digest = hashlib.blake2b(identity.encode(), digest_size=12).hexdigest()
            buckets.append(Bucket(rule, f"{prefix}{rule.name}:{rule.key}:{digest}"))
        return buckets
