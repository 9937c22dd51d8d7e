"""Reference ("normal") ranges for flagging measurements, and the flags themselves.

The default table holds *approximate* adult ranges (mean ± 2 SD, 1.5 T bSSFP, papillary muscles in
the LV volume) rounded after the pooled values collected in Kawel-Boehm N. et al., "Reference ranges
('normal values') for cardiovascular magnetic resonance (CMR) in adults and children: 2020 update",
J Cardiovasc Magn Reson 22:87 (2020). They are screening flags, not diagnoses, and differ between
sites, field strengths and contouring conventions: a site passes its own table as YAML
(``{sex: {key: [low, high]}}``) to :func:`load_ranges`.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from cmrfm.errors import ConfigError

Range = tuple[float, float]

#: Keys are measurement names as in measurements.json; indexed volumes in mL/m², mass in g/m².
DEFAULT_RANGES: dict[str, dict[str, Range]] = {
    "male": {
        "lv_ef_pct": (57, 77),
        "lv_edv_ml_m2": (57, 105),
        "lv_esv_ml_m2": (14, 38),
        "lv_mass_g_m2": (46, 83),
        "rv_ef_pct": (47, 71),
        "rv_edv_ml_m2": (61, 121),
        "rv_esv_ml_m2": (22, 58),
        "lv_edv_ml": (106, 214),
        "lv_esv_ml": (26, 82),
        "lv_mass_g": (92, 176),
        "rv_edv_ml": (118, 250),
        "rv_esv_ml": (41, 121),
    },
    "female": {
        "lv_ef_pct": (57, 77),
        "lv_edv_ml_m2": (56, 96),
        "lv_esv_ml_m2": (13, 34),
        "lv_mass_g_m2": (38, 66),
        "rv_ef_pct": (48, 74),
        "rv_edv_ml_m2": (48, 103),
        "rv_esv_ml_m2": (14, 47),
        "lv_edv_ml": (86, 178),
        "lv_esv_ml": (22, 66),
        "lv_mass_g": (72, 128),
        "rv_edv_ml": (83, 179),
        "rv_esv_ml": (21, 89),
    },
}


def _pooled(table: dict[str, dict[str, Range]]) -> dict[str, Range]:
    """Sex-unknown ranges: the union of the sexes' ranges (flags only what is abnormal for both)."""
    keys = set(table.get("male", {})) & set(table.get("female", {}))
    return {
        k: (min(table["male"][k][0], table["female"][k][0]), max(table["male"][k][1], table["female"][k][1]))
        for k in keys
    }


def load_ranges(path: str | Path | None = None) -> dict[str, dict[str, Range]]:
    """The default table, or a site's YAML table; adds an ``unknown`` (pooled) sex."""
    table = {sex: dict(values) for sex, values in DEFAULT_RANGES.items()}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
            table = {
                sex: {k: (float(v[0]), float(v[1])) for k, v in vals.items()} for sex, vals in loaded.items()
            }
        except (OSError, yaml.YAMLError, TypeError, IndexError, ValueError, AttributeError) as err:
            raise ConfigError(f"{path}: not a valid reference-range table ({err})") from None
    table["unknown"] = _pooled(table)
    return table


def flag_measurements(
    values: dict[str, float], sex: str | None = None, table: dict[str, dict[str, Range]] | None = None
) -> dict[str, dict[str, object]]:
    """For each measurement with a reference range: the range and ``low``/``normal``/``high``."""
    table = table or load_ranges()
    ranges = table.get((sex or "unknown").lower(), table["unknown"])
    flags: dict[str, dict[str, object]] = {}
    for key, value in values.items():
        if key not in ranges or value is None or value != value:  # NaN check
            continue
        low, high = ranges[key]
        status = "low" if value < low else "high" if value > high else "normal"
        flags[key] = {"value": value, "range": [low, high], "flag": status}
    return flags
