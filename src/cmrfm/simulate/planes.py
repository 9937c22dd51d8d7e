"""Imaging planes cut from one phantom: a SAX stack base → apex and 2CH/3CH/4CH long-axis planes.

A :class:`Plane` is a rectangle of pixels in world (RAS) millimetres; a stack of planes shares its
in-plane axes, so one affine (voxel → RAS mm) describes the whole series.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from cmrfm.constants import View
from cmrfm.simulate.anatomy import Phantom

#: Angle (deg, heart frame: 0 septum, 90 anterior) of each long-axis plane about the LV axis.
LAX_ANGLES_DEG: dict[View, float] = {View.FOUR_CH: 5.0, View.TWO_CH: 90.0, View.THREE_CH: 45.0}
#: Height of the long-axis FOV centre along the LV axis, as a fraction of the base height.
LAX_CENTRE_FRACTION = 0.65
#: In-plane shift of the SAX FOV centre towards the RV (mm) and its jitter.
SAX_CENTRE_SHIFT_MM = 12.0
FOV_JITTER_MM = 10.0


@dataclass
class Plane:
    """One image plane.

    Attributes:
        view: The view.
        centre: World position (RAS mm) of the FOV centre.
        u: Unit vector along the pixel index i (X).
        v: Unit vector along the pixel index j (Y, phase encode).
        shape: ``(nx, ny)`` pixels.
        spacing: ``(dx, dy)`` mm.
        thickness: Slice thickness (mm).
        angle_deg: For long-axis planes, the angle about the LV axis (heart frame).
    """

    view: View
    centre: np.ndarray
    u: np.ndarray
    v: np.ndarray
    shape: tuple[int, int]
    spacing: tuple[float, float]
    thickness: float
    angle_deg: float | None = None
    meta: dict = field(default_factory=dict)

    @property
    def normal(self) -> np.ndarray:
        """Unit normal ``u × v``."""
        return np.cross(self.u, self.v)

    @property
    def origin(self) -> np.ndarray:
        """World position of pixel (0, 0)."""
        nx, ny = self.shape
        dx, dy = self.spacing
        return self.centre - self.u * dx * (nx - 1) / 2 - self.v * dy * (ny - 1) / 2

    def points(self, i: np.ndarray, j: np.ndarray, depth: float = 0.0) -> np.ndarray:
        """World points of fractional pixel coordinates on the grid ``i × j`` → ``(len(i), len(j), 3)``."""
        dx, dy = self.spacing
        base = self.origin + depth * self.normal
        return (
            base[None, None, :]
            + (np.asarray(i, dtype=np.float64) * dx)[:, None, None] * self.u[None, None, :]
            + (np.asarray(j, dtype=np.float64) * dy)[None, :, None] * self.v[None, None, :]
        )  # (I, J, 3)


def stack_affine(planes: list[Plane]) -> np.ndarray:
    """Voxel → RAS mm affine of a stack of parallel planes (slice index along the stack)."""
    first = planes[0]
    dx, dy = first.spacing
    step = planes[1].origin - first.origin if len(planes) > 1 else first.normal * first.thickness
    affine = np.eye(4)
    affine[:3, 0] = first.u * dx
    affine[:3, 1] = first.v * dy
    affine[:3, 2] = step
    affine[:3, 3] = first.origin
    return affine


def sax_stack(
    phantom: Phantom,
    shape: tuple[int, int],
    spacing: float,
    thickness: float,
    gap: float,
    base_margin: float,
    rng: np.random.Generator,
) -> list[Plane]:
    """SAX planes perpendicular to the LV long axis from above the ED mitral plane to the apex.

    Args:
        phantom: The subject.
        shape: Matrix ``(nx, ny)``.
        spacing: In-plane pixel size (mm).
        thickness: Slice thickness (mm).
        gap: Gap between slices (mm).
        base_margin: Height of the first slice centre above the ED mitral plane (mm).
        rng: Random generator for FOV jitter.
    """
    heart = phantom.heart
    rot = phantom.rotation
    z_top = heart.L_ed * (1 + heart.p.base_fraction) + base_margin
    z_bottom = -heart.w_apex + 0.25 * thickness
    step = thickness + gap
    n = max(1, math.floor((z_top - z_bottom) / step) + 1)
    offset = np.array([SAX_CENTRE_SHIFT_MM, 0.0]) + rng.normal(0, FOV_JITTER_MM, 2)
    u, v = -rot[:, 0], -rot[:, 1]  # image right = lateral, image down = inferior/posterior
    planes = []
    for k in range(n):
        centre_h = np.array([offset[0], offset[1], z_top - k * step])
        planes.append(
            Plane(
                View.SAX,
                phantom.to_world(centre_h[None], np.zeros(3))[0],
                u,
                v,
                shape,
                (spacing, spacing),
                thickness,
            )
        )
    return planes


def lax_plane(
    phantom: Phantom,
    view: View,
    shape: tuple[int, int],
    spacing: float,
    thickness: float,
    angle_jitter_deg: float,
    rng: np.random.Generator,
) -> Plane:
    """A long-axis plane containing the LV long axis at the view's standard angle (apex up)."""
    heart = phantom.heart
    rot = phantom.rotation
    angle = LAX_ANGLES_DEG[view] + float(rng.normal(0, angle_jitter_deg))
    e = np.array([math.cos(math.radians(angle)), math.sin(math.radians(angle)), 0.0])
    u = -(rot @ e)  # septal/anterior side on the image left
    v = rot[:, 2]  # apex at the top, atria at the bottom
    z_centre = LAX_CENTRE_FRACTION * heart.L_ed * (1 + heart.p.base_fraction)
    shift = rng.normal(0, FOV_JITTER_MM, 2)
    centre_h = np.array([0.0, 0.0, z_centre]) + shift[0] * e + np.array([0, 0, shift[1]])
    centre = phantom.to_world(centre_h[None], np.zeros(3))[0]
    return Plane(view, centre, u, v, shape, (spacing, spacing), thickness, angle_deg=angle)
