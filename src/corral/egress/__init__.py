"""Egress: the only way out of a sandbox, through a filtering proxy on a per-sandbox Unix socket."""

from corral.egress.audit import AuditLog, AuditRecord, Checkpoint, verify
from corral.egress.endpoint import Endpoint
from corral.egress.policy import Decision, Pattern, Policy, parse_pattern, vet_address
from corral.egress.proxy import EgressProxy, ProxyConfig
from corral.egress.resolver import Resolver, StaticResolver, system_resolver
from corral.egress.thread import ProxyThread

__all__ = [
    "AuditLog",
    "AuditRecord",
    "Checkpoint",
    "Decision",
    "EgressProxy",
    "Endpoint",
    "Pattern",
    "Policy",
    "ProxyConfig",
    "ProxyThread",
    "Resolver",
    "StaticResolver",
    "parse_pattern",
    "system_resolver",
    "verify",
    "vet_address",
]
