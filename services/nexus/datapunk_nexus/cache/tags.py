"""Resource tags of calls through Nexus, from the contracts' descriptor set. The naming
itself (and why it is a tree) is ``datapunk_shared.resource_tags``, which the services
use too when they publish the invalidations of their writes: one naming on both sides."""

from __future__ import annotations

from pathlib import Path

from datapunk_shared import resource_tags
from datapunk_shared.resource_tags import ancestors, scoped, tag_matches

from datapunk_nexus.contracts import default_descriptor_set, load_contracts

__all__ = ["ResourceTags", "ancestors", "default_descriptor_set", "scoped", "tag_matches"]


class ResourceTags(resource_tags.ResourceTags):
    """Tags of calls of every method in the contracts' descriptor set."""

    def __init__(self, descriptor_set: Path | None = None) -> None:
        contracts = load_contracts(descriptor_set)
        super().__init__(resource_tags.routes_of_files(contracts.files, contracts.pool))
