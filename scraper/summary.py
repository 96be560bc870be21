"""Stage 2's bookkeeping shared by every source: merge records, write failures, summary line."""
import dataclasses
import os
import time

from scraper.cli import UserError, elapsed_since, fmt_count, log
from scraper.fileio import atomic_write_json
from scraper.schema import DESCRIPTION_FILE, FAILURES_FILE, label_counts, save_descriptions


@dataclasses.dataclass
class ScrapeSummary:
    saved: int = 0        # images written this run
    present: int = 0      # already saved and valid from an earlier run (not requested again)
    failed: int = 0       # could not be had; listed in images-failures.json with the reason
    skipped: int = 0      # not images (junk files) or otherwise left out on purpose
    unlabelled: int = 0   # records with label None (e.g. Open-i "No Indexing")
    absent: int = 0       # labels-CSV rows naming an image the folder does not hold
    started: float = dataclasses.field(default_factory=time.monotonic)

    def line(self):
        absent = (f", {fmt_count(self.absent)} listed in the CSV but not in the folder"
                  if self.absent else "")
        return (f"{fmt_count(self.saved)} saved, {fmt_count(self.present)} already present, "
                f"{fmt_count(self.failed)} failed, {fmt_count(self.skipped)} skipped, "
                f"{fmt_count(self.unlabelled)} unlabelled{absent}, "
                f"{elapsed_since(self.started)}")


def merge_records(existing, new):
    """Records by name; a new record replaces an old one of the same name."""
    merged = {record["name"]: record for record in existing}
    merged.update((record["name"], record) for record in new)
    return list(merged.values())


def write_outputs(data_dir, records, failures):
    """Atomically write images-description.json and images-failures.json (removed when empty).

    `failures` is a list of {"name", "url", "reason"} dicts.
    """
    save_descriptions(os.path.join(data_dir, DESCRIPTION_FILE), records)
    failures_path = os.path.join(data_dir, FAILURES_FILE)
    if failures:
        atomic_write_json(failures_path, sorted(failures, key=lambda f: f["name"]))
    elif os.path.exists(failures_path):
        os.unlink(failures_path)


def finish(data_dir, records, failures, summary, prog="cxr-scrape", say=log):
    """Write the outputs, fill in the unlabelled count and print the one summary line (through
    `say`: the folder source's masking log for DICOM imports)."""
    write_outputs(data_dir, records, failures)
    summary.unlabelled = label_counts(records)["unlabelled"]
    summary.failed = len(failures)
    say(f"{prog}: {summary.line()} -> {os.path.join(data_dir, DESCRIPTION_FILE)}")
    return summary


def require_saved(summary, source, failures):
    """A run that saved nothing and found nothing already there is an error (non-zero exit),
    not a quiet success: one line with the counts and the first failure."""
    if summary.saved + summary.present:
        return summary
    first = (f"; first: {failures[0]['name']}: {failures[0]['reason']}" if failures else "")
    raise UserError(f"nothing saved from {source}: {fmt_count(summary.failed)} failed, "
                    f"{fmt_count(summary.skipped)} skipped{first}")
