"""The two HDF5 shower layouts caloforge reads and writes, and how to tell them apart.

CaloChallenge (CaloChallenge/homepage README, datasets 1-3):
    ``incident_energies`` (N, 1) MeV and ``showers`` (N, n_voxels) MeV, voxels flat in the order
    defined in ``caloforge.geometry`` (radial fastest, then alpha, then layer).

Par04 / LEMURS (Geant4 examples/extended/parameterisations/Par04, ``training_vae/root2h5.py``:
"Energy values are stored in MeV and angles are stored in radians"; LEMURS, arXiv 2509.05108):
    ``showers`` (N, R, PHI, Z) MeV, ``incident_energy`` (N,) MeV, ``incident_theta`` and
    ``incident_phi`` (N,) radians. The public CaloDiT-2 loader for LEMURS reads exactly these four keys
    and divides energies by 1000 to get GeV, and Par04's inference code passes
    ``G4ThreeVector::theta()/phi()`` (radians) to the model, so no unit conversion is needed on either
    side. Par04's phi is the azimuth of the particle direction in the detector's global frame.

caloforge adds, in both layouts, optional ``incident_theta``, ``incident_phi`` (radians) and
``detector`` (integer index) datasets and a JSON file attribute ``caloforge_geometry`` so that any
geometry, preset or not, survives a round trip; the official readers ignore extra keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from caloforge.errors import InputError

__all__ = ["FORMATS", "FORMAT_NAMES", "GEOMETRY_ATTRIBUTE", "MEDIUM_ATTRIBUTE", "Layout", "detect_format"]

GEOMETRY_ATTRIBUTE = "caloforge_geometry"
MEDIUM_ATTRIBUTE = "caloforge_medium"  # the simulated medium, when not the geometry's own


@dataclass(frozen=True)
class Layout:
    """Dataset names and the rank of ``showers`` in one file format."""

    name: str
    energy_key: str
    showers_rank: int
    description: str
    showers_key: str = "showers"
    theta_key: str = "incident_theta"
    phi_key: str = "incident_phi"
    detector_key: str = "detector"

    def key(self, condition: str) -> str:
        """HDF5 dataset name of a condition (``energy``, ``theta``, ``phi``, ``detector``)."""
        return {
            "energy": self.energy_key, "theta": self.theta_key, "phi": self.phi_key,
            "detector": self.detector_key, "showers": self.showers_key,
        }[condition]


FORMATS: dict[str, Layout] = {
    "calochallenge": Layout(
        "calochallenge", "incident_energies", 2,
        "CaloChallenge: incident_energies (N, 1) MeV, showers (N, n_voxels) MeV",
    ),
    "par04": Layout(
        "par04", "incident_energy", 4,
        "Geant4 Par04 / LEMURS: incident_energy (N,) MeV, showers (N, R, PHI, Z) MeV, angles in radians",
    ),
}
FORMAT_NAMES: tuple[str, ...] = tuple(FORMATS)


def detect_format(h5: Any, path: str | None = None) -> str:
    """Name of the layout of an open ``h5py.File`` (or any mapping of keys to datasets).

    Decided by the energy key; when a file has both energy keys, the rank of ``showers`` decides.
    Raises ``InputError`` naming the missing key when neither layout fits.
    """
    keys = set(h5.keys())
    where = path if path is not None else getattr(h5, "filename", None)
    found = ", ".join(sorted(keys)) or "none"
    if "showers" not in keys:
        raise InputError(where, "showers", f"is missing (keys found: {found})",
                         "a 'showers' dataset (CaloChallenge or Par04/LEMURS layout)")
    has = {name: layout.energy_key in keys for name, layout in FORMATS.items()}
    if sum(has.values()) == 1:
        return next(name for name, present in has.items() if present)
    if not any(has.values()):
        raise InputError(
            where, "incident_energies", f"is missing (keys found: {found})",
            "'incident_energies' (CaloChallenge) or 'incident_energy' (Par04/LEMURS) next to 'showers'",
        )
    rank = len(getattr(h5["showers"], "shape", ()))
    for name, layout in FORMATS.items():
        if layout.showers_rank == rank:
            return name
    raise InputError(where, "showers", f"has rank {rank}",
                     "rank 2 (CaloChallenge, N x voxels) or 4 (Par04, N x R x PHI x Z)")
