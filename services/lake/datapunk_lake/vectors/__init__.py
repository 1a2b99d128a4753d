"""The Lake's vector store: datapunk.lake.v1.VectorService on Qdrant (embedded
qdrant-edge by default, or a Qdrant server)."""

from datapunk_lake.vectors.register import register

__all__ = ["register"]
