"""The latent clinical model both synthetic health systems share.

Everything clinical lives in the small tables below; the engine (engine.py) turns them into vectorised draws.
These tables are the ONLY hand-written codes of the simulator: the handful of condition-defining ICD-10-CM codes,
acute-episode codes, condition-tied procedure pairs (ICD-10-PCS, ICD-9-CM vol. 3) and CPT codes. The long tail of
diagnoses and procedures comes from the package code lists (codes.py). Codes are written without dots, exactly as
MIMIC-IV and MEDS write them; tests check every one against the 2024 ICD-10-CM/PCS lists and the GEMs.

Why these choices:
- Each condition's ICD-10-CM category (first 3 characters) is distinct, because the pipeline canonicalises
  diagnoses to 3 characters by default: a condition never collapses into another one's token.
- Onset hazards are annual log-hazards: log(p50) + age_slope * (age - 50) / 10 + male_effect + sum(links).
  The comorbidity links (obesity -> hypertension -> type 2 diabetes -> CKD -> heart failure, ...) make new onsets
  predictable from precursors; prediabetes multiplies the diabetes hazard by ~7, obesity by ~2.5, hypertension by
  ~1.6, so diabetes onset is predictable but not trivial (a third of onsets have no precursor).
- Codes co-occurring with a condition (complications, medication Z-codes, combination codes) and acute episodes
  whose likelihood depends on conditions give a next-visit signal beyond "repeat the history".
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Condition:
    """A chronic condition: once started it stays (unless `resolved_by` starts) and is coded at later visits."""

    name: str
    icd10: str              # the code that names it (dotless ICD-10-CM)
    p50: float              # annual onset probability at age 50, female, no linked conditions
    age_slope: float        # log hazard change per decade of age
    male: float = 0.0       # log hazard ratio for male sex
    resolved_by: str = ""   # condition whose onset ends this one (prediabetes -> diabetes)


CONDITIONS: tuple[Condition, ...] = (
    Condition("obesity", "E669", 0.009, -0.05),
    Condition("tobacco", "F17210", 0.0035, -0.6, male=0.4),
    Condition("hyperlipidaemia", "E785", 0.013, 0.35, male=0.3),
    Condition("hypertension", "I10", 0.015, 0.45, male=0.2),
    Condition("prediabetes", "R7309", 0.006, 0.25, male=0.1, resolved_by="t2_diabetes"),
    Condition("t2_diabetes", "E119", 0.0018, 0.35, male=0.2),
    Condition("ckd", "N189", 0.0008, 0.75),
    Condition("cad", "I2510", 0.0015, 0.6, male=0.7),
    Condition("heart_failure", "I509", 0.0004, 0.8, male=0.3),
    Condition("afib", "I4891", 0.0007, 0.85, male=0.3),
    Condition("copd", "J449", 0.0005, 0.5, male=0.1),
    Condition("depression", "F329", 0.005, -0.1, male=-0.6),
    Condition("anxiety", "F419", 0.0035, -0.2, male=-0.5),
    Condition("hypothyroidism", "E039", 0.004, 0.25, male=-1.4),
    Condition("gerd", "K219", 0.005, 0.15),
    Condition("osteoarthritis", "M179", 0.004, 0.6),
    Condition("sleep_apnea", "G4733", 0.0008, 0.2, male=0.7),
    Condition("asthma", "J45909", 0.002, -0.2, male=-0.3),
    Condition("dementia", "F0390", 0.0002, 1.3),
    Condition("cancer_history", "Z85038", 0.0015, 0.6),
    Condition("vte_history", "Z86718", 0.0008, 0.5),
    Condition("chronic_anemia", "D649", 0.0015, 0.6, male=-0.2),
)

# (from, to): log hazard ratio added to `to`'s onset hazard while `from` is present.
LINKS: dict[tuple[str, str], float] = {
    ("obesity", "hypertension"): 0.9, ("obesity", "prediabetes"): 1.1, ("obesity", "t2_diabetes"): 0.9,
    ("obesity", "sleep_apnea"): 1.6, ("obesity", "hyperlipidaemia"): 0.5, ("obesity", "osteoarthritis"): 0.7,
    ("obesity", "gerd"): 0.4, ("obesity", "heart_failure"): 0.3,
    ("prediabetes", "t2_diabetes"): 2.0,
    ("hypertension", "t2_diabetes"): 0.5, ("hypertension", "ckd"): 0.9, ("hypertension", "cad"): 0.6,
    ("hypertension", "heart_failure"): 0.8, ("hypertension", "afib"): 0.5,
    ("hyperlipidaemia", "cad"): 0.7, ("hyperlipidaemia", "t2_diabetes"): 0.3,
    ("t2_diabetes", "ckd"): 1.4, ("t2_diabetes", "cad"): 0.7, ("t2_diabetes", "heart_failure"): 0.5,
    ("t2_diabetes", "hyperlipidaemia"): 0.8, ("t2_diabetes", "depression"): 0.4,
    ("ckd", "heart_failure"): 0.5, ("cad", "heart_failure"): 1.1, ("cad", "afib"): 0.4,
    ("heart_failure", "afib"): 1.0, ("heart_failure", "ckd"): 0.6,
    ("tobacco", "copd"): 2.2, ("tobacco", "cad"): 0.6, ("asthma", "copd"): 0.6,
    ("copd", "depression"): 0.4, ("copd", "heart_failure"): 0.3,
    ("depression", "anxiety"): 1.2, ("anxiety", "depression"): 1.0,
    ("sleep_apnea", "afib"): 0.5, ("sleep_apnea", "hypertension"): 0.4,
    ("cancer_history", "vte_history"): 1.2, ("ckd", "chronic_anemia"): 1.2, ("cancer_history", "chronic_anemia"): 0.8,
    ("obesity", "vte_history"): 0.4,
    ("hypertension", "dementia"): 0.3, ("t2_diabetes", "dementia"): 0.4, ("afib", "dementia"): 0.4,
}


@dataclass(frozen=True)
class Episode:
    """An acute event: the reason for an admission (mimic) or an acute outpatient visit (claims).

    Its weight in a visit's reason draw is weight_<system> * exp(age_slope*(age-50)/10 + male + sum(links)),
    zero unless every condition in `requires` is present.
    """

    name: str
    icd10: str                     # principal diagnosis
    weight_mimic: float
    weight_claims: float
    age_slope: float = 0.0
    male: float = 0.0
    links: dict[str, float] = field(default_factory=dict)
    requires: tuple[str, ...] = ()
    elective: bool = False         # mimic: ELECTIVE / SURGICAL SAME DAY admission rather than emergency


EPISODES: tuple[Episode, ...] = (
    Episode("sepsis", "A419", 1.0, 0.0, 0.3, 0.1, {"t2_diabetes": 0.4, "ckd": 0.5, "copd": 0.3, "dementia": 0.7}),
    Episode("pneumonia", "J189", 1.0, 0.25, 0.3, 0.1, {"copd": 1.2, "heart_failure": 0.5, "asthma": 0.5,
                                                        "tobacco": 0.3, "dementia": 0.6}),
    Episode("uti", "N390", 0.45, 0.5, 0.3, -0.9, {"t2_diabetes": 0.4, "dementia": 0.7}),
    Episode("aki", "N179", 0.4, 0.03, 0.3, 0.2, {"ckd": 1.5, "heart_failure": 0.6, "t2_diabetes": 0.4}),
    Episode("hf_exacerbation", "I5023", 4.0, 0.2, 0.2, 0.0, {"ckd": 0.3}, requires=("heart_failure",)),
    Episode("copd_exacerbation", "J441", 4.0, 0.4, 0.0, 0.0, {"tobacco": 0.3}, requires=("copd",)),
    Episode("ami", "I214", 0.25, 0.01, 0.4, 0.5, {"cad": 1.6, "t2_diabetes": 0.4, "hyperlipidaemia": 0.3,
                                                  "tobacco": 0.5}),
    Episode("stroke", "I639", 0.35, 0.01, 0.5, 0.1, {"afib": 1.4, "hypertension": 0.7, "t2_diabetes": 0.4}),
    Episode("gi_bleed", "K922", 0.4, 0.02, 0.3, 0.1, {"afib": 0.7, "ckd": 0.4}),
    Episode("hip_fracture", "S72001A", 0.25, 0.01, 0.9, -0.7, {"dementia": 1.0}),
    Episode("cellulitis", "L03116", 0.3, 0.15, 0.0, 0.1, {"t2_diabetes": 0.7, "obesity": 0.6}),
    Episode("hypoglycemia", "E162", 1.5, 0.2, 0.2, 0.0, {"ckd": 0.5}, requires=("t2_diabetes",)),
    Episode("syncope", "R55", 0.3, 0.1, 0.5, 0.0, {"afib": 0.3}),
    Episode("chest_pain", "R079", 0.5, 0.35, 0.1, 0.2, {"cad": 0.9, "gerd": 0.4, "anxiety": 0.4}),
    Episode("afib_rvr", "R002", 2.0, 0.2, 0.2, 0.0, {"heart_failure": 0.3}, requires=("afib",)),
    Episode("alcohol_withdrawal", "F10239", 0.25, 0.02, -0.3, 0.9, {"depression": 0.5}),
    Episode("bowel_obstruction", "K567", 0.2, 0.0, 0.3),
    Episode("knee_replacement", "M1711", 2.0, 0.0, 0.3, 0.0, {"obesity": 0.3}, requires=("osteoarthritis",),
            elective=True),
    Episode("elective_pci", "I25119", 1.0, 0.0, 0.2, 0.3, {"t2_diabetes": 0.2}, requires=("cad",), elective=True),
    # outpatient-only reasons (claims)
    Episode("uri", "J069", 0.0, 1.4, -0.3),
    Episode("back_pain", "M549", 0.0, 0.8, 0.1, 0.0, {"obesity": 0.4}),
    Episode("sinusitis", "J0190", 0.0, 0.5, -0.2, -0.3),
    Episode("bronchitis", "J209", 0.0, 0.4, 0.0, 0.0, {"tobacco": 0.6, "asthma": 0.5}),
    Episode("abdominal_pain", "R1013", 0.0, 0.35, -0.2, -0.4, {"gerd": 0.6}),
    Episode("joint_pain", "M2550", 0.0, 0.4, 0.4, 0.0, {"obesity": 0.3}),
    Episode("dermatitis", "L309", 0.0, 0.3),
    Episode("dizziness", "R42", 0.0, 0.2, 0.4, 0.0, {"anxiety": 0.4}),
)

# Kinds of visit (a feature like a condition or an episode): routine follow-up, preventive, acute, observation stay,
# and the inpatient stay of a claims facility claim (no table row triggers on it: its codes come from its episode).
VISIT_FOLLOWUP, VISIT_WELLNESS, VISIT_ACUTE, VISIT_OBSERVATION = "visit_followup", "visit_wellness", "visit_acute", \
    "visit_observation"
VISIT_INPATIENT = "visit_inpatient"
VISIT_KINDS = (VISIT_FOLLOWUP, VISIT_WELLNESS, VISIT_ACUTE, VISIT_OBSERVATION, VISIT_INPATIENT)

# Codes co-occurring with a condition (trigger = condition) or an episode (trigger = episode) at a visit:
# (trigger, icd10, p_claims, p_mimic, requires, excludes). `requires`/`excludes` name conditions present at the
# visit. Rows with trigger == a condition's own name and icd10 == its defining code are the recurring chronic code;
# the ICD-10-CM combination rules (I10 -> I12/I11/I13 with CKD/heart failure) are expressed with requires/excludes.
DX_ROWS: tuple[tuple[str, str, float, float, tuple[str, ...], tuple[str, ...]], ...] = (
    # episode companions (secondary diagnoses of the admission / acute visit)
    ("sepsis", "R6520", 0.0, 0.4, (), ()), ("sepsis", "N179", 0.0, 0.35, (), ()),
    ("sepsis", "E869", 0.0, 0.3, (), ()), ("sepsis", "D696", 0.0, 0.15, (), ()),
    ("sepsis", "J9601", 0.0, 0.15, (), ()),
    ("pneumonia", "R0902", 0.1, 0.3, (), ()), ("pneumonia", "J9601", 0.0, 0.2, (), ()),
    ("pneumonia", "E871", 0.0, 0.15, (), ()),
    ("uti", "B9620", 0.3, 0.5, (), ()), ("uti", "R410", 0.0, 0.2, (), ()),
    ("aki", "E875", 0.05, 0.35, (), ()), ("aki", "E869", 0.05, 0.3, (), ()),
    ("hf_exacerbation", "J810", 0.0, 0.35, (), ()), ("hf_exacerbation", "R0602", 0.3, 0.3, (), ()),
    ("hf_exacerbation", "R609", 0.3, 0.4, (), ()),
    ("copd_exacerbation", "J9601", 0.0, 0.3, (), ()), ("copd_exacerbation", "R0602", 0.3, 0.3, (), ()),
    ("ami", "R079", 0.3, 0.3, (), ()), ("ami", "I2510", 0.5, 0.6, (), ()),
    ("stroke", "R4701", 0.2, 0.3, (), ()), ("stroke", "R531", 0.2, 0.3, (), ()),
    ("gi_bleed", "D62", 0.2, 0.6, (), ()), ("gi_bleed", "K5730", 0.0, 0.2, (), ()),
    ("hip_fracture", "W19XXXA", 0.5, 0.8, (), ()), ("hip_fracture", "Y92009", 0.0, 0.5, (), ()),
    ("hip_fracture", "M810", 0.2, 0.3, (), ()),
    ("cellulitis", "B9561", 0.0, 0.2, (), ()),
    ("syncope", "R42", 0.1, 0.2, (), ()), ("chest_pain", "R0789", 0.2, 0.2, (), ()),
    ("afib_rvr", "I4891", 0.5, 0.9, (), ()), ("afib_rvr", "R0602", 0.2, 0.3, (), ()),
    ("alcohol_withdrawal", "K7030", 0.0, 0.2, (), ()), ("alcohol_withdrawal", "F17210", 0.0, 0.3, (), ()),
    ("hypoglycemia", "Z794", 0.5, 0.7, (), ()),
    ("elective_pci", "Z955", 0.3, 0.5, (), ()), ("knee_replacement", "Z96651", 0.0, 0.3, (), ()),
    ("uri", "J029", 0.3, 0.0, (), ()),
    (VISIT_WELLNESS, "Z0000", 0.9, 0.0, (), ()), (VISIT_WELLNESS, "Z23", 0.35, 0.0, (), ()),
    (VISIT_WELLNESS, "Z1211", 0.08, 0.0, (), ()), ("back_pain", "M5489", 0.1, 0.0, (), ()),
    # recurring chronic codes (with ICD-10-CM combination rules for hypertension)
    ("obesity", "E669", 0.35, 0.55, (), ()), ("tobacco", "F17210", 0.3, 0.45, (), ()),
    ("hyperlipidaemia", "E785", 0.45, 0.7, (), ()),
    ("hypertension", "I10", 0.55, 0.8, (), ("ckd", "heart_failure")),
    ("hypertension", "I129", 0.4, 0.75, ("ckd",), ("heart_failure",)),
    ("hypertension", "I110", 0.4, 0.75, ("heart_failure",), ("ckd",)),
    ("hypertension", "I130", 0.4, 0.75, ("heart_failure", "ckd"), ()),
    ("prediabetes", "R7309", 0.35, 0.3, (), ()), ("t2_diabetes", "E119", 0.65, 0.85, (), ()),
    ("ckd", "N189", 0.5, 0.8, (), ()), ("cad", "I2510", 0.5, 0.75, (), ()),
    ("heart_failure", "I509", 0.5, 0.8, (), ()), ("afib", "I4891", 0.5, 0.85, (), ()),
    ("copd", "J449", 0.5, 0.75, (), ()), ("depression", "F329", 0.45, 0.6, (), ()),
    ("anxiety", "F419", 0.35, 0.45, (), ()), ("hypothyroidism", "E039", 0.45, 0.75, (), ()),
    ("gerd", "K219", 0.3, 0.55, (), ()), ("osteoarthritis", "M179", 0.3, 0.35, (), ()),
    ("sleep_apnea", "G4733", 0.3, 0.5, (), ()), ("asthma", "J45909", 0.35, 0.5, (), ()),
    ("dementia", "F0390", 0.5, 0.8, (), ()), ("cancer_history", "Z85038", 0.2, 0.6, (), ()),
    ("vte_history", "Z86718", 0.2, 0.6, (), ()), ("vte_history", "Z7901", 0.2, 0.4, (), ()),
    ("chronic_anemia", "D649", 0.3, 0.6, (), ()),
    # condition companions: medication Z-codes, complications, status codes
    ("obesity", "Z6841", 0.15, 0.3, (), ()), ("tobacco", "Z87891", 0.1, 0.35, (), ()),
    ("hyperlipidaemia", "Z79899", 0.15, 0.4, (), ()),
    ("t2_diabetes", "Z794", 0.2, 0.5, (), ()), ("t2_diabetes", "E1140", 0.1, 0.2, (), ()),
    ("t2_diabetes", "L97509", 0.01, 0.05, ("ckd",), ()), ("t2_diabetes", "E1122", 0.1, 0.25, ("ckd",), ()),
    ("ckd", "D631", 0.1, 0.35, (), ()), ("ckd", "E875", 0.05, 0.3, (), ()), ("ckd", "N179", 0.02, 0.2, (), ()), ("ckd", "N2581", 0.05, 0.2, (), ()),
    ("ckd", "Z992", 0.03, 0.1, (), ()),
    ("heart_failure", "R609", 0.1, 0.2, (), ()), ("heart_failure", "E871", 0.02, 0.25, (), ()),
    ("heart_failure", "N179", 0.02, 0.2, (), ()), ("afib", "Z950", 0.02, 0.12, (), ()),
    ("heart_failure", "Z7901", 0.05, 0.15, ("afib",), ()),
    ("cad", "Z7982", 0.2, 0.35, (), ()), ("cad", "Z955", 0.1, 0.45, (), ()), ("cad", "I209", 0.05, 0.1, (), ()),
    ("afib", "Z7901", 0.3, 0.55, (), ()),
    ("copd", "Z9981", 0.05, 0.2, (), ()), ("copd", "Z87891", 0.1, 0.2, (), ("tobacco",)),
    ("depression", "G4700", 0.1, 0.1, (), ()),
    ("osteoarthritis", "M2550", 0.1, 0.05, (), ()),
    # further companions with mid probabilities: predictable from the condition, not always in the history
    ("t2_diabetes", "G629", 0.1, 0.3, (), ()), ("t2_diabetes", "Z833", 0.05, 0.1, (), ()),
    ("ckd", "E559", 0.1, 0.2, (), ()), ("ckd", "D509", 0.05, 0.15, (), ()),
    ("heart_failure", "R0600", 0.15, 0.25, (), ()), ("heart_failure", "I270", 0.03, 0.2, (), ()),
    ("copd", "J9611", 0.05, 0.3, (), ()), ("copd", "Z7952", 0.1, 0.2, (), ()),
    ("cad", "Z7902", 0.15, 0.3, (), ()), ("dementia", "R32", 0.05, 0.3, (), ()),
    ("dementia", "E440", 0.02, 0.2, (), ()), ("dementia", "L89159", 0.01, 0.1, (), ()),
    ("osteoarthritis", "G8929", 0.15, 0.25, (), ()), ("gerd", "K5900", 0.05, 0.2, (), ()),
    ("chronic_anemia", "D509", 0.1, 0.2, (), ()), ("hypothyroidism", "E538", 0.05, 0.1, (), ()),
    ("dementia", "G309", 0.1, 0.3, (), ()), ("dementia", "R4182", 0.05, 0.2, (), ()),
)

# Condition-tied procedures: (trigger, ICD-10-PCS, ICD-9-CM vol. 3, p_mimic). The ICD-9 code is the GEM source
# of the PCS code (checked by a test against the CMS GEM); claims do not record ICD procedures.
PX_ROWS: tuple[tuple[str, str, str, float], ...] = (
    ("sepsis", "05HY33Z", "3893", 0.35), ("sepsis", "5A1955Z", "9672", 0.15), ("sepsis", "0BH17EZ", "9604", 0.15),
    ("sepsis", "30233N1", "9904", 0.2),
    ("pneumonia", "5A1945Z", "9671", 0.12), ("pneumonia", "0BH17EZ", "9604", 0.1),
    ("aki", "5A1D70Z", "3995", 0.2), ("ckd", "5A1D70Z", "3995", 0.08),
    ("hf_exacerbation", "B246ZZZ", "8872", 0.4), ("ami", "4A023N7", "3722", 0.8), ("ami", "02703ZZ", "0066", 0.55),
    ("elective_pci", "4A023N7", "3722", 0.9), ("elective_pci", "02703ZZ", "0066", 0.85),
    ("stroke", "B020ZZZ", "8703", 0.6), ("stroke", "3E03317", "9910", 0.12),
    ("gi_bleed", "0DB68ZX", "4516", 0.6), ("gi_bleed", "30233N1", "9904", 0.55),
    ("hip_fracture", "0SR90J9", "8151", 0.6), ("knee_replacement", "0SRD0JZ", "8154", 0.95),
    ("copd_exacerbation", "5A09357", "9390", 0.25), ("bowel_obstruction", "0D9670Z", "9607", 0.5),
    ("syncope", "B020ZZZ", "8703", 0.4), ("afib_rvr", "B246ZZZ", "8872", 0.3),
)

# CPT codes (a small named table; CPT has no free machine-readable list): (trigger, cpt, p_claims, p_mimic,
# mimic hcpcsevents short_description). Triggers: a condition, an episode, or one of the visit kinds below.
CPT_ROWS: tuple[tuple[str, str, float, float, str], ...] = (
    (VISIT_FOLLOWUP, "99213", 0.55, 0.0, ""), (VISIT_FOLLOWUP, "99214", 0.4, 0.0, ""),
    (VISIT_ACUTE, "99213", 0.6, 0.0, ""), (VISIT_ACUTE, "99212", 0.3, 0.0, ""),
    (VISIT_WELLNESS, "99397", 0.9, 0.0, ""), (VISIT_WELLNESS, "90471", 0.4, 0.0, ""),
    (VISIT_WELLNESS, "90686", 0.4, 0.0, ""), (VISIT_WELLNESS, "80061", 0.5, 0.0, ""),
    (VISIT_WELLNESS, "85025", 0.4, 0.0, ""),
    (VISIT_OBSERVATION, "G0378", 0.0, 0.35, "Hospital observation per hr"),
    ("t2_diabetes", "83036", 0.45, 0.0, ""), ("prediabetes", "83036", 0.25, 0.0, ""),
    ("t2_diabetes", "82043", 0.15, 0.0, ""), ("ckd", "80053", 0.35, 0.0, ""), ("ckd", "82043", 0.1, 0.0, ""),
    ("hyperlipidaemia", "80061", 0.25, 0.0, ""), ("hypertension", "80048", 0.15, 0.0, ""),
    ("hypothyroidism", "84443", 0.3, 0.0, ""), ("afib", "85610", 0.3, 0.0, ""), ("afib", "93000", 0.2, 0.0, ""),
    ("cad", "93000", 0.2, 0.0, ""), ("heart_failure", "93306", 0.1, 0.0, ""), ("copd", "94010", 0.1, 0.0, ""),
    ("depression", "90834", 0.2, 0.0, ""), ("depression", "96127", 0.15, 0.0, ""),
    ("osteoarthritis", "20610", 0.08, 0.0, ""), ("osteoarthritis", "73560", 0.08, 0.0, ""),
    ("sleep_apnea", "95810", 0.03, 0.0, ""), ("ckd", "90935", 0.03, 0.0, ""),
    ("uti", "81001", 0.7, 0.0, ""), ("uti", "87086", 0.4, 0.0, ""), ("pneumonia", "71046", 0.7, 0.0, ""),
    ("bronchitis", "71046", 0.2, 0.0, ""), ("copd_exacerbation", "94640", 0.4, 0.0, ""),
    ("chest_pain", "93000", 0.6, 0.0, ""), ("joint_pain", "73560", 0.2, 0.0, ""),
    ("ami", "93458", 0.0, 0.45, "Cardiovascular"), ("ami", "92928", 0.0, 0.35, "Cardiovascular"),
    ("elective_pci", "93458", 0.0, 0.6, "Cardiovascular"), ("elective_pci", "92928", 0.0, 0.5, "Cardiovascular"),
    ("gi_bleed", "43239", 0.0, 0.25, "Digestive system"), ("hip_fracture", "27130", 0.0, 0.2,
                                                                 "Musculoskeletal system"),
    ("knee_replacement", "27447", 0.0, 0.3, "Musculoskeletal system"),
)

CONDITION_NAMES = tuple(c.name for c in CONDITIONS)
EPISODE_NAMES = tuple(e.name for e in EPISODES)
FEATURE_NAMES = CONDITION_NAMES + EPISODE_NAMES + VISIT_KINDS   # columns of the per-visit feature matrix


def feature_index(name: str) -> int:
    """Column of `name` in the per-visit feature matrix (conditions, then episodes, then visit kinds)."""
    try:
        return FEATURE_NAMES.index(name)
    except ValueError:
        raise KeyError(f"unknown condition/episode/visit kind {name!r} in the simulator tables") from None
