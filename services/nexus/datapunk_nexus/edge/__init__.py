"""Nexus's REST/JSON edge (see ``server.RestEdge``; ``start_rest_edge`` wires it into a
service)."""

from __future__ import annotations

from datapunk_nexus.edge.setup import rest_route_table, start_rest_edge

__all__ = ["rest_route_table", "start_rest_edge"]
