"""Real Zarr readers (GDAL, netCDF-C, tensorstore, zarrita.js, zarr.js, zarr-python, xarray)
run against Zarr directories: see harness.py; the sample stores are in samples.py."""
