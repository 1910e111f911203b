"""vchunkfs: Icechunk repositories of virtual Zarr datasets as mounted directories."""

__version__ = "0.1.0"
