"""Write MINC1 (netCDF) and MINC2 (HDF5) volumes, as BISON and the MINC tools store them.

Used to build synthetic BISON runs; reading MINC is left to nibabel (:mod:`wmhseg.image_io`). A volume
is given as a 3-D array with a voxel-to-world (RAS mm) affine, like a NIfTI image; it is stored
in MINC's usual ``zspace, yspace, xspace`` order (the slowest-varying dimension first), each
dimension with its ``start``, ``step`` and ``direction_cosines``. MINC's world coordinates are
RAS, so a file written here reads back with the same world geometry.

Integer data are stored with ``valid_range`` equal to ``image-min``/``image-max`` (the identity
scaling); float data are stored as float32.

Example:
    >>> write_minc2("t1.mnc", data, affine)                       # doctest: +SKIP
    >>> nibabel.load("t1.mnc").affine                              # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from wmhseg.errors import InputError
from wmhseg.geometry import voxel_sizes

__all__ = ["minc_geometry", "write_minc1", "write_minc2"]

_DIMS = ("xspace", "yspace", "zspace")


def minc_geometry(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, list[dict]]:
    """The array in ``(zspace, yspace, xspace)`` storage order and each dimension's attributes.

    The affine's voxel axes are matched to the world axes they lie closest to (x, y, z); each
    gets ``step`` (signed voxel size), ``direction_cosines`` (unit column) and ``start`` (the
    world origin expressed along the direction cosines), as MINC defines them.

    Raises:
        InputError: not 3-D data, or an affine whose axes do not map one-to-one to x, y, z.
    """
    data = np.asarray(data)
    affine = np.asarray(affine, dtype=np.float64)
    if data.ndim != 3 or affine.shape != (4, 4):
        raise InputError(f"MINC writing needs 3-D data and a 4x4 affine, got {data.shape} and {affine.shape}")
    lin = affine[:3, :3]
    sizes = voxel_sizes(affine)
    cosines = lin / sizes
    world_axis = np.abs(cosines).argmax(axis=0)  # which of x, y, z each voxel axis follows
    if sorted(world_axis.tolist()) != [0, 1, 2]:
        raise InputError(f"affine axes {world_axis.tolist()} do not map one-to-one to x, y, z")
    signs = np.sign(cosines[world_axis, np.arange(3)])
    steps = sizes * signs
    cosines = cosines * signs  # MINC keeps the cosine near +axis and puts the sign in the step
    starts = np.linalg.solve(cosines, affine[:3, 3])
    order = [int(np.flatnonzero(world_axis == w)[0]) for w in (2, 1, 0)]  # voxel axes for z, y, x
    stored = np.transpose(data, order)
    dims = []
    for w in (2, 1, 0):
        v = int(np.flatnonzero(world_axis == w)[0])
        dims.append({"name": _DIMS[w], "length": int(data.shape[v]), "step": float(steps[v]),
                     "start": float(starts[v]), "direction_cosines": cosines[:, v].astype(np.float64)})
    return np.ascontiguousarray(stored), dims


def _stored(data: np.ndarray) -> tuple[np.ndarray, float, float]:
    if np.issubdtype(data.dtype, np.integer):
        return data, float(data.min()), float(data.max())
    return data.astype(np.float32), float(np.nanmin(data)), float(np.nanmax(data))


def write_minc2(path: str | os.PathLike, data: np.ndarray, affine: np.ndarray) -> Path:
    """Write a MINC2 (HDF5) volume; integer dtypes keep their type, others become float32."""
    import h5py

    stored, dims = minc_geometry(data, affine)
    stored, lo, hi = _stored(stored)
    path = Path(path)
    with h5py.File(path, "w") as f:
        root = f.create_group("minc-2.0")
        root.attrs["ident"] = np.bytes_("wmhseg")
        root.attrs["minc_version"] = np.bytes_("2.0")
        group = root.create_group("dimensions")
        for d in dims:
            ds = group.create_dataset(d["name"], data=np.int32(0))
            ds.attrs["varid"] = np.bytes_("MINC standard variable")
            ds.attrs["vartype"] = np.bytes_("dimension____")
            ds.attrs["version"] = np.bytes_("MINC Version    1.0")
            ds.attrs["spacing"] = np.bytes_("regular__")
            ds.attrs["alignment"] = np.bytes_("centre")
            ds.attrs["units"] = np.bytes_("mm")
            ds.attrs["length"] = np.int32(d["length"])
            ds.attrs["step"] = np.float64(d["step"])
            ds.attrs["start"] = np.float64(d["start"])
            ds.attrs["direction_cosines"] = d["direction_cosines"]
        image = root.create_group("image").create_group("0")
        var = image.create_dataset("image", data=stored)
        var.attrs["dimorder"] = np.bytes_(",".join(d["name"] for d in dims))
        var.attrs["valid_range"] = np.array([lo, hi], dtype=np.float64)
        var.attrs["complete"] = np.bytes_("true_")
        for name, value in (("image-min", lo), ("image-max", hi)):
            ds = image.create_dataset(name, data=np.float64(value))
            ds.attrs["dimorder"] = np.bytes_("")
    return path


_NETCDF_TYPES = {np.dtype(np.int8): "b", np.dtype(np.uint8): "b", np.dtype(np.int16): "h",
                 np.dtype(np.uint16): "h", np.dtype(np.int32): "i", np.dtype(np.uint32): "i"}


def write_minc1(path: str | os.PathLike, data: np.ndarray, affine: np.ndarray) -> Path:
    """Write a MINC1 (netCDF classic) volume with SciPy's netCDF writer.

    Integer data are stored as signed/unsigned byte, short or int (``signtype``); others as float.
    """
    from scipy.io import netcdf_file

    stored, dims = minc_geometry(data, affine)
    stored, lo, hi = _stored(stored)
    if np.issubdtype(stored.dtype, np.integer):
        typecode = _NETCDF_TYPES.get(stored.dtype)
        if typecode is None:
            raise InputError(f"MINC1 cannot store {stored.dtype} data")
        signtype = b"unsigned" if np.issubdtype(stored.dtype, np.unsignedinteger) else b"signed__"
        stored = stored.astype(stored.dtype.str.replace("u", "i"))  # netCDF has signed types only
    else:
        typecode, signtype = "f", b"signed__"
    path = Path(path)
    with netcdf_file(str(path), "w") as f:
        for d in dims:
            f.createDimension(d["name"], d["length"])
        for d in dims:
            var = f.createVariable(d["name"], "i", ())
            var.varid, var.vartype = b"MINC standard variable", b"dimension____"
            var.version, var.spacing, var.alignment, var.units = b"MINC Version    1.0", b"regular__", b"centre", b"mm"
            var.step, var.start = d["step"], d["start"]
            var.direction_cosines = d["direction_cosines"]
        image = f.createVariable("image", typecode, tuple(d["name"] for d in dims))
        image[:] = stored
        image.signtype = signtype
        image.valid_range = np.array([lo, hi], dtype=np.float64)
        image.complete = b"true_"
        for name, value in (("image-min", lo), ("image-max", hi)):
            var = f.createVariable(name, "d", ())
            var.data[()] = value
    return path
