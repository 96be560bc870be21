"""The finding vocabulary: which findings a record names, in one spelling for every stage.

The vocabulary is NIH ChestX-ray14's 14 findings (Wang et al., "ChestX-ray8", CVPR 2017), in
the order NIH lists them; each record of images-description.json may carry "finding_labels",
a list of these names (scraper/schema.py):

    Atelectasis, Cardiomegaly, Effusion, Infiltration, Mass, Nodule, Pneumonia, Pneumothorax,
    Consolidation, Edema, Emphysema, Fibrosis, Pleural_Thickening, Hernia

Where the names come from (stage 2):
* a labels CSV (--source folder, cxr-explain --labels): NIH's "Finding Labels" style, names
  joined by "|" (";" also separates), "No Finding" = none. The column is `finding_labels` or
  `Finding Labels` when present, or the one --finding-column names. Spellings are matched
  without regard to case, spaces or underscores, plus the synonyms in SYNONYMS (NIH's own box
  file says "Infiltrate" for Infiltration; CheXpert says "Pleural Effusion"). A name outside
  the vocabulary is left out and counted in one warning; a column in which NO name is known
  is refused (the wrong column).
* Open-i / the NLMCXR archive: the report's MeSH major terms, mapped by MESH_TERMS on the
  term's heading (the part before the first "/": "Pleural Effusion/right" -> Effusion) or, for
  a few headings that need their qualifier, MESH_QUALIFIED ("Thickening/pleura" ->
  Pleural_Thickening). Terms with no NIH counterpart (Opacity, Calcified Granuloma, Cicatrix,
  ...) map to nothing: such a report is abnormal with no vocabulary finding. The mapping is
  deliberately literal: "Airspace Disease" or "Opacity" are NOT guessed to be Consolidation
  or Infiltration. Counted on the 3,955 reports of NLMCXR_reports.tgz: of the 2,469 abnormal
  (labelled) reports, 1,032 carry at least one vocabulary finding: Cardiomegaly 375,
  Atelectasis 332, Effusion 162, Nodule 111, Emphysema 102, Infiltration 65, Hernia 50,
  Pleural_Thickening 47, Edema 46, Pneumonia 42, Consolidation 30, Pneumothorax 27,
  Fibrosis 20, Mass 17 reports; 1,437 carry none (their terms have no NIH counterpart).

Stage 5's `--findings all|A,B,...` (`findings_type`) names outputs in this vocabulary.
"""
import argparse
import re

FINDINGS = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule",
            "Pneumonia", "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis",
            "Pleural_Thickening", "Hernia")
NO_FINDING = "no finding"        # NIH's word for none (compared as a key, see _key)
ALL = "all"
SEPARATORS = re.compile(r"[|;]")


def _key(text):
    """'Pleural_Thickening' / 'pleural thickening' / ' PLEURAL-THICKENING ' -> one key."""
    return " ".join(re.sub(r"[_\-]+", " ", str(text)).split()).lower()


# Other spellings of vocabulary findings (keys as _key makes them).
SYNONYMS = {
    "infiltrate": "Infiltration", "infiltrates": "Infiltration",
    "pleural effusion": "Effusion", "effusions": "Effusion",
    "pulmonary atelectasis": "Atelectasis", "pulmonary edema": "Edema",
    "pulmonary emphysema": "Emphysema", "pulmonary fibrosis": "Fibrosis",
    "nodules": "Nodule", "masses": "Mass", "enlarged heart": "Cardiomegaly",
}
_BY_KEY = {_key(name): name for name in FINDINGS}
_BY_KEY.update(SYNONYMS)

# Open-i MeSH major-term headings (before the first "/", keys as _key makes them) -> findings.
MESH_TERMS = {
    "cardiomegaly": ("Cardiomegaly",),
    "pulmonary atelectasis": ("Atelectasis",), "atelectasis": ("Atelectasis",),
    "pleural effusion": ("Effusion",),
    "infiltrate": ("Infiltration",),
    "mass": ("Mass",),
    "nodule": ("Nodule",),
    "pneumonia": ("Pneumonia",),
    "pneumothorax": ("Pneumothorax",), "hydropneumothorax": ("Pneumothorax", "Effusion"),
    "hemopneumothorax": ("Pneumothorax",),
    "consolidation": ("Consolidation",),
    "pulmonary edema": ("Edema",), "edema": ("Edema",),
    "emphysema": ("Emphysema",), "pulmonary emphysema": ("Emphysema",),
    "bullous emphysema": ("Emphysema",),
    "pulmonary fibrosis": ("Fibrosis",), "fibrosis": ("Fibrosis",),
    "hernia, hiatal": ("Hernia",), "hernia, diaphragmatic": ("Hernia",),
}
# Headings whose meaning depends on the first qualifier: (heading, qualifier) -> findings.
MESH_QUALIFIED = {("thickening", "pleura"): ("Pleural_Thickening",),
                  ("pleura", "thickening"): ("Pleural_Thickening",)}


def canonical(name):
    """The vocabulary's spelling of `name`, or None when it is not a vocabulary finding."""
    return _BY_KEY.get(_key(name))


def in_order(names):
    """Vocabulary names, without duplicates, in the vocabulary's order."""
    wanted = set(names)
    return [name for name in FINDINGS if name in wanted]


def parse_labels(text):
    """One CSV cell -> (vocabulary findings in order, [names outside the vocabulary]) or None
    when the cell is empty (unknown). "No Finding" gives ([], [])."""
    parts = [part.strip() for part in SEPARATORS.split(str(text or "")) if part.strip()]
    if not parts:
        return None
    known, unknown = [], []
    for part in parts:
        if _key(part) == NO_FINDING:
            continue
        name = canonical(part)
        (known.append(name) if name else unknown.append(part))
    return in_order(known), unknown


def from_mesh(major_terms):
    """Open-i MeSH major terms -> vocabulary findings in order (MESH_TERMS, MESH_QUALIFIED)."""
    found = []
    for term in major_terms or []:
        parts = [_key(part) for part in str(term).split("/")]
        found += MESH_QUALIFIED.get(tuple(parts[:2]), ()) or MESH_TERMS.get(parts[0], ())
    return in_order(found)


def finding_problem(value):
    """Why `value` is not a valid "finding_labels" field (None when it is)."""
    if not isinstance(value, list):
        return f"finding_labels must be a list of findings, got {type(value).__name__}"
    bad = [name for name in value if name not in FINDINGS]
    if bad:
        return (f"finding_labels holds {str(bad[0])[:60]!r}, not a vocabulary finding; "
                f"allowed: {', '.join(FINDINGS)}")
    if value != in_order(value):
        return "finding_labels must list each finding once, in the vocabulary's order"
    return None


def findings_type(text):
    """argparse type of stage 5's --findings: 'all' -> "all"; 'Effusion,pneumonia' ->
    ("Effusion", "Pneumonia") (vocabulary order kept as given, duplicates dropped); an
    unknown name fails naming the vocabulary."""
    text = str(text).strip()
    if _key(text) == ALL:
        return ALL
    names = []
    for part in text.split(","):
        if not part.strip():
            continue
        name = canonical(part)
        if name is None:
            raise argparse.ArgumentTypeError(
                f"invalid finding {part.strip()[:60]!r}; use 'all' or names from the "
                f"vocabulary: {', '.join(FINDINGS)}")
        if name not in names:
            names.append(name)
    if not names:
        raise argparse.ArgumentTypeError(f"no finding named in {text[:60]!r}; use 'all' or "
                                         f"names from: {', '.join(FINDINGS)}")
    return tuple(names)
