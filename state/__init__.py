"""Shared tenant state (CRDTs, gossip, Redis persistence): arrives with its own issue."""

__all__: list[str] = []
