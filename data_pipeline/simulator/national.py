"""Public national statistics the simulator's rates and code prevalences are drawn from (never from MIMIC).

Sources (docs/simulator.md lists them with the figures taken):
- Inpatient stays per 1,000 population per year by age: HCUP National (Nationwide) Inpatient Sample,
  Statistical Brief #79 (NIS 2007, Table 1: 45-54 101.7, 55-64 145.9, 65-74 253.4 per 1,000) and Statistical
  Brief #180 (NIS 2012, Table 1, by age band) / #235 (2000-2015 trends, non-maternal non-neonatal stays).
  Bands outside SB #79's table (18-44 non-maternal, 75-84, 85+) are read off SB #180/#235's age rows and rounded.
- Which secondary diagnoses are common: the most frequent all-listed diagnoses of HCUP NIS stays (HCUPnet,
  CCSR categories) and the primary/secondary diagnosis groups of the NAMCS National Summary Tables (CDC/NCHS).
  The tail's head below lists, in roughly that national order, the commonest billable codes of categories the
  named clinical tables (clinical.py) do not already own; its rank decides a code's tail frequency.
"""
from __future__ import annotations

import numpy as np

# (lower age bound, stays per 1,000 per year), adults, maternal stays excluded (the cohort simulates no pregnancy).
INPATIENT_STAYS_PER_1000: tuple[tuple[float, float], ...] = (
    (18.0, 55.0), (45.0, 101.7), (55.0, 145.9), (65.0, 253.4), (75.0, 370.0), (85.0, 480.0),
)


def inpatient_rate(age: np.ndarray) -> np.ndarray:
    """Published stays per person-year at each age (piecewise constant over the bands above)."""
    bounds = np.array([b for b, _ in INPATIENT_STAYS_PER_1000])
    rates = np.array([r for _, r in INPATIENT_STAYS_PER_1000]) / 1000.0
    return rates[np.clip(np.searchsorted(bounds, np.asarray(age), side="right") - 1, 0, rates.size - 1)]


# Head of the diagnosis long tail, commonest first (dotless ICD-10-CM, billable). Codes a build of the code book
# cannot map through the GEMs are skipped there (the test of the code tables lists any).
NATIONAL_TAIL_HEAD: tuple[str, ...] = (
    # status / history / risk-factor codes: the commonest secondary diagnoses of inpatient stays (NIS)
    "Z66", "Z880", "Z9181", "Z720", "Z800", "Z98890", "Z9049", "Z9119", "Z8249", "Z803",
    # chronic conditions common among NIS stays and NAMCS visits
    "N400", "M109", "E8342", "F339", "M1990", "I739", "G40909", "I959", "E890", "J309",
    "K760", "I350", "F05", "R339", "R2689", "K449", "D72829", "E213", "J90", "E8351",
    "M6281", "N289", "R634", "I429", "I447", "I499", "I517", "F319", "F1120", "M069",
    "K2970", "K8020", "I714", "I872", "H409", "H9190", "B182", "M797", "M8580", "M47816",
    "C61", "C50919", "C3490", "C189", "C7951", "J439", "J8410", "J479", "K7460", "K8590",
    "R112", "R197", "R509", "R918", "R319", "R296", "R9431", "A0472", "D61818", "D709",
    "G43909", "G2581", "I340", "I6529", "N200", "L400", "M5126", "F209", "F1290", "F4310",
    "N3281", "K649", "K589", "K529", "N529", "D751", "E291", "E8881", "B20", "I8390",
)
