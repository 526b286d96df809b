"""Evaluation: protocols, scoring, significance, ablations. Kept light: the CLI imports it at start."""

DISPLAY_NAMES = {
    "mufasa": "MUFASA",
    "lightgcn": "LightGCN",
    "sasrec": "SASRec",
    "dssm": "DSSM",
    "youtube": "YouTubeDNN",
    "mmgcn": "MMGCN",
}
