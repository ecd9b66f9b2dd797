"""ava256: AVA-256 captures -> verified raw tree -> sharded Zarr -> universal avatar decoders."""

__version__ = "0.1.0"
