"""Schema constants: every token type prefix, special token and column name is defined here, once.

Other packages import these names; a literal such as ``"DX:"`` or ``"subject_id"`` appears nowhere else.
Names are the contract; values may be tuned by the data pipeline (and then every consumer follows).
"""
from __future__ import annotations

# ----------------------------------------------------------------------------------------------------------
# Events table (the in-memory pyarrow table every reader produces; see readers/)
# ----------------------------------------------------------------------------------------------------------
SUBJECT_ID = "subject_id"   # int64
VISIT_ID = "visit_id"       # int64: hadm_id for MIMIC, a per-subject calendar-day id (or hadm_id) for MEDS
TIME = "time"               # timestamp[us]: visit start (admittime / event time)
KIND = "kind"               # string: one of EVENT_KINDS
SYSTEM = "system"           # string: one of CODE_SYSTEMS
CODE = "code"               # string: the code as recorded (no dots), or the demographic value
SEQ_NUM = "seq_num"         # int32: recorded order within the visit (diagnosis priority); null when absent
EVENTS_COLUMNS = (SUBJECT_ID, VISIT_ID, TIME, KIND, SYSTEM, CODE, SEQ_NUM)

KIND_DX = "dx"
KIND_PX = "px"
KIND_CPT = "cpt"
KIND_DEMOGRAPHIC = "demographic"
EVENT_KINDS = (KIND_DX, KIND_PX, KIND_CPT, KIND_DEMOGRAPHIC)

SYSTEM_ICD9 = "icd9"        # ICD-9-CM (diagnoses) or ICD-9-CM vol. 3 (procedures), by KIND
SYSTEM_ICD10 = "icd10"      # ICD-10-CM (diagnoses) or ICD-10-PCS (procedures), by KIND
SYSTEM_CPT = "cpt"          # CPT / HCPCS level II
SYSTEM_BIRTH = "birth"      # demographic: code holds the birth year (or anchor-derived age at first visit)
SYSTEM_SEX = "sex"
SYSTEM_REGION = "region"
CODE_SYSTEMS = (SYSTEM_ICD9, SYSTEM_ICD10, SYSTEM_CPT, SYSTEM_BIRTH, SYSTEM_SEX, SYSTEM_REGION)

# ----------------------------------------------------------------------------------------------------------
# Tokens. A token string always says its type: "<PREFIX><value>", e.g. DX:E11, PX:0DT, CPT:99213, SEX:F.
# ----------------------------------------------------------------------------------------------------------
DX_PREFIX = "DX:"
PX_PREFIX = "PX:"
CPT_PREFIX = "CPT:"
AGE_PREFIX = "AGE:"
SEX_PREFIX = "SEX:"
REGION_PREFIX = "REGION:"
GAP_PREFIX = "GAP:"
VISIT_PREFIX = "VISIT:"

PAD_TOKEN = "<pad>"
BOS_TOKEN = "<bos>"            # start of a record (before the demographics prefix)
EOR_TOKEN = "<eor>"            # end of record; the tokenizer's eos_token
UNK_TOKEN = "<unk>"            # untyped unknown (should not occur in prepared data)
VISIT_OPEN_TOKEN = VISIT_PREFIX + "open"
VISIT_CLOSE_TOKEN = VISIT_PREFIX + "close"
UNK_VALUE = "<unk>"
DX_UNK_TOKEN = DX_PREFIX + UNK_VALUE      # typed unknowns: a code outside the vocabulary never becomes another code
PX_UNK_TOKEN = PX_PREFIX + UNK_VALUE
CPT_UNK_TOKEN = CPT_PREFIX + UNK_VALUE
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOR_TOKEN, UNK_TOKEN)
REGION_UNK_TOKEN = REGION_PREFIX + UNK_VALUE

# The enumerated (not learned) values of the structural tokens: every vocabulary holds all of them, so their ids
# are stable across systems. Gap bins: (upper bound in days, exclusive; label); the gap is between visit START times.
GAP_BINS: tuple[tuple[float, str], ...] = (
    (1, "<1D"), (7, "1-7D"), (30, "1-4W"), (91, "1-3M"), (182, "3-6M"), (365, "6-12M"), (730, "1-2Y"),
    (1826, "2-5Y"), (float("inf"), "5Y+"),
)
GAP_FIRST_TOKEN = GAP_PREFIX + "first"  # the first visit of a timeline has no previous visit
GAP_TOKENS = (GAP_FIRST_TOKEN,) + tuple(GAP_PREFIX + label for _, label in GAP_BINS)
AGE_BUCKET_YEARS, AGE_TOP = 5, 90
AGE_UNK_TOKEN = AGE_PREFIX + UNK_VALUE
AGE_TOKENS = tuple(f"{AGE_PREFIX}{a}-{a + AGE_BUCKET_YEARS - 1}" for a in range(0, AGE_TOP, AGE_BUCKET_YEARS)) + (
    f"{AGE_PREFIX}{AGE_TOP}+", AGE_UNK_TOKEN)
SEX_VALUES = ("F", "M")
SEX_UNK_TOKEN = SEX_PREFIX + UNK_VALUE
SEX_TOKENS = tuple(SEX_PREFIX + s for s in SEX_VALUES) + (SEX_UNK_TOKEN,)

# Token types, for routing analysis and eval. TOKEN_TYPE_BY_PREFIX maps a prefix to its type name.
TOKEN_TYPE_DX = "diagnosis"
TOKEN_TYPE_PX = "procedure"
TOKEN_TYPE_CPT = "cpt"
TOKEN_TYPE_DEMOGRAPHIC = "demographic"
TOKEN_TYPE_VISIT = "visit_marker"
TOKEN_TYPE_GAP = "gap"
TOKEN_TYPE_SPECIAL = "special"
TOKEN_TYPE_BY_PREFIX = {
    DX_PREFIX: TOKEN_TYPE_DX,
    PX_PREFIX: TOKEN_TYPE_PX,
    CPT_PREFIX: TOKEN_TYPE_CPT,
    AGE_PREFIX: TOKEN_TYPE_DEMOGRAPHIC,
    SEX_PREFIX: TOKEN_TYPE_DEMOGRAPHIC,
    REGION_PREFIX: TOKEN_TYPE_DEMOGRAPHIC,
    GAP_PREFIX: TOKEN_TYPE_GAP,
    VISIT_PREFIX: TOKEN_TYPE_VISIT,
}


def token_type(token: str) -> str:
    """Type name of a token string.

    >>> token_type("DX:E11"), token_type("GAP:1-3M"), token_type("<pad>")
    ('diagnosis', 'gap', 'special')
    """
    prefix, sep, _ = token.partition(":")
    if not sep:
        return TOKEN_TYPE_SPECIAL
    return TOKEN_TYPE_BY_PREFIX.get(prefix + ":", TOKEN_TYPE_SPECIAL)


# ----------------------------------------------------------------------------------------------------------
# DATA_DIR layout (written by `sparseehr prepare`)
# ----------------------------------------------------------------------------------------------------------
SPLIT_TRAIN = "train"
SPLIT_VALIDATION = "validation"
SPLIT_TEST = "test"
SPLITS = (SPLIT_TRAIN, SPLIT_VALIDATION, SPLIT_TEST)

DATA_PATIENTS_DIR = "patients"            # DatasetDict: one row per patient (columns below)
DATA_WINDOWS_DIR = "windows"              # DatasetDict: one row per training window (<= max_len, one patient)
DATA_TOKENIZER_DIR = "tokenizer"          # AutoTokenizer.from_pretrained-loadable
TOKENIZER_FILE = "tokenizer.json"         # the `tokenizers` library's serialisation (vocabulary, specials)
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"  # what AutoTokenizer reads first: class and special tokens
HARMONIZATION_FILE = "harmonization.json"  # frozen settings + GEM source + hash
PREPARE_REPORT_FILE = "prepare_report.json"
CODE_COUNTS_FILE = "train_code_counts.json"  # training-split diagnosis occurrence counts (eval: frequency baseline, rare/common)

# Per-patient columns
COL_SUBJECT_ID = SUBJECT_ID
COL_INPUT_IDS = "input_ids"               # list<uint8|uint16|int32> (narrowest for the vocabulary): <bos> ... <eor>
COL_PREFIX_LEN = "prefix_len"             # int32: tokens of <bos> + demographics prefix
COL_VISIT_OFFSETS = "visit_offsets"       # list<int32>: index in input_ids where each visit starts (its GAP token)
COL_VISIT_TIMES = "visit_times"           # list<int64>: visit start, seconds since the Unix epoch
COL_VISIT_DX_CODES = "visit_dx_codes"     # list<list<string>>: harmonized ICD-10-CM codes (canonical prefix, no
                                          # type prefix) per visit, including codes outside the vocabulary
# Per-window columns
COL_WINDOW_INDEX = "window_index"         # int32: 0.. within the patient
# Staging columns (strings) between timelines.py and tokenization.py; never written to disk
COL_PREFIX_TOKENS = "prefix_tokens"
COL_VISIT_TOKENS = "visit_tokens"
